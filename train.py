"""Train the convolutional VAE, on one device or many.

    python train.py                                   # CelebA, config/config.json
    python train.py --config config/quickstart.json   # synthetic faces, no download
    python train.py train.epochs=3 data.root=/data/celeba
    python train.py --resume                          # continue from checkpoints/last_vae.pth
    torchrun --standalone --nproc_per_node=4 train.py # DDP; train.batch_size is per GPU

Writes checkpoints/best_vae.pth (best validation loss), checkpoints/last_vae.pth (every epoch, and
on Ctrl-C/SIGTERM), results/history.json (per-epoch losses and speed) and results/train_samples.png.

Reading order: Interrupts (Ctrl-C and SIGTERM), then the checkpoint and resume state, then the loop
(train_epoch, end_of_epoch) and main, which ties them together.
"""

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from src.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from src.config import Config, argument_parser, load_config
from src.dataset import Batches, load_split
from src.errors import CheckpointError, NumericalError, run_cli
from src.model import ConvVAE, bits_per_dim, build_model
from src.threads import ThreadTuner, boundary, configure_threads, timed
from src.training import (all_reduce, local_rank_zero_first, make_ema, make_scheduler, setup_distributed, train_step,
                          validate)
from src.utils import atomic_write, choose_bf16, ensure_writable_dir, save_image_grid, seed_everything


# --------------------------------------------------------------------------- interrupts

class Interrupts:
    """Ctrl-C or SIGTERM during training: finish the current step, save last_vae.pth, exit 128 + signal.

    Active only around the training loop (before it, e.g. during a cache build, an interrupt stops at
    once). A second Ctrl-C stops at once. Under DDP a signal may reach one rank only, so ranks agree
    on it (agreed) at the same steps, and then all take the same save path.
    """

    def __init__(self):
        self.signum = 0

    def __enter__(self) -> "Interrupts":
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum
        tqdm.write(f"\n{signal.Signals(signum).name}: finishing this step, then saving last_vae.pth ...")

    def agreed(self, world_size: int, device: torch.device) -> int:
        """The signal every rank stops for (0: none). Under DDP every rank must call this at the same step."""
        if world_size == 1:
            return self.signum
        signum = torch.tensor(self.signum, device=device)
        self.signum = int(all_reduce(signum, dist.ReduceOp.MAX).item())
        return self.signum


def resume_command(argv: Sequence[str] | None, world_size: int) -> str:
    """The command that continues this run, launched the way this one was."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
    launcher = "python"
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        nodes = world_size // per_node
        launcher = f"torchrun --standalone --nproc_per_node={per_node}" if nodes == 1 else \
            f"torchrun --nnodes={nodes} --nproc_per_node={per_node} <your rendezvous options>"
    return " ".join([launcher, "train.py", *args, "--resume"])


# --------------------------------------------------------------------------- checkpoint and resume state

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
            raise CheckpointError(f"{path} was trained with different '{section}' settings ({section}.{k}: "
                                  f"{then[section].get(k)} -> {now[section][k]}); resume with the same config, "
                                  "or start afresh without --resume")
    old_loss = then["train"].get("recon_loss", "mse_sum")
    if old_loss != cfg.train.recon_loss:  # the best validation loss so far is in the old loss's units
        raise CheckpointError(f"{path} was trained with train.recon_loss={old_loss}; resume with it, or start "
                              "afresh without --resume")
    schedule = {k: then["train"].get(k, default["train"][k]) for k in ("lr_schedule", "warmup_steps")}
    if schedule != {"lr_schedule": cfg.train.lr_schedule, "warmup_steps": cfg.train.warmup_steps} or \
            (cfg.train.lr_schedule == "cosine" and then["train"]["epochs"] != cfg.train.epochs):
        raise CheckpointError(f"{path} was trained with another learning-rate schedule ({schedule}, "
                              f"{then['train']['epochs']} epochs); resume with the same train.lr_schedule, "
                              "train.warmup_steps and (cosine) train.epochs, or start afresh without --resume")
    if saved.get("step"):  # mid-epoch: the rest of the epoch must see exactly the same batches
        for key, old, new in (("train.batch_size", then["train"]["batch_size"], cfg.train.batch_size),
                              ("train.seed", then["train"]["seed"], cfg.train.seed),
                              ("world size", saved["world_size"], world_size)):
            if old != new:
                raise CheckpointError(f"{path} stopped mid-epoch with {key} {old}, now {new}; resume with "
                                      f"{key} {old}, or resume from an epoch boundary (best_vae.pth) instead")


def checkpoint_state(model: ConvVAE, optimizer, scheduler, cfg: Config, history: list, best_val: float,
                     epoch: int, data_id: str, world_size: int, device: torch.device, step: int = 0,
                     sums: torch.Tensor | None = None, ema=None) -> dict:
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
            **({"ema": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)} if ema is not None else {})}


def restore(saved: dict, model: ConvVAE, optimizer, scheduler, rank: int, device: torch.device, ema=None) -> None:
    """Load a checkpoint (read on the CPU) into the model, optimizer, scheduler, the weights' average
    (if both keep one; else it starts from the weights) and, mid-epoch, the RNGs."""
    model.load_state_dict(saved["model"])  # copies the CPU tensors to the model's device
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None and "ema" in saved:
        ema.module.load_state_dict(saved["ema"])
        ema.n_averaged.fill_(saved["ema_updates"])
    if saved["step"]:
        rng = saved["rng"]
        set_rng_state(rng[rank] if isinstance(rng, list) else rng, device)


# --------------------------------------------------------------------------- the loop

class FiniteCheck:
    """Remembers the first step whose loss or gradient was not finite, on the device (no sync per step)."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.tensor(-1, device=device)

    def update(self, step: int, total: torch.Tensor, grad_norm: torch.Tensor) -> None:
        bad = ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def raise_if_bad(self, epoch: int, last_good: str) -> None:
        """Syncs with the device; call it before every save, and per step where that is cheap (CPU)."""
        if self.first_bad.item() >= 0:
            raise NumericalError(f"non-finite loss or gradient in epoch {epoch + 1}, step {self.first_bad.item() + 1}; "
                                 f"training stopped, nothing saved. Last good checkpoint: {last_good}; try a lower "
                                 "train.lr or train.bf16=false")


def checks_every_step(device: torch.device) -> bool:
    """Check for non-finite values after every step where that is cheap; on CUDA .item() waits for the
    GPU, so there only every train.log_every steps (and before every save)."""
    return device.type != "cuda"


def train_epoch(model, optimizer, batches: Batches, epoch: int, start_step: int, sums: torch.Tensor, cfg: Config,
                amp: bool, interrupts: Interrupts, finite: FiniteCheck, last_good: str,
                after_step=lambda: None) -> tuple[int, int]:
    """Train one epoch from `start_step`, adding (total, recon, kl) x images, grad norm and images to `sums`
    on the device; after_step() runs after every optimizer step (a per-step schedule, the weights'
    average). Returns (steps done, fewer than len(batches) when interrupted; images this rank saw)."""
    t, device, master = cfg.train, batches.device, batches.rank == 0
    model.train()
    steps, images = start_step, 0
    bar = tqdm(batches.epoch(epoch, start_step), total=len(batches), initial=start_step,
               desc=f"epoch {epoch + 1}/{t.epochs}", disable=not master)
    boundary()  # validation and saving happened since the last step: the thread tuner re-warms
    for x in bar:
        n = len(x)  # a Python int: torch.tensor(n, device=cuda) would be a blocking copy each step
        with timed(n, "train step"):  # on the CPU a step is done when train_step returns
            total, recon, kl, grad_norm = train_step(model, optimizer, x, t, amp)
            after_step()
        sums += torch.stack([total * n, recon * n, kl * n, grad_norm, torch.ones_like(total) * n])
        finite.update(steps, total, grad_norm)
        steps, images = steps + 1, images + n
        at_log_step = steps % t.log_every == 0
        if at_log_step or checks_every_step(device):
            finite.raise_if_bad(epoch, last_good)
        if master and at_log_step:
            total_sum, recon_sum, kl_sum, norm_sum, count = sums.tolist()
            bar.set_postfix(loss=f"{total_sum / count:.1f}", recon=f"{recon_sum / count:.1f}",
                            kl=f"{kl_sum / count:.1f}", grad_norm=f"{norm_sum / steps:.1f}")
        if (batches.world_size == 1 or at_log_step) and interrupts.agreed(batches.world_size, device):
            break
    bar.close()
    return steps, images


def epoch_record(epoch: int, sums: torch.Tensor, steps: int, val: dict, lr: float, seconds: float,
                 train_seconds: float, images_seen: int, world_size: int, device: torch.device) -> dict:
    """One history.json entry from the epoch's (all-reduced) training sums and validation losses."""
    total, recon, kl, grad_norm, count = sums.tolist()
    return {"epoch": epoch + 1, "train_total": total / count, "train_recon": recon / count, "train_kl": kl / count,
            **{f"val_{k}": v for k, v in val.items()}, "lr": lr, "grad_norm": grad_norm / world_size / steps,
            "epoch_seconds": seconds, "images_per_second": images_seen * world_size / train_seconds,
            **({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {})}


def threads_used(tuner: ThreadTuner | None, steps: int) -> dict[str, int]:
    """Training steps this epoch at each CPU thread count (under "auto", as the tuner chose them)."""
    units = tuner.units if tuner else {torch.get_num_threads(): steps}
    return {str(n): units[n] for n in sorted(units)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from last_vae.pth in paths.checkpoint_dir")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    checkpoint_dir = ensure_writable_dir(cfg.paths.checkpoint_dir, "paths.checkpoint_dir")
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    last_path, best_path = checkpoint_dir / "last_vae.pth", checkpoint_dir / "best_vae.pth"

    rank, local_rank, world_size, device = setup_distributed(t.device)
    master = rank == 0  # only rank 0 writes files and shows progress bars
    amp, amp_reason = choose_bf16(t.bf16, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    saved = load_checkpoint(last_path) if args.resume else None  # on the CPU; fail before any data work
    if saved:
        check_resumable(saved, cfg, world_size, last_path)

    with local_rank_zero_first(local_rank):
        train_set, val_set = load_split(cfg, "train"), load_split(cfg, "val")
    if saved and saved.get("data_id") and saved["data_id"] != train_set.data_id:
        raise CheckpointError(f"{last_path} was trained on other images (different files or preprocessing); "
                              "resume with the same data, or start afresh without --resume")
    train_batches = Batches(train_set.images, t.batch_size, device, shuffle=True, seed=t.seed, rank=rank,
                            world_size=world_size, hflip=cfg.data.hflip, channels_last=t.channels_last)
    val_batches = Batches(val_set.images, t.batch_size, device, rank=rank, world_size=world_size,
                          channels_last=t.channels_last)

    seed_everything(t.seed)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    raw_model = build_model(cfg.model, cfg.data.image_size).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=t.lr)
    scheduler, per_step = make_scheduler(optimizer, t, len(train_batches))
    ema = make_ema(raw_model, t.ema_decay)
    evaluated = ema.module if ema is not None else raw_model  # validated, sampled and kept as the best

    def after_step() -> None:
        if per_step:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(raw_model)

    start_epoch, start_step, history, best_val = 0, 0, [], math.inf
    if saved:
        restore(saved, raw_model, optimizer, scheduler, rank, device, ema)
        start_epoch, start_step, history, best_val = saved["epoch"], saved["step"], saved["history"], saved["best_val"]
        if master:
            print(f"resuming from {last_path}: epoch {start_epoch + 1}, step {start_step}")
        if start_epoch >= t.epochs:
            print(f"already trained {start_epoch} epochs; raise train.epochs to train longer")
            return
    model = torch.compile(raw_model) if t.compile else raw_model
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    tuner = configure_threads(t.threads, device, say=tqdm.write if master else lambda line: None)
    if master:
        print(f"{cfg.data.dataset}: {len(train_set)} train / {len(val_set)} val images of {cfg.data.image_size}px; "
              f"{world_size} x {device}, batch {t.batch_size}/rank, bf16 {amp} ({amp_reason}), "
              f"channels_last {t.channels_last}, compile {t.compile}")
        m = cfg.model
        print(f"ConvVAE: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f} M parameters, "
              f"latent {m.latent_dim}, hidden {m.hidden_dims}, decoder {m.decoder_dims or 'mirrored'} "
              f"({m.upsample} upsampling, {m.res_blocks} residual blocks per stage); learning rate {t.lr_schedule}"
              f"{f' after {t.warmup_steps} warm-up steps' if t.warmup_steps else ''}, "
              f"{f'EMA {t.ema_decay} of the weights evaluated' if t.ema_decay else 'no EMA'}")

    def state(epoch: int, step: int = 0, sums: torch.Tensor | None = None) -> dict:
        return checkpoint_state(raw_model, optimizer, scheduler, cfg, history, best_val, epoch, train_set.data_id,
                                world_size, device, step, sums, ema)

    sample_z = torch.randn(64, cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    with Interrupts() as interrupts:
        for epoch in range(start_epoch, t.epochs):
            if start_step == 0:  # each epoch's randomness depends only on (seed, epoch, rank): exact resumes
                seed_everything(int(np.random.SeedSequence([t.seed, epoch, rank]).generate_state(1)[0]))
            last_good = f"{last_path} (epoch {history[-1]['epoch'] if history else start_epoch})" \
                if last_path.exists() else "none yet"
            # Running sums on the device: (total, recon, kl) x images, grad norm, images. A resumed epoch
            # starts from the saved sums of all ranks, held by rank 0 alone so they count once.
            sums = torch.zeros(5, device=device)
            if start_step and saved.get("partial") is not None and master:
                sums += saved["partial"].to(device)
            finite = FiniteCheck(device)
            if tuner:
                tuner.units.clear()
            lr, start = optimizer.param_groups[0]["lr"], time.perf_counter()
            steps, images = train_epoch(model, optimizer, train_batches, epoch, start_step, sums, cfg, amp, interrupts,
                                        finite, last_good, after_step)
            train_seconds = time.perf_counter() - start
            finite.raise_if_bad(epoch, last_good)  # nothing non-finite is ever saved
            signum = interrupts.agreed(world_size, device)  # a signal after the last agreed step counts too
            if signum and steps < len(train_batches):  # interrupted mid-epoch: save the position, exit
                checkpoint = state(epoch, steps, sums)
                if master:
                    save_checkpoint(checkpoint, last_path)
                    print(f"saved {last_path} at epoch {epoch + 1}, step {steps}/{len(train_batches)}; "
                          f"resume with: {resume_command(argv, world_size)}")
                sys.exit(128 + signum)

            all_reduce(sums)
            val = validate(evaluated, val_batches, t, amp)
            if not per_step:
                scheduler.step()
            record = epoch_record(epoch, sums, steps, val, lr, time.perf_counter() - start, train_seconds, images,
                                  world_size, device)
            if device.type == "cpu":
                record["threads"] = threads_used(tuner, steps - start_step)
            if not all(math.isfinite(record[k]) for k in ("train_total", "val_total", "val_recon", "val_kl")):
                raise NumericalError(f"non-finite validation loss after epoch {epoch + 1} ({val}); nothing saved; "
                                     "try a lower train.lr or train.bf16=false")
            if t.recon_loss == "gaussian":  # losses in nats: also as bits per dimension (-ELBO, 8-bit scale)
                pixels = 3 * cfg.data.image_size ** 2
                record |= {f"{s}_bpd": bits_per_dim(record[f"{s}_recon"] + record[f"{s}_kl"], pixels)
                           for s in ("train", "val")}
            history.append(record)
            is_best = val["total"] < best_val
            best_val = min(best_val, val["total"])
            start_step = 0
            checkpoint = state(epoch + 1)
            if master:
                end_of_epoch(checkpoint, evaluated, sample_z, is_best, last_path, best_path, results_dir, t.epochs)
            if interrupts.agreed(world_size, device):  # the signal came during validation: all is saved
                if master:
                    print(f"saved {last_path} after epoch {epoch + 1}; resume with: {resume_command(argv, world_size)}")
                sys.exit(128 + interrupts.signum)
    if master:
        print(f"done: best val loss {best_val:.2f}; checkpoints in {checkpoint_dir}/, history in {results_dir}/")


def end_of_epoch(checkpoint: dict, model: ConvVAE, sample_z: torch.Tensor, is_best: bool, last_path: Path,
                 best_path: Path, results_dir: Path, epochs: int) -> None:
    """Rank 0: write the checkpoints, history.json and the sample grid, and print the epoch's line."""
    save_checkpoint(checkpoint, last_path)
    if is_best:
        save_checkpoint(checkpoint, best_path)
    history = checkpoint["history"]
    atomic_write(results_dir / "history.json", lambda f: f.write(json.dumps(history, indent=2).encode()))
    model.eval()
    with torch.no_grad():
        save_image_grid(model.decode(sample_z), results_dir / "train_samples.png")
    h = history[-1]
    tqdm.write(f"epoch {h['epoch']}/{epochs}  train {h['train_total']:.2f} (recon {h['train_recon']:.2f}, "
               f"kl {h['train_kl']:.2f})  val {h['val_total']:.2f} (recon {h['val_recon']:.2f}, kl "
               f"{h['val_kl']:.2f})  {h['epoch_seconds']:.1f} s, {h['images_per_second']:.0f} img/s"
               f"{'  *best*' if is_best else ''}")


if __name__ == "__main__":
    try:
        run_cli(main)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
