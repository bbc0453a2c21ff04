"""Figures: image grids, labelled grids of image blocks, and animated GIFs of sweeps (all PNG/GIF files)."""

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from src.images import to_uint8


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save a batch of [0, 1] images (N, 3, H, W) as one PNG grid, nrow images per row, white between
    them: torchvision's save_image(pad_value=1) without importing torchvision (2.5 s on 2 cores, more
    than a photo edit takes)."""
    images = to_uint8(images.detach().float().cpu().clamp(0, 1))
    n, channels, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = torch.full((channels, rows * (h + padding) + padding, cols * (w + padding) + padding), 255,
                      dtype=torch.uint8)
    for i, image in enumerate(images):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


GIF_MIN_SIZE = 128                   # each GIF panel is upscaled to at least this many pixels
GIF_GAP, GIF_BAR = 4, 4              # white gap between panels; height of the progress bar
GIF_FRAME_MS, GIF_END_MS = 120, 700  # frame duration; the two end frames are held longer


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font on Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def to_pil(image: torch.Tensor, side: int) -> Image.Image:
    """A [0, 1] image (3, H, W) as a PIL image upscaled (nearest) to side x side pixels."""
    array = to_uint8(image.detach().float().cpu()).permute(1, 2, 0).numpy()
    return Image.fromarray(array).resize((side, side), Image.NEAREST)


def labelled_grid(blocks: list[tuple[str, torch.Tensor, list[str]]], column_labels: list[str], path: str | Path,
                  min_cell: int = 96) -> Path:
    """A PNG of labelled image blocks: each block is (title, images (rows, cols, 3, H, W) in [0, 1],
    one label per row, drawn left of it); column_labels go above every block's columns."""
    size = blocks[0][1].shape[-1]
    cell = size * max(1, math.ceil(min_cell / size))
    small, big, pad, gap = font(13), font(16), 12, 2
    label_w = max([0] + [math.ceil(small.getlength(t)) + 8 for _, _, labels in blocks for t in labels])
    cols = blocks[0][1].shape[1]
    width = 2 * pad + label_w + cols * (cell + gap)
    block_heights = [24 + 18 + len(images) * (cell + gap) + pad for _, images, _ in blocks]
    canvas = Image.new("RGB", (width, pad + sum(block_heights)), "white")
    draw, y = ImageDraw.Draw(canvas), pad
    for (title, images, row_labels), height in zip(blocks, block_heights):
        draw.text((pad, y), title, fill="black", font=big)
        x0 = pad + label_w
        for c, label in enumerate(column_labels):
            draw.text((x0 + c * (cell + gap) + 2, y + 24), label, fill=(80, 80, 80), font=small)
        for r, row in enumerate(images):
            top = y + 42 + r * (cell + gap)
            if r < len(row_labels):
                draw.text((pad, top + cell // 2 - 7), row_labels[r], fill="black", font=small)
            for c, image in enumerate(row):
                canvas.paste(to_pil(image, cell), (x0 + c * (cell + gap), top))
        y += height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def sweep_gif(strips: list[torch.Tensor], path: str | Path) -> Path:
    """An animated GIF that plays `strips` forth and back: frame i shows strip i's images (K, 3, H, W)
    side by side, upscaled to at least GIF_MIN_SIZE, over a bar that shows how far the sweep has come."""
    size = strips[0].shape[-1]
    panel = size * max(1, math.ceil(GIF_MIN_SIZE / size))
    k, steps = len(strips[0]), len(strips)
    width = k * panel + (k + 1) * GIF_GAP
    frames = []
    for i, strip in enumerate(strips):
        frame = Image.new("RGB", (width, panel + 3 * GIF_GAP + GIF_BAR), "white")
        for j, image in enumerate(strip):
            frame.paste(to_pil(image, panel), (GIF_GAP + j * (panel + GIF_GAP), GIF_GAP))
        bar_y = 2 * GIF_GAP + panel
        frame.paste((200, 200, 200), (GIF_GAP, bar_y, width - GIF_GAP, bar_y + GIF_BAR))
        filled = round((width - 2 * GIF_GAP) * i / max(1, steps - 1))
        if filled:
            frame.paste((60, 60, 60), (GIF_GAP, bar_y, GIF_GAP + filled, bar_y + GIF_BAR))
        frames.append(frame)
    order = list(range(steps)) + list(range(steps - 2, 0, -1))  # forth and back, ends not repeated
    durations = [GIF_END_MS if i in (0, steps - 1) else GIF_FRAME_MS for i in order]
    path = Path(path)
    # GIF merges a frame identical to the one before it; the bar keeps neighbouring frames distinct.
    frames[order[0]].save(path, save_all=True, append_images=[frames[i] for i in order[1:]], duration=durations,
                          loop=0)
    return path
