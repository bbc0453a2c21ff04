"""Helpers every script shares: device choice, bf16 choice, seeding, atomic files and image grids."""

import math
import os
import random
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
import torchvision.utils
from PIL import Image, ImageDraw, ImageFont

from src.errors import ConfigError, UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' prefers CUDA, then Apple's MPS, then the CPU; an unavailable choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if not available[name]:
        raise ConfigError(f"config key 'train.device' is '{name}' but no {name} device is available; "
                          "use train.device=auto or cpu")
    return torch.device(name)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x on `device`; non-blocking only on CUDA (from pageable memory it is reported to corrupt data on MPS)."""
    return x.to(device, non_blocking=device.type == "cuda")


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 matrix work is still native
_BF16_ISAS = {"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
              "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU, and not capped away by ONEDNN_MAX_CPU_ISA."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in _BF16_ISAS:
        return False
    try:
        flags = torch._C._cpu._get_cpu_capability()  # what PyTorch's cpuinfo found
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    except Exception:  # an older or newer PyTorch without this helper: read the kernel's flags
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in text or " amx_bf16" in text


def choose_bf16(setting: bool | str, device: torch.device) -> tuple[bool, str]:
    """(use bf16 autocast, why) for train.bf16 = true, false or "auto" (on where the hardware is native).

    Emulated bf16 is slower than float32 (2.5-4x on an AVX2 laptop CPU), so "auto" asks for the real thing.
    """
    if device.type not in ("cuda", "cpu"):
        return False, f"{device.type} runs in float32"
    if setting is not True and setting is not False:  # "auto"
        if device.type == "cuda":
            try:
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:  # PyTorch < 2.4 has no including_emulation
                native = torch.cuda.is_bf16_supported()
            return native, "auto: this GPU " + ("has" if native else "lacks") + " native bf16"
        native = _cpu_has_native_bf16()
        return native, "auto: this CPU " + ("has native bf16 (AVX512-BF16 or AMX)" if native else
                                            "lacks native bf16 (no AVX512-BF16/AMX), float32 is faster")
    return setting, "train.bf16=" + ("true" if setting else "false")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def ensure_writable_dir(path: str | Path, key: str) -> Path:
    """Create `path` if needed; a directory we cannot write to is a UserError naming the config key."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {key} '{path}' ({e.strerror}); choose another with {key}=PATH") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{key} '{path}' is not writable; fix its permissions or choose another with {key}=PATH")
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(f) on a temporary file in the same directory, fsync, then rename it over `path`.

    The rename is atomic, so a crash at any moment (even kill -9 mid-write) leaves either the old
    file or the new one, and a concurrent reader never sees half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> uint8, rounded as a saved PNG would be (FID compares them with real uint8 images)."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save a batch of [0, 1] images (N, 3, H, W) as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(images.detach().float().cpu().clamp(0, 1), path, nrow=nrow,
                                 padding=padding, pad_value=1.0)
    return path


# --------------------------------------------------------------------------- labelled figures and GIFs

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
