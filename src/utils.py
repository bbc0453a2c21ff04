"""Helpers every script shares: device choice, seeding, atomic files, checkpoints and image grids."""

import argparse
import os
import random
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
import torchvision.utils

from src.config import Config, config_from_dict, load_config
from src.errors import CheckpointError, ConfigError, UserError
from src.model import ConvVAE, build_model

CHECKPOINT_FORMAT = "conv-vae/1"   # written into every checkpoint; foreign files lack it


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def rng_state() -> dict:
    """Every RNG a training step touches, for an exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save `state`, marked as this repo's format, atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint written by save_checkpoint; anything else is a CheckpointError saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; train one first (python train.py) "
                              "or pass --checkpoint PATH")
    try:
        # weights_only=False: the file also holds RNG states (numpy arrays); only load your own files.
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or truncated ({type(e).__name__}); "
                              "use another checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a checkpoint of this repo's VAE (no '{CHECKPOINT_FORMAT}' "
                              "marker); pass a file written by train.py")
    return state


def model_from_checkpoint(state: dict, path: str | Path = "checkpoint") -> tuple[ConvVAE, Config]:
    """Rebuild the model from the config stored in the checkpoint and load its weights."""
    try:
        cfg = config_from_dict(state["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"'{path}' has no usable config ({e}); retrain with this version") from None
    model = build_model(cfg.model, cfg.data.image_size)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        # torch's message starts with a generic header; the next line names the first bad key or shape
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__
        detail = detail if len(detail) <= 160 else detail[:160] + " ..."
        raise CheckpointError(f"'{path}' does not match the VAE its config describes ({detail}); "
                              "retrain or use a matching checkpoint") from None
    return model, cfg


def load_trained(args: argparse.Namespace) -> tuple[ConvVAE, Config, dict, Path]:
    """For scripts that use a trained model: (model on its device in eval mode, config, checkpoint, path).

    The checkpoint is --checkpoint, else best_vae.pth in paths.checkpoint_dir. The config is the one
    stored in it, then --config if given, then the overrides: `data.root=...` evaluates on other
    data, while the model's shape always comes from the checkpoint.
    """
    located = load_config(args.config, args.overrides)
    path = Path(args.checkpoint) if args.checkpoint else Path(located.paths.checkpoint_dir) / "best_vae.pth"
    state = load_checkpoint(path)
    model, trained = model_from_checkpoint(state, path)
    cfg = load_config(args.config, args.overrides, base=trained)
    if cfg.model != trained.model or cfg.data.image_size != trained.data.image_size:
        raise ConfigError(f"model.* and data.image_size are fixed by the checkpoint {path}; "
                          "drop those overrides or pass another --checkpoint")
    return model.to(pick_device(cfg.train.device)).eval(), cfg, state, path


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
