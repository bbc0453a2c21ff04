"""Checkpoints: save and load them safely, and rebuild the trained model they hold.

Every load uses torch.load(weights_only=True), so a checkpoint can hold tensors and plain Python
values only: a file whose pickle would call anything else (os.system, ...) is refused before any
of it runs. Loads always map to the CPU; load_state_dict moves the weights to the model's device.
A file of the older format conv-vae/1 is converted once by python -m tools.convert_checkpoint.
"""

import copy
import pickle
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from src import pretrained
from src.config import ALL_LABELS, Config, config_from_dict, load_config
from src.device import pick_device
from src.errors import CheckpointError, CheckpointNotFound, ConfigError
from src.files import atomic_write
from src.model import ConvVAE, build_model

CHECKPOINT_FORMAT = "conv-vae/2"   # written into every checkpoint; foreign files lack it
OLD_FORMAT = "conv-vae/1"          # numpy RNG state as arrays: loading it needed unsafe unpickling
# What a conv-vae/1 file references beyond weights_only's defaults: numpy arrays (the numpy RNG
# state). Rebuilding an array from these runs no code, so the conversion may allow them, and only them.
NUMPY_ARRAY_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                       "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType")


# --------------------------------------------------------------------------- save and load

def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save `state`, marked as this repo's format, atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def safe_load(path: Path) -> object:
    """torch.load with weights_only=True (tensors and plain values only), on the CPU."""
    with warnings.catch_warnings():  # foreign files make the unpickler warn before it fails
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def unsafe_globals(path: Path) -> list[str]:
    """The names a file's pickle would import beyond weights_only's allowlist (read, never run)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (e.g. a bare pickle): nothing can be said safely
        return ["(unknown: not a torch zip checkpoint)"]


def _refuse_unsafe(path: Path) -> CheckpointError:
    names = unsafe_globals(path)
    if names and set(names) <= set(NUMPY_ARRAY_GLOBALS):
        return CheckpointError(f"'{path}' was written by an older version of this repo (format {OLD_FORMAT}); "
                               f"convert it once with: python -m tools.convert_checkpoint {path} (or retrain)")
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return CheckpointError(f"'{path}' needs unsafe unpickling ({shown}); refused, nothing in it was run. "
                           "Load only checkpoints written by train.py")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by save_checkpoint, on the CPU; anything else is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"checkpoint '{path}' not found; train one first (python train.py)")
    try:
        state = safe_load(path)
    except pickle.UnpicklingError:
        raise _refuse_unsafe(path) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or truncated ({type(e).__name__}); "
                              "use another checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a checkpoint of this repo's VAE (no '{CHECKPOINT_FORMAT}' "
                              "marker); pass a file written by train.py")
    return state


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


class Trained(NamedTuple):
    """A trained model ready to use, and where it came from."""
    model: ConvVAE          # on its device, in eval mode
    cfg: Config             # the checkpoint's config, then the caller's file and overrides
    state: dict             # the checkpoint as saved (epoch, history, ...)
    path: Path


def checkpoint_path(checkpoint: str | Path | None, cfg: Config) -> Path:
    """Which model a script uses: `checkpoint` ("pretrained": the shipped model), else best_vae.pth in
    paths.checkpoint_dir when it exists, else the shipped model when it is there."""
    shipped = pretrained.SHIPPED
    if checkpoint == "pretrained":
        return shipped
    if checkpoint:
        return Path(checkpoint)
    trained = Path(cfg.paths.checkpoint_dir) / "best_vae.pth"
    return shipped if not trained.exists() and shipped.is_file() else trained


def load_trained(checkpoint: str | Path | None, config: str | Path | None = None,
                 overrides: Sequence[str] = ()) -> Trained:
    """The model of checkpoint_path(checkpoint) for scripts that use it: a checkpoint of train.py, or a
    pretrained file (src/pretrained.py; its state holds its "epoch" and "info").

    The config is the one stored in the checkpoint, then the `config` file if given, then the
    overrides: `data.root=...` evaluates on other data, while the model's shape always comes from
    the checkpoint.
    """
    path = checkpoint_path(checkpoint, load_config(config, overrides))
    shipped = pretrained.shipped_parts(path)
    if shipped is not None:
        model, trained = copy.deepcopy(shipped.model), shipped.cfg
        state = {"epoch": shipped.info.get("epoch"), "info": shipped.info}
    else:
        state = load_checkpoint(path)
        model, trained = model_from_checkpoint(state, path)
    cfg = load_config(config, overrides, base=trained)
    if cfg.model.conditional == [ALL_LABELS]:  # the names it was trained with
        cfg.model.conditional = list(trained.model.conditional)
    if cfg.model != trained.model or cfg.data.image_size != trained.data.image_size:
        raise ConfigError(f"model.* and data.image_size are fixed by the checkpoint {path}; "
                          "drop those overrides or use another checkpoint")
    return Trained(model.to(pick_device(cfg.train.device)).eval(), cfg, state, path)
