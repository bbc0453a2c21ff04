"""What a checkpoint must hold for an exact resume, and which changes a resume may make.

A resume continues from last_vae.pth (train.py --resume): the weights, optimizer, schedule, the
weights' average and, mid-epoch, every rank's RNG state and the epoch's running sums, so that the
rest of the run is the run that was never interrupted. Settings that would change the model, the
data or the half-finished epoch are refused with a one-line error; the rest (paths, workers,
epochs ...) may change.
"""

from pathlib import Path

import torch
import torch.distributed as dist

from src.config import Config
from src.distributed import all_reduce
from src.errors import CheckpointError
from src.model import ConvVAE
from src.rng import rng_state, set_rng_state


class ResumeRefused(CheckpointError):
    """A resume that would not continue the same run (its message ends in "or start afresh")."""


# data.* keys that say where the data lives, not what it is: a resume may change them
DATA_LOCATION_KEYS = ("root", "cache_dir", "num_workers")


def check_resumable(saved: dict, cfg: Config, world_size: int, path: Path) -> None:
    """Refuse (one line) a resume whose settings would change the model, the data, or the rest of a
    half-finished epoch; changes that cannot affect training (paths, workers, epochs, ...) are fine."""
    then, now, default = saved["config"], cfg.to_dict(), Config().to_dict()
    for section, skip in (("model", ()), ("data", DATA_LOCATION_KEYS)):
        # a key the checkpoint predates had its default then (new keys default to the old behaviour)
        changed = [k for k in now[section]
                   if k not in skip and then[section].get(k, default[section][k]) != now[section][k]]
        if changed:
            k = changed[0]
            raise ResumeRefused(f"{path} was trained with different '{section}' settings ({section}.{k}: "
                                  f"{then[section].get(k)} -> {now[section][k]}); resume with the same config, "
                                  "or start afresh")
    old_loss = then["train"].get("recon_loss", "mse_sum")
    if old_loss != cfg.train.recon_loss:  # the best validation loss so far is in the old loss's units
        raise ResumeRefused(f"{path} was trained with train.recon_loss={old_loss}; resume with it, or start "
                              "afresh")
    schedule = {k: then["train"].get(k, default["train"][k]) for k in ("lr_schedule", "warmup_steps")}
    if schedule != {"lr_schedule": cfg.train.lr_schedule, "warmup_steps": cfg.train.warmup_steps} or \
            (cfg.train.lr_schedule == "cosine" and then["train"]["epochs"] != cfg.train.epochs):
        raise ResumeRefused(f"{path} was trained with another learning-rate schedule ({schedule}, "
                              f"{then['train']['epochs']} epochs); resume with the same train.lr_schedule, "
                              "train.warmup_steps and (cosine) train.epochs, or start afresh")
    if saved.get("step"):  # mid-epoch: the rest of the epoch must see exactly the same batches
        for key, old, new in (("train.batch_size", then["train"]["batch_size"], cfg.train.batch_size),
                              ("train.seed", then["train"]["seed"], cfg.train.seed),
                              ("world size", saved["world_size"], world_size)):
            if old != new:
                raise ResumeRefused(f"{path} stopped mid-epoch with {key} {old}, now {new}; resume with "
                                      f"{key} {old} (or from an epoch boundary: best_vae.pth), or start afresh")


def checkpoint_state(model: ConvVAE, optimizer, scheduler, cfg: Config, history: list, best_val: float,
                     epoch: int, data_id: str, world_size: int, device: torch.device, step: int = 0,
                     sums: torch.Tensor | None = None, ema=None, adversary: tuple | None = None) -> dict:
    """Everything a resume needs. Collective under DDP: every rank calls it (RNG states are gathered,
    mid-epoch sums reduced), rank 0 saves it."""
    rng = rng_state(device)
    if world_size > 1:
        rng = [None] * world_size
        dist.all_gather_object(rng, rng_state(device))  # every rank's RNG, for an exact mid-epoch resume
    partial = None if sums is None else all_reduce(sums.clone()).cpu()  # all ranks' images so far
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "step": step, "partial": partial, "config": cfg.to_dict(), "history": history,
            "best_val": best_val, "rng": rng, "world_size": world_size, "data_id": data_id,
            **({"ema": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)} if ema is not None else {}),
            **({"adversary": {"model": adversary[0].state_dict(), "optimizer": adversary[1].state_dict()}}
               if adversary is not None else {})}


def restore(saved: dict, model: ConvVAE, optimizer, scheduler, rank: int, device: torch.device, ema=None,
            adversary: tuple | None = None) -> None:
    """Load a checkpoint (read on the CPU) into the model, optimizer, scheduler, the weights' average
    (if both keep one; else it starts from the weights), a conditional model's adversary (if both keep
    one; else it starts afresh) and, mid-epoch, the RNGs."""
    model.load_state_dict(saved["model"])  # copies the CPU tensors to the model's device
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None and "ema" in saved:
        ema.module.load_state_dict(saved["ema"])
        ema.n_averaged.fill_(saved["ema_updates"])
    if adversary is not None and "adversary" in saved:
        adversary[0].load_state_dict(saved["adversary"]["model"])
        adversary[1].load_state_dict(saved["adversary"]["optimizer"])
    if saved["step"]:
        rng = saved["rng"]
        set_rng_state(rng[rank] if isinstance(rng, list) else rng, device)
