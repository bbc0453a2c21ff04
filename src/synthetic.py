"""Procedurally drawn cartoon faces: a no-download stand-in for CelebA.

Each face is drawn with Pillow from a few random factors (skin tone, hair, face shape, expression,
glasses, hat, background), so the quickstart can train a VAE without fetching a dataset, and the
factors can later show what the latent space picked up. Face i depends only on (seed, i): any slice
of the stream can be generated on its own, e.g. split across worker processes by `start`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

FACTOR_NAMES = ("skin_tone", "hair_colour", "hair_style", "face_width", "eye_spacing",
                "smile", "glasses", "hat", "background")

SKIN_TONES = ((255, 224, 200), (243, 198, 165), (226, 173, 128), (194, 134, 92), (141, 90, 60), (92, 60, 42))
HAIR_COLOURS = ((28, 24, 24), (80, 50, 30), (140, 95, 55), (232, 200, 120), (185, 75, 35), (175, 175, 180))
HAIR_STYLES = ("bald", "short", "long", "bun")
BACKGROUNDS = ((190, 215, 240), (240, 220, 180), (185, 225, 185), (230, 195, 215), (105, 115, 140), (245, 245, 240))
IRIS_COLOURS = ((95, 60, 30), (60, 115, 180), (70, 125, 70), (100, 100, 110))
CLOTHES_COLOURS = ((50, 75, 140), (160, 40, 50), (45, 110, 80), (60, 60, 65), (215, 175, 60), (235, 235, 235))
HAT_COLOURS = ((35, 35, 55), (170, 30, 40), (30, 95, 60), (125, 85, 45), (220, 215, 200), (60, 110, 190))
FRAME_COLOURS = ((20, 20, 20), (110, 60, 30), (150, 30, 40), (60, 70, 120))
LIPS = (150, 45, 55)
GLASSES_RATE, HAT_RATE, DARK_LENS_RATE = 0.20, 0.15, 0.3
SUPERSAMPLE = 4  # draw at 4x and box-downsample: cheap antialiasing


def _shade(colour: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(min(255, int(c * f)) for c in colour)


def _draw_face(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """One face as an (size, size, 3) uint8 array, and its factors in FACTOR_NAMES order."""
    skin_i, hair_i, style = (int(rng.integers(k)) for k in (len(SKIN_TONES), len(HAIR_COLOURS), len(HAIR_STYLES)))
    face_width, eye_spacing, smile = rng.random(), rng.random(), rng.uniform(-1.0, 1.0)
    glasses, hat = int(rng.random() < GLASSES_RATE), int(rng.random() < HAT_RATE)
    bg = int(rng.integers(len(BACKGROUNDS)))
    factors = (skin_i, hair_i, style, face_width, eye_spacing, smile, glasses, hat, bg)

    # Nuisance variation that is not a factor: placement, scale, colours of clothes/eyes/hat.
    S = size * SUPERSAMPLE
    k = 1.0 + rng.normal(0.0, 0.03)
    cx, cy = 0.5 + rng.normal(0.0, 0.015), 0.52 + rng.normal(0.0, 0.012)
    hw, hh = (0.21 + 0.08 * face_width) * k, 0.30 * k      # head half-width / half-height
    skin, hair = SKIN_TONES[skin_i], HAIR_COLOURS[hair_i]
    lw = max(1, round(0.014 * S * k))                      # line width of brows, mouth, frames

    img = Image.new("RGB", (S, S), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * S, y0 * S, x1 * S, y1 * S]

    def pts(xs, ys) -> list[tuple[float, float]]:
        return [(x * S, y * S) for x, y in zip(xs, ys)]

    # Shoulders, long hair behind them, neck, ears, then the head on top.
    clothes = CLOTHES_COLOURS[int(rng.integers(len(CLOTHES_COLOURS)))]
    d.ellipse(box(cx - 0.46 * k, cy + 0.92 * hh, cx + 0.46 * k, cy + hh + 0.55 * k), fill=clothes)
    if style == 2:  # long: a rounded mass behind the head down to the shoulders
        d.rounded_rectangle(box(cx - hw - 0.05 * k, cy - hh - 0.03 * k, cx + hw + 0.05 * k, cy + hh + 0.06 * k),
                            radius=0.16 * k * S, fill=hair)
    if style == 3:  # bun on top of the head
        d.ellipse(box(cx - 0.085 * k, cy - hh - 0.13 * k, cx + 0.085 * k, cy - hh + 0.04 * k), fill=hair)
    if style in (1, 3):  # short/bun: volume around the top and sides of the head, down to the ears
        d.ellipse(box(cx - hw - 0.03 * k, cy - hh - 0.05 * k, cx + hw + 0.03 * k, cy + 0.2 * hh), fill=hair)
    d.rectangle(box(cx - 0.075 * k, cy + 0.5 * hh, cx + 0.075 * k, cy + hh + 0.06 * k), fill=_shade(skin, 0.85))
    eye_y = cy - 0.06 * k
    for side in (-1, 1):
        d.ellipse(box(cx + side * hw - 0.035 * k, eye_y - 0.02 * k, cx + side * hw + 0.035 * k, eye_y + 0.10 * k),
                  fill=_shade(skin, 0.9))
    d.ellipse(box(cx - hw, cy - hh, cx + hw, cy + hh), fill=skin)

    # Hair on top of the head: a cap (chord) whose lower edge is the hairline.
    if style == 0:  # bald: just tufts above the ears
        for side in (-1, 1):
            d.ellipse(box(cx + side * hw - 0.04 * k, eye_y - 0.11 * k, cx + side * hw + 0.04 * k, eye_y + 0.01 * k),
                      fill=hair)
    else:
        hairline = cy - (0.5 + 0.15 * rng.random()) * hh
        d.chord(box(cx - hw - 0.03 * k, cy - hh - 0.05 * k, cx + hw + 0.03 * k, 2 * hairline - (cy - hh - 0.05 * k)),
                180, 360, fill=hair)

    # Eyes: whites, iris, pupil, highlight; brows above; eye_spacing sets their distance.
    ex = (0.075 + 0.055 * eye_spacing) * k
    iris = IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))]
    gaze = rng.normal(0.0, 0.007)
    brow_tilt, brow_y = rng.normal(0.0, 0.008), eye_y - (0.055 + 0.01 * rng.random()) * k
    for side in (-1, 1):
        x = cx + side * ex
        d.ellipse(box(x - 0.045 * k, eye_y - 0.027 * k, x + 0.045 * k, eye_y + 0.027 * k),
                  fill=(248, 248, 244), outline=(60, 40, 40), width=max(1, lw // 2))
        for r, colour in ((0.023, iris), (0.011, (15, 15, 20))):
            d.ellipse(box(x + gaze - r * k, eye_y - r * k, x + gaze + r * k, eye_y + r * k), fill=colour)
        d.ellipse(box(x + gaze + 0.002 * k, eye_y - 0.014 * k, x + gaze + 0.011 * k, eye_y - 0.005 * k),
                  fill=(255, 255, 255))
        d.line(pts((x - 0.045 * k * side, x + 0.045 * k * side), (brow_y + brow_tilt, brow_y - brow_tilt)),
               fill=_shade(hair, 0.8), width=lw)

    # Nose: a darker hooked line.
    d.line(pts((cx + 0.005, cx - 0.02 * k, cx + 0.015 * k), (eye_y + 0.04 * k, cy + 0.085 * k, cy + 0.095 * k)),
           fill=_shade(skin, 0.7), width=lw, joint="curve")

    # Mouth: a parabola whose curvature is `smile`; broad smiles open up (the fill grows smoothly).
    mouth_y, mouth_w = cy + 0.17 * k, (0.065 + 0.025 * rng.random()) * k
    u = np.linspace(-1.0, 1.0, 11)
    xs, corner = cx + mouth_w * u, mouth_y - 0.5 * smile * 0.05 * k
    lower = corner + smile * 0.05 * k * (1 - u ** 2)
    openness = np.clip((smile - 0.3) / 0.7, 0.0, 1.0)
    if openness > 0:
        upper = corner + smile * 0.05 * k * (1 - u ** 2) * (1 - 0.7 * openness)
        d.polygon(pts(np.r_[xs, xs[::-1]], np.r_[upper, lower[::-1]]), fill=(90, 25, 35))
        d.line(pts(xs, upper), fill=LIPS, width=lw, joint="curve")
    d.line(pts(xs, lower), fill=LIPS, width=lw, joint="curve")

    # Glasses: two rims (round or rectangular), bridge and temples; sometimes dark lenses hide the eyes.
    if glasses:
        frame = FRAME_COLOURS[int(rng.integers(len(FRAME_COLOURS)))]
        lens = (35, 35, 45) if rng.random() < DARK_LENS_RATE else None
        shape = d.ellipse if rng.random() < 0.5 else lambda b, **kw: d.rounded_rectangle(b, radius=0.02 * S, **kw)
        rx = min(0.065 * k, ex - 0.01 * k)  # keep the two rims apart when eyes are close
        for side in (-1, 1):
            x = cx + side * ex
            shape(box(x - rx, eye_y - 0.045 * k, x + rx, eye_y + 0.045 * k), fill=lens, outline=frame, width=lw)
            d.line(pts((x + side * rx, cx + side * hw), (eye_y - 0.01 * k, eye_y)), fill=frame, width=lw)
        d.line(pts((cx - ex + rx, cx + ex - rx), (eye_y - 0.01 * k, eye_y - 0.01 * k)), fill=frame, width=lw)

    # Hat: crown over the top of the head (and any bun), a band, and a brim across the forehead.
    if hat:
        colour = HAT_COLOURS[int(rng.integers(len(HAT_COLOURS)))]
        brim_y = cy - 0.58 * hh
        d.rounded_rectangle(box(cx - 0.92 * hw, cy - hh - 0.15 * k, cx + 0.92 * hw, brim_y),
                            radius=0.05 * k * S, fill=colour)
        d.rectangle(box(cx - 0.92 * hw, brim_y - 0.045 * k, cx + 0.92 * hw, brim_y - 0.015 * k),
                    fill=_shade(colour, 0.55))
        d.ellipse(box(cx - hw - 0.09 * k, brim_y - 0.028 * k, cx + hw + 0.09 * k, brim_y + 0.028 * k),
                  fill=_shade(colour, 0.8))

    # Downsample, then a soft directional lighting gradient so the set is not perfectly flat.
    out = np.asarray(img.reduce(SUPERSAMPLE), dtype=np.float32)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.2)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gain = 1.0 + strength * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    return np.clip(out * gain[:, :, None], 0, 255).astype(np.uint8), factors


def generate_faces(n: int, seed: int, image_size: int = 64, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Faces start..start+n-1 of the stream for `seed`.

    Returns images (n, 3, image_size, image_size) uint8 RGB (channel-first) and
    factors (n, len(FACTOR_NAMES)) float32, the values used to draw each face.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if seed < 0 or start < 0:
        raise ValueError(f"seed and start must be >= 0, got seed={seed}, start={start}")
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    factors = np.empty((n, len(FACTOR_NAMES)), dtype=np.float32)
    for j in range(n):
        # One generator per face index, so any slice of the stream can be made independently.
        face, factors[j] = _draw_face(np.random.default_rng([seed, start + j]), image_size)
        images[j] = face.transpose(2, 0, 1)
    return images, factors
