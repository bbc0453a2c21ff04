"""Finding and aligning faces in photos, on a public-domain portrait (scikit-image's astronaut: NASA)."""

import hashlib
import math
import warnings

import numpy as np
import pytest
from PIL import Image

import inference
from src import faces
from src.dataset import load_split
from src.errors import UserError, run_cli
from tests.conftest import tiny_config
from tools import align_accuracy

SIZE, CROP = 64, 148


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut())


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), shift[0]],
                     [scale * math.sin(a), scale * math.cos(a), shift[1]]])


def warped(photo: Image.Image, matrix: np.ndarray, size=(900, 700)) -> Image.Image:
    import cv2
    return Image.fromarray(cv2.warpAffine(np.asarray(photo), matrix, size, flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=(90, 120, 60)))


def disagreement(face: faces.Face, reference: faces.Face, photo_from_reference: np.ndarray) -> float:
    """Mean distance in pixels of the 64-px model input between where the two alignments put the same
    point of the face (the reference photo's alignment mapped through the known warp)."""
    k = faces.frame_scale_for(reference)
    aligned_from_reference = faces.celeba_transform(reference, k)
    reference_from_aligned = np.linalg.inv(np.vstack([aligned_from_reference, [0, 0, 1]]))[:2]
    reference_frame = (np.array([faces.CELEBA_WIDTH, faces.CELEBA_HEIGHT]) * k).astype(int)
    # the reference's aligned frame, as a "photo" whose aligned frame is itself
    through = np.vstack([photo_from_reference, [0, 0, 1]]) @ np.vstack([reference_from_aligned, [0, 0, 1]])
    return align_accuracy.input_displacement(face, through[:2], tuple(reference_frame), SIZE, CROP)


@pytest.mark.parametrize("scale, degrees, shift", [(1.0, 0, (150, 80)), (1.6, 12, (40, -60)),
                                                   (0.7, -18, (300, 250)), (2.2, 5, (-250, -120))])
def test_a_warped_photo_aligns_like_the_original(astronaut, scale, degrees, shift):
    reference = faces.find_face(astronaut, "astronaut")
    matrix = similarity(scale, degrees, shift)
    photo = warped(astronaut, matrix)
    face = faces.find_face(photo, "warped")
    assert disagreement(face, reference, matrix) < 1.5  # pixels of the 64-px input
    ours = faces.model_input(photo, "warped", SIZE, CROP, aligned=True)[0]
    original = faces.model_input(astronaut, "astronaut", SIZE, CROP, aligned=True)[0]
    assert align_accuracy.psnr(ours, original) > 20  # the same picture (a 1-px shift of a face gives about 23 dB)


def test_the_centre_crop_of_an_unaligned_photo_is_not_the_face(astronaut):
    photo = warped(astronaut, similarity(1.0, 15, (300, 200)))
    unaligned = faces.model_input(photo, "warped", SIZE, CROP, aligned=False)[0]
    original = faces.model_input(astronaut, "astronaut", SIZE, CROP, aligned=True)[0]
    assert align_accuracy.psnr(unaligned, original) < 15


def test_aligning_an_aligned_face_is_nearly_a_no_op(astronaut):
    frame = faces.align(astronaut, faces.find_face(astronaut, "astronaut"))
    face = faces.find_face(frame, "aligned")
    k = faces.frame_scale_for(face)
    matrix = faces.celeba_transform(face, k)
    natural = faces.CELEBA_WIDTH * k / frame.width  # the frame's own scale in the enlarged frame
    assert np.allclose(matrix[:, :2], natural * np.eye(2), atol=0.03)
    assert np.abs(matrix[:, 2]).max() < 3 * k
    again = faces.model_input(frame, "aligned", SIZE, CROP, aligned=True)[0]
    assert align_accuracy.psnr(again, faces.model_input(frame, "aligned", SIZE, CROP, aligned=False)[0]) > 25


def test_the_least_squares_fit_matches_scikit_image(astronaut):
    from skimage.transform import SimilarityTransform
    face = faces.find_face(astronaut, "astronaut")
    reference = SimilarityTransform()
    with warnings.catch_warnings():  # estimate() is deprecated in favour of from_estimate() (>= 0.26)
        warnings.simplefilter("ignore", FutureWarning)
        assert reference.estimate(face.alignment_points(), faces.CELEBA_POINTS)
    np.testing.assert_allclose(faces.celeba_transform(face), reference.params[:2], atol=1e-3)


def test_exif_orientation_is_applied_before_detection(astronaut, tmp_path):
    photo = warped(astronaut, similarity(1.2, 0, (100, 50)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the pixels are stored turned left
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = faces.open_photo(tmp_path / "phone.jpg")
    assert upright.size == photo.size
    face = faces.find_face(upright, "phone.jpg")
    reference = faces.find_face(photo, "photo")
    assert np.abs(face.landmarks - reference.landmarks).max() < 3


def test_detection_on_a_downscaled_copy_reports_full_size_landmarks(astronaut, monkeypatch):
    photo = astronaut.resize((1600, 1600), Image.BICUBIC)
    full = faces.detect_faces(photo)[0]
    monkeypatch.setattr(faces, "DETECT_SIDE", 400)  # the detector now sees a quarter-size copy
    small = faces.detect_faces(photo)[0]
    assert np.abs(small.landmarks - full.landmarks).max() < 12  # a few pixels of the copy, times 4


def test_of_two_faces_the_most_confident_is_taken_and_the_others_are_counted(astronaut, capsys):
    sharp = astronaut.crop((100, 0, 400, 300))
    faint = Image.blend(sharp, Image.new("RGB", sharp.size, (128, 128, 128)), 0.6)
    both = Image.new("RGB", (700, 320), (90, 120, 60))
    both.paste(faint, (10, 10))
    both.paste(sharp, (380, 10))
    found = faces.detect_faces(both)
    assert len(found) == 2 and found[0].confidence >= found[1].confidence
    chosen = faces.find_face(both, "two.png")
    assert chosen.faces_found == 2 and chosen.confidence == found[0].confidence
    assert "1 other face(s) ignored" in faces.describe(chosen, "two.png")


def test_a_small_face_gets_a_warning_with_its_eye_distance(astronaut):
    small = astronaut.resize((170, 170), Image.LANCZOS)
    canvas = Image.new("RGB", (400, 300), (90, 120, 60))
    canvas.paste(small, (100, 60))
    face = faces.find_face(canvas, "far.jpg")
    warning = faces.small_face_warning(face, "far.jpg", SIZE, CROP)
    assert warning and warning.startswith("warning: ") and f"eyes {face.eye_distance:.0f} px apart" in warning
    assert faces.small_face_warning(faces.find_face(astronaut, "a"), "a", SIZE, CROP) is None


def test_a_photo_without_a_face_is_one_line_suggesting_align_off(trained, tmp_path, capsys):
    Image.new("RGB", (300, 200), (200, 180, 170)).save(tmp_path / "wall.jpg")
    with pytest.raises(SystemExit):
        run_cli(inference.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}",
                                 "--images", str(tmp_path / "wall.jpg"), "--align", "on"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no face found in" in err and "wall.jpg" in err and "--align off" in err
    assert not (tmp_path / "inference_test_set" / "samples.png").exists()  # nothing written before it


def test_unreadable_formats_and_huge_images_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(100))
    with pytest.raises(UserError, match=r"cannot read image '.*photo.heic' .*HEIC images are not supported"):
        faces.open_photo(tmp_path / "photo.heic")
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(faces, "MAX_PHOTO_PIXELS", 50_000)
    with pytest.raises(UserError, match=r"300x200 pixels, more than"):
        faces.open_photo((tmp_path / "big.png").read_bytes(), "big.png")


def test_own_photo_is_aligned_and_what_the_model_saw_is_written(trained, tmp_path, astronaut, capsys):
    warped(astronaut, similarity(1.3, 10, (120, 40))).save(tmp_path / "me.jpg", quality=95)
    out = tmp_path / "inference_test_set"
    inference.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}",
                    "--images", str(tmp_path / "me.jpg"), "--align", "on"])
    printed = capsys.readouterr().out
    assert "me.jpg: face found (confidence" in printed
    with Image.open(out / "aligned" / "me.png") as img:
        assert img.size == (16, 16)  # the trained fixture's image_size
        expected = faces.model_input(faces.open_photo(tmp_path / "me.jpg"), "me", 16, 148, aligned=True)[0]
        assert np.array_equal(np.asarray(img), expected.transpose(1, 2, 0))


def test_the_synthetic_faces_are_not_aligned_by_default_but_celeba_is(trained):
    import argparse

    from src.config import load_config
    auto = argparse.Namespace(align="auto")
    assert not inference.aligns(auto, load_config(trained["config"]))
    assert inference.aligns(auto, load_config(trained["config"], ["data.dataset=celeba"]))
    assert inference.aligns(auto, load_config(trained["config"], ["data.dataset=folder", "data.align=true"]))
    assert not inference.aligns(argparse.Namespace(align="off"), load_config(trained["config"], ["data.dataset=celeba"]))


def in_train_bucket(name: str) -> bool:
    """The folder dataset's 90/5/5 split by name (src/dataset.py)."""
    return int(hashlib.md5(name.encode(), usedforsecurity=False).hexdigest(), 16) % 100 < 90


def test_a_folder_of_photos_is_aligned_and_faceless_images_are_skipped_and_counted(astronaut, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [n for n in (f"p{i:02d}.jpg" for i in range(40)) if in_train_bucket(n)][:5]
    for i, name in enumerate(names[:4]):
        warped(astronaut, similarity(0.8 + 0.2 * i, 8 * i - 12, (60 * i, 30 * i))).save(photos / name, quality=92)
    Image.new("RGB", (300, 200), (200, 180, 170)).save(photos / names[4])  # no face
    cfg = tiny_config(tmp_path, data={"dataset": "folder", "root": str(photos), "align": True, "image_size": 32,
                                      "center_crop": 148})
    split = load_split(cfg, "train")
    printed = capsys.readouterr().out
    assert f"no face found in 1 of 5 train images, left out ({names[4]})" in printed
    assert split.names == names[:4] and split.images.shape == (4, 3, 32, 32)
    first = faces.model_input(faces.open_photo(photos / names[0]), "p", 32, 148, aligned=True)[0]
    assert np.array_equal(split.images[0], first)
    again = load_split(cfg, "train")  # from the cache: the same images and names, nothing printed
    assert again.names == split.names and np.array_equal(again.images, split.images)
    assert "no face found" not in capsys.readouterr().out
    unaligned = load_split(tiny_config(tmp_path, data={"dataset": "folder", "root": str(photos), "image_size": 32}),
                           "train")
    assert len(unaligned) == 5 and unaligned.data_id != split.data_id  # alignment is part of the cache key


def test_align_is_refused_where_no_detector_belongs(tmp_path):
    from src.errors import ConfigError
    with pytest.raises(ConfigError, match="data.align"):
        tiny_config(tmp_path, data={"align": True})  # synthetic faces
