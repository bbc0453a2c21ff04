"""Random number generators: seeding every one, and their state as plain values for an exact resume."""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


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
