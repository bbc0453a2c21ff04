"""Image primitives every other module builds on: 8-bit RGB, the model's crop and resize, and back to uint8.

A leaf module (it imports nothing of src/), so that the data sets (src/dataset.py) and photo
alignment (src/faces.py) can share the same preprocessing without importing each other.
"""

import numpy as np
import torch
from PIL import Image

CELEBA_WIDTH, CELEBA_HEIGHT = 178, 218   # the official aligned frame that data.center_crop refers to


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: transparent pixels white (not their hidden colour), 16-bit grey scaled (not clipped)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels become white, not their hidden colour
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey: scale, don't clip at 255
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
    return img.convert("RGB")       # L, P, CMYK ... all end as 8-bit RGB


def preprocess(img: Image.Image, image_size: int, center_crop: int) -> np.ndarray:
    """Centre crop (scaled to the image's size) and antialiased resize; (3, S, S) uint8 RGB.

    `center_crop` is in pixels of the 178-px-wide aligned CelebA frame, so a downscaled copy gets
    the same field of view; 0 takes the largest centred square.
    """
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h) if center_crop == 0 else min(w, h, center_crop * w / CELEBA_WIDTH)
    left, top = (w - side) / 2, (h - side) / 2  # fractional: a half-size copy sees the same region
    img = img.resize((image_size, image_size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def to_float(array: np.ndarray) -> torch.Tensor:
    """uint8 images (..., 3, S, S) as a float tensor in [0, 1] (a copy: memory maps are read-only)."""
    return torch.from_numpy(np.array(array)).float() / 255


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> uint8, rounded as a saved PNG would be (FID compares them with real uint8 images)."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
