"""Checkpoints: save and load them safely, rebuild the model they hold, and convert old ones.

Every load uses torch.load(weights_only=True), so a checkpoint can hold tensors and plain Python
values only: a file whose pickle would call anything else (os.system, ...) is refused before any
of it runs. Loads always map to the CPU; load_state_dict moves the weights to the model's device.

    python -m src.checkpoint --convert checkpoints/last_vae.pth   # a file of format conv-vae/1, once
"""

import argparse
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from src.config import Config, config_from_dict, load_config
from src.errors import CheckpointError, ConfigError, run_cli
from src.model import ConvVAE, build_model
from src.utils import atomic_write, pick_device

CHECKPOINT_FORMAT = "conv-vae/2"   # written into every checkpoint; foreign files lack it
OLD_FORMAT = "conv-vae/1"          # numpy RNG state as arrays: loading it needed unsafe unpickling
# What a conv-vae/1 file references beyond weights_only's defaults: numpy arrays (the numpy RNG
# state). Rebuilding an array from these runs no code, so --convert may allow them, and only them.
NUMPY_ARRAY_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                       "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType")


# --------------------------------------------------------------------------- RNG state

def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG a training step touches, as plain integers: weights_only can load them, and they load
    the same whatever map_location says (a CUDA tensor would break torch.set_rng_state).

    On CUDA only this process's device is saved: a resume may run on another number of GPUs.
    """
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def _bytes(values: list[int] | torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8) if isinstance(values, list) else values.cpu()


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore rng_state(); the CUDA state goes to this process's device only."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes(state["torch"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(_bytes(state["cuda"]), device)


# --------------------------------------------------------------------------- save and load

def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save `state`, marked as this repo's format, atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def _safe_load(path: Path) -> object:
    """torch.load with weights_only=True (tensors and plain values only), on the CPU."""
    with warnings.catch_warnings():  # foreign files make the unpickler warn before it fails
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def _unsafe_globals(path: Path) -> list[str]:
    """The names a file's pickle would import beyond weights_only's allowlist (read, never run)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (e.g. a bare pickle): nothing can be said safely
        return ["(unknown: not a torch zip checkpoint)"]


def _refuse_unsafe(path: Path) -> CheckpointError:
    names = _unsafe_globals(path)
    if names and set(names) <= set(NUMPY_ARRAY_GLOBALS):
        return CheckpointError(f"'{path}' was written by an older version of this repo (format {OLD_FORMAT}); "
                               f"convert it once with: python -m src.checkpoint --convert {path} (or retrain)")
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return CheckpointError(f"'{path}' needs unsafe unpickling ({shown}); refused, nothing in it was run. "
                           "Load only checkpoints written by train.py")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by save_checkpoint, on the CPU; anything else is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; train one first (python train.py) "
                              "or pass --checkpoint PATH")
    try:
        state = _safe_load(path)
    except pickle.UnpicklingError:
        raise _refuse_unsafe(path) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or truncated ({type(e).__name__}); "
                              "use another checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a checkpoint of this repo's VAE (no '{CHECKPOINT_FORMAT}' "
                              "marker); pass a file written by train.py")
    return state


def convert_old_checkpoint(path: str | Path) -> Path:
    """Rewrite a conv-vae/1 checkpoint as conv-vae/2 in place; the original is kept as PATH.v1."""
    path = Path(path)
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    allowed += [(np._core.multiarray._reconstruct, name) for name in NUMPY_ARRAY_GLOBALS if "reconstruct" in name]
    try:
        with torch.serialization.safe_globals(allowed):  # still weights_only: arrays, nothing else
            state = _safe_load(path)
    except pickle.UnpicklingError:
        raise _refuse_unsafe_for_conversion(path) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or truncated ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != OLD_FORMAT:
        raise CheckpointError(f"'{path}' is not a {OLD_FORMAT} checkpoint; nothing to convert")
    rngs = state.get("rng")
    if rngs is not None:
        state["rng"] = [_plain_rng(r) for r in rngs] if isinstance(rngs, list) else _plain_rng(rngs)
    state.pop("format")
    shutil.copy2(path, path.with_name(path.name + ".v1"))
    save_checkpoint(state, path)
    return path


def _refuse_unsafe_for_conversion(path: Path) -> CheckpointError:
    names = ", ".join(_unsafe_globals(path)[:3])
    return CheckpointError(f"'{path}' needs unsafe unpickling beyond numpy arrays ({names}); refused, "
                           "nothing in it was run")


def _plain_rng(state: dict) -> dict:
    """A conv-vae/1 RNG state (numpy arrays, tuples) as rng_state() now writes it."""
    version, mt, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    plain = {"python": [version, list(mt), gauss],
             "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": state["torch"].tolist()}
    if "cuda" in state and state["cuda"]:
        plain["cuda"] = state["cuda"][0].tolist()  # it held every GPU's state; each rank now keeps its own
    return plain


# --------------------------------------------------------------------------- the model in a checkpoint

def model_from_checkpoint(state: dict, path: str | Path = "checkpoint") -> tuple[ConvVAE, Config]:
    """Rebuild the model from the config stored in the checkpoint and load its weights: the moving
    average of the weights where training kept one (train.ema_decay), else the weights."""
    try:
        cfg = config_from_dict(state["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"'{path}' has no usable config ({e}); retrain with this version") from None
    model = build_model(cfg.model, cfg.data.image_size)
    try:
        model.load_state_dict(state["ema"] if "ema" in state else state["model"])
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a checkpoint of an older format (kept as PATH.v1).")
    parser.add_argument("--convert", metavar="PATH", required=True, help=f"a {OLD_FORMAT} checkpoint")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    path = convert_old_checkpoint(args.convert)
    print(f"converted {path} to {CHECKPOINT_FORMAT}; the original is kept as {path.name}.v1")


if __name__ == "__main__":
    run_cli(main)
