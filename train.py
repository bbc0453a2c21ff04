"""Train the convolutional VAE.

    python train.py                                   # CelebA, config/config.json
    python train.py --config config/quickstart.json   # synthetic faces, no download
    python train.py train.epochs=3 data.root=/data/celeba
    python train.py --resume                          # continue from checkpoints/last_vae.pth

Writes checkpoints/best_vae.pth (best validation loss), checkpoints/last_vae.pth (every epoch),
results/history.json (per-epoch losses and speed) and results/train_samples.png (prior samples).
"""

import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from src.config import Config, argument_parser, load_config
from src.dataset import ImageSplit, iterate_batches, load_split
from src.errors import CheckpointError, run_cli
from src.model import ConvVAE, build_model, vae_loss
from src.utils import (ensure_writable_dir, load_checkpoint, pick_device, rng_state, save_checkpoint,
                       save_image_grid, seed_everything, set_rng_state)


@torch.no_grad()
def validate(model: ConvVAE, split: ImageSplit, cfg: Config, device: torch.device, amp: bool) -> dict:
    """Mean total/recon/KL per image over a split, with z sampled as in training (the ELBO)."""
    model.eval()
    sums, count = torch.zeros(3, device=device), 0
    batches = iterate_batches(split.images, cfg.train.batch_size, device)
    for x in tqdm(batches, total=math.ceil(len(split) / cfg.train.batch_size), desc="  val", leave=False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x_hat, mu, logvar = model(x)
        sums += torch.stack(vae_loss(x_hat, x, mu, logvar, cfg.train.beta)) * len(x)
        count += len(x)
    total, recon, kl = (sums / count).tolist()
    return {"total": total, "recon": recon, "kl": kl}


def train_epoch(model: ConvVAE, optimizer: torch.optim.Optimizer, split: ImageSplit, cfg: Config,
                device: torch.device, amp: bool, epoch: int) -> dict:
    """One pass over the training split in a seeded order; mean losses and gradient norm."""
    model.train()
    t = cfg.train
    order = torch.Generator().manual_seed(t.seed * 1000 + epoch)  # data order depends only on the epoch
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    sums, grad_norm_sum, count, steps = torch.zeros(3, device=device), 0.0, 0, 0
    batches = iterate_batches(split.images, t.batch_size, device, shuffle=True, generator=order)
    bar = tqdm(batches, total=math.ceil(len(split) / t.batch_size), desc=f"epoch {epoch + 1}/{t.epochs}")
    for x in bar:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            x_hat, mu, logvar = model(x)
        total, recon, kl = vae_loss(x_hat, x, mu, logvar, t.beta)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # norm before clipping
        optimizer.step()

        sums += torch.stack([total, recon, kl]).detach() * len(x)
        grad_norm_sum = grad_norm_sum + grad_norm.detach()  # stays on the device: no sync per step
        count, steps = count + len(x), steps + 1
        if steps % t.log_every == 0:  # the only host-device sync in the loop
            loss, rec, kl_ = (sums / count).tolist()
            bar.set_postfix(loss=f"{loss:.1f}", recon=f"{rec:.1f}", kl=f"{kl_:.1f}",
                            grad_norm=f"{float(grad_norm_sum) / steps:.1f}")
    total, recon, kl = (sums / count).tolist()
    return {"total": total, "recon": recon, "kl": kl, "grad_norm": float(grad_norm_sum) / steps}


def write_json(data, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from last_vae.pth in paths.checkpoint_dir")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    checkpoint_dir = ensure_writable_dir(cfg.paths.checkpoint_dir, "paths.checkpoint_dir")
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    last_path, best_path = checkpoint_dir / "last_vae.pth", checkpoint_dir / "best_vae.pth"

    device = pick_device(cfg.train.device)
    amp = cfg.train.bf16 and device.type in ("cuda", "cpu")  # bf16 autocast; MPS stays in float32
    resume = load_checkpoint(last_path, device) if args.resume else None  # fail before any data work
    if resume:
        for section in ("model", "data"):
            if resume["config"][section] != cfg.to_dict()[section]:
                raise CheckpointError(f"{last_path} was trained with different '{section}' settings; resume "
                                      "with the same config, or start afresh without --resume")
    seed_everything(cfg.train.seed)
    train_set, val_set = load_split(cfg, "train"), load_split(cfg, "val")
    print(f"{cfg.data.dataset}: {len(train_set)} train / {len(val_set)} val images of "
          f"{cfg.data.image_size}x{cfg.data.image_size}; device {device}, bf16 {amp}")

    model = build_model(cfg.model, cfg.data.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.train.lr_gamma)
    print(f"ConvVAE: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"latent {cfg.model.latent_dim}, hidden {cfg.model.hidden_dims}")

    start_epoch, history, best_val = 0, [], math.inf
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start_epoch, history, best_val = resume["epoch"], resume["history"], resume["best_val"]
        print(f"resuming from {last_path} after epoch {start_epoch}")
        if start_epoch >= cfg.train.epochs:
            print(f"already trained {start_epoch} epochs; raise train.epochs to train longer")
            return

    sample_z = torch.randn(64, cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    for epoch in range(start_epoch, cfg.train.epochs):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train = train_epoch(model, optimizer, train_set, cfg, device, amp, epoch)
        train_seconds = time.perf_counter() - start
        val = validate(model, val_set, cfg, device, amp)
        scheduler.step()
        if not all(math.isfinite(v) for v in (*train.values(), *val.values())):
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1} (train {train}, val {val}); "
                                     f"last good checkpoint: {last_path}")
        history.append({
            "epoch": epoch + 1,
            **{f"train_{k}": v for k, v in train.items() if k != "grad_norm"},
            **{f"val_{k}": v for k, v in val.items()},
            "lr": lr, "grad_norm": train["grad_norm"],
            "epoch_seconds": time.perf_counter() - start,
            "images_per_second": len(train_set) / train_seconds,
        })
        is_best = val["total"] < best_val
        best_val = min(best_val, val["total"])
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "config": cfg.to_dict(),
                 "history": history, "best_val": best_val, "rng": rng_state()}
        save_checkpoint(state, last_path)
        if is_best:
            save_checkpoint(state, best_path)
        write_json(history, results_dir / "history.json")
        model.eval()
        with torch.no_grad():
            save_image_grid(model.decode(sample_z), results_dir / "train_samples.png")
        h = history[-1]
        tqdm.write(f"epoch {epoch + 1}/{cfg.train.epochs}  train {h['train_total']:.2f} "
                   f"(recon {h['train_recon']:.2f}, kl {h['train_kl']:.2f})  val {h['val_total']:.2f} "
                   f"(recon {h['val_recon']:.2f}, kl {h['val_kl']:.2f})  {h['epoch_seconds']:.1f} s, "
                   f"{h['images_per_second']:.0f} img/s{'  *best*' if is_best else ''}")
    print(f"done: best val loss {best_val:.2f}; checkpoints in {checkpoint_dir}/, history in {results_dir}/")


if __name__ == "__main__":
    run_cli(main)
