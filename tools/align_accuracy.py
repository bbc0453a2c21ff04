"""How well photos align: aligned CelebA test images, warped as a phone might take them, aligned back.

    python -m tools.align_accuracy --photos 100 data.root=/path/to/celeba

Each image is scaled, rotated and placed in a larger picture (unaligned_photo), then found and
aligned by src/faces.py; what counts is how far the model's input moves (in pixels at
data.image_size) against the original's input, and the PSNR of the two.
"""

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from src.celeba import SPLITS, find_celeba, read_partition
from src.cli import argument_parser
from src.config import load_config
from src.errors import run_cli
from src.faces import TEMPLATE_EYE_DISTANCE, Face, align, celeba_transform, detect_faces, frame_scale_for, open_photo
from src.images import CELEBA_WIDTH, preprocess


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
    parser = argument_parser("How well photos align: warped copies of CelebA images, aligned back.")
    parser.add_argument("--photos", type=int, default=100, metavar="N", help="test images to warp (default 100)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    source, partition, _ = find_celeba(Path(cfg.data.root).expanduser())
    names = sorted(n for n, s in read_partition(partition).items() if s == SPLITS["test"])
    names = [names[i] for i in np.linspace(0, len(names) - 1, min(args.photos, len(names))).astype(int)]
    frames = [open_photo(source.path / n) for n in names]
    report = alignment_accuracy(frames, cfg.data.image_size, cfg.data.center_crop)
    print(f"{report['faces_found']}/{report['photos']} faces found; model input displaced by "
          f"{report['displacement_px_median']:.2f} px (median), {report['displacement_px_p90']:.2f} px (90th "
          f"percentile) at {cfg.data.image_size} px; PSNR against the original's input: aligned "
          f"{report['psnr_aligned_median']:.1f} dB, centre crop of the photo {report['psnr_unaligned_median']:.1f} dB")


if __name__ == "__main__":
    run_cli(main)
