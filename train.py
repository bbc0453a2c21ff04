"""Train the convolutional VAE, on one device or many.

    python train.py                                   # CelebA, config/config.json
    python train.py --config config/quickstart.json   # synthetic faces, no download
    python train.py train.epochs=3 data.root=/data/celeba
    python train.py --resume                          # continue from checkpoints/last_vae.pth
    torchrun --standalone --nproc_per_node=4 train.py # DDP; train.batch_size is per GPU

Writes checkpoints/best_vae.pth (best validation loss), checkpoints/last_vae.pth (every epoch, and
on Ctrl-C/SIGTERM), results/history.json (per-epoch losses and speed) and results/train_samples.png.
"""

import contextlib
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

from src.config import Config, argument_parser, load_config
from src.dataset import Batches, ImageSplit, load_split
from src.errors import CheckpointError, NumericalError, run_cli
from src.model import ConvVAE, build_model, vae_loss
from src.utils import (atomic_write, ensure_writable_dir, load_checkpoint, pick_device, rng_state, save_checkpoint,
                       save_image_grid, seed_everything, set_rng_state)

stop_signal: int | None = None  # set by SIGINT/SIGTERM; the loop stops after the current step


def request_stop(signum, frame) -> None:
    global stop_signal
    if stop_signal is not None:  # a second Ctrl-C stops at once
        raise KeyboardInterrupt
    stop_signal = signum
    tqdm.write(f"\n{signal.Signals(signum).name}: finishing this step, then saving last_vae.pth ...")


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun, join the group: NCCL on GPUs, gloo on CPU."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


@contextlib.contextmanager
def rank_zero_first(rank: int):
    """Rank 0 runs the block first (e.g. builds the data cache); the others then reuse its result."""
    if rank != 0:
        dist.barrier()
    yield
    if rank == 0 and dist.is_initialized():
        dist.barrier()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, beta: float,
               amp: bool, max_norm: float) -> tuple[torch.Tensor, ...]:
    """One optimisation step; (total, recon, kl, gradient norm before clipping), left on the device."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        x_hat, mu, logvar = model(x)
    total, recon, kl = vae_loss(x_hat, x, mu, logvar, beta)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return total.detach(), recon.detach(), kl.detach(), grad_norm.detach()


@torch.no_grad()
def validate(model: ConvVAE, batches: Batches, beta: float, amp: bool) -> dict:
    """Mean total/recon/KL per image over the split (all ranks), with z sampled as in training."""
    model.eval()
    sums = torch.zeros(4, device=batches.device)  # total, recon, kl (summed over images), count
    for x in tqdm(batches.epoch(), total=len(batches), desc="  val", leave=False, disable=batches.rank != 0):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            x_hat, mu, logvar = model(x)
        total, recon, kl = vae_loss(x_hat, x, mu, logvar, beta)
        sums += torch.stack([total, recon, kl, torch.ones_like(total)]) * len(x)  # no host->device copy
    total, recon, kl, count = all_reduce(sums).tolist()
    return {"total": total / count, "recon": recon / count, "kl": kl / count}


def main(argv: Sequence[str] | None = None) -> None:
    global stop_signal
    stop_signal = None
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        train(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(argv: Sequence[str] | None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from last_vae.pth in paths.checkpoint_dir")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    checkpoint_dir = ensure_writable_dir(cfg.paths.checkpoint_dir, "paths.checkpoint_dir")
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    last_path, best_path = checkpoint_dir / "last_vae.pth", checkpoint_dir / "best_vae.pth"

    rank, world_size, device = setup_distributed(t.device)
    master = rank == 0  # only rank 0 writes files and shows progress bars
    amp = t.bf16 and device.type in ("cuda", "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    resume = load_checkpoint(last_path, device) if args.resume else None  # fail before any data work
    if resume:
        for section in ("model", "data"):
            if resume["config"][section] != cfg.to_dict()[section]:
                raise CheckpointError(f"{last_path} was trained with different '{section}' settings; resume "
                                      "with the same config, or start afresh without --resume")

    with rank_zero_first(rank):
        train_set, val_set = load_split(cfg, "train"), load_split(cfg, "val")
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    train_batches = Batches(train_set.images, t.batch_size, device, shuffle=True, seed=t.seed, rank=rank,
                            world_size=world_size, hflip=cfg.data.hflip, channels_last=t.channels_last)
    val_batches = Batches(val_set.images, t.batch_size, device, rank=rank, world_size=world_size,
                          channels_last=t.channels_last)

    seed_everything(t.seed)
    raw_model = build_model(cfg.model, cfg.data.image_size).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=t.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=t.lr_gamma)
    start_epoch, start_step, partial, history, best_val = 0, 0, None, [], math.inf
    if resume:
        raw_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, start_step, history, best_val = (resume["epoch"], resume.get("step", 0),
                                                      resume["history"], resume["best_val"])
        partial = resume.get("partial")
        if start_step:
            set_rng_state(resume["rng"][rank] if isinstance(resume["rng"], list) else resume["rng"])
        if master:
            print(f"resuming from {last_path}: epoch {start_epoch + 1}, step {start_step}")
        if start_epoch >= t.epochs:
            print(f"already trained {start_epoch} epochs; raise train.epochs to train longer")
            return
    model = torch.compile(raw_model) if t.compile else raw_model
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if master:
        print(f"{cfg.data.dataset}: {len(train_set)} train / {len(val_set)} val images of {cfg.data.image_size}px; "
              f"{world_size} x {device}, batch {t.batch_size}/rank, bf16 {amp}, channels_last {t.channels_last}, "
              f"compile {t.compile}")
        print(f"ConvVAE: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f} M parameters, "
              f"latent {cfg.model.latent_dim}, hidden {cfg.model.hidden_dims}")

    def checkpoint_state(epoch: int, step: int = 0, sums: torch.Tensor | None = None) -> dict:
        rng = [None] * world_size
        if world_size > 1:
            dist.all_gather_object(rng, rng_state())  # every rank's RNG, for an exact mid-epoch resume
        else:
            rng = rng_state()
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                "partial": None if sums is None else sums.cpu(), "config": cfg.to_dict(),
                "history": history, "best_val": best_val, "rng": rng}

    sample_z = torch.randn(64, cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    for epoch in range(start_epoch, t.epochs):
        if start_step == 0:  # each epoch's randomness depends only on (seed, epoch, rank): exact resumes
            seed_everything(int(np.random.SeedSequence([t.seed, epoch, rank]).generate_state(1)[0]))
        model.train()
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        # Running sums on the device (no host sync per step): total, recon, kl (x images), grad norm, images.
        sums = partial.to(device) if start_step and partial is not None else torch.zeros(5, device=device)
        first_bad_step = torch.tensor(-1, device=device)
        steps, images_seen = start_step, 0
        bar = tqdm(train_batches.epoch(epoch, start_step), total=len(train_batches), initial=start_step,
                   desc=f"epoch {epoch + 1}/{t.epochs}", disable=not master)
        for x in bar:
            total, recon, kl, grad_norm = train_step(model, optimizer, x, t.beta, amp, max_norm)
            n = len(x)
            # n enters as a scalar argument: a torch.tensor(n, device=cuda) would be a blocking copy each step
            sums += torch.stack([total * n, recon * n, kl * n, grad_norm, torch.ones_like(total) * n])
            finite = torch.isfinite(total) & torch.isfinite(grad_norm)
            first_bad_step = torch.where(~finite & (first_bad_step < 0), steps, first_bad_step)
            steps, images_seen = steps + 1, images_seen + n
            at_log_step = steps % t.log_every == 0
            if device.type != "cuda" or at_log_step:  # on CUDA, check only here: .item() syncs
                if first_bad_step.item() >= 0:
                    good = f"{last_path} (epoch {start_epoch if not history else history[-1]['epoch']})" \
                        if last_path.exists() else "none yet"
                    raise NumericalError(f"non-finite loss or gradient in epoch {epoch + 1}, step "
                                         f"{first_bad_step.item() + 1}; training stopped, nothing saved. Last good "
                                         f"checkpoint: {good}; try a lower train.lr or train.bf16=false")
            if master and at_log_step:
                total_sum, recon_sum, kl_sum, norm_sum, count = sums.tolist()
                bar.set_postfix(loss=f"{total_sum / count:.1f}", recon=f"{recon_sum / count:.1f}",
                                kl=f"{kl_sum / count:.1f}", grad_norm=f"{norm_sum / steps:.1f}")
            stop = torch.tensor(float(stop_signal is not None))
            if world_size > 1 and at_log_step:  # every rank stops at the same step
                stop = all_reduce(stop.to(device)).cpu()
            if stop.item() and (world_size == 1 or at_log_step):
                break
        bar.close()
        train_seconds = time.perf_counter() - start

        if stop_signal is not None and steps < len(train_batches):  # interrupted mid-epoch
            state = checkpoint_state(epoch, steps, sums)
            if master:
                save_checkpoint(state, last_path)
                print(f"saved {last_path} at epoch {epoch + 1}, step {steps}/{len(train_batches)}; "
                      f"resume with: python train.py {' '.join(sys.argv[1:] if argv is None else argv)} --resume")
            sys.exit(128 + stop_signal)

        train = dict(zip(("total", "recon", "kl", "grad_norm", "images"), all_reduce(sums.clone()).tolist()))
        count = train.pop("images")
        train = {k: v / count for k, v in train.items() if k != "grad_norm"} | \
                {"grad_norm": train["grad_norm"] / world_size / steps}
        val = validate(raw_model, val_batches, t.beta, amp)
        scheduler.step()
        if not all(math.isfinite(v) for v in (*train.values(), *val.values())):
            raise NumericalError(f"non-finite validation loss after epoch {epoch + 1} ({val}); nothing saved; "
                                 "try a lower train.lr or train.bf16=false")
        history.append({
            "epoch": epoch + 1,
            **{f"train_{k}": v for k, v in train.items() if k != "grad_norm"},
            **{f"val_{k}": v for k, v in val.items()},
            "lr": lr, "grad_norm": train["grad_norm"],
            "epoch_seconds": time.perf_counter() - start,
            "images_per_second": images_seen * world_size / train_seconds,
            **({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}),
        })
        is_best = val["total"] < best_val
        best_val = min(best_val, val["total"])
        start_step, partial = 0, None
        state = checkpoint_state(epoch + 1)
        if master:
            save_checkpoint(state, last_path)
            if is_best:
                save_checkpoint(state, best_path)
            atomic_write(results_dir / "history.json", lambda f: f.write(json.dumps(history, indent=2).encode()))
            raw_model.eval()
            with torch.no_grad():
                save_image_grid(raw_model.decode(sample_z), results_dir / "train_samples.png")
            h = history[-1]
            tqdm.write(f"epoch {epoch + 1}/{t.epochs}  train {h['train_total']:.2f} (recon {h['train_recon']:.2f}, "
                       f"kl {h['train_kl']:.2f})  val {h['val_total']:.2f} (recon {h['val_recon']:.2f}, kl "
                       f"{h['val_kl']:.2f})  {h['epoch_seconds']:.1f} s, {h['images_per_second']:.0f} img/s"
                       f"{'  *best*' if is_best else ''}")
        if stop_signal is not None:  # the signal came during validation: the epoch is complete and saved
            if master:
                print(f"saved {last_path} after epoch {epoch + 1}; resume with --resume")
            sys.exit(128 + stop_signal)
    if master:
        print(f"done: best val loss {best_val:.2f}; checkpoints in {checkpoint_dir}/, history in {results_dir}/")


if __name__ == "__main__":
    try:
        run_cli(main)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
