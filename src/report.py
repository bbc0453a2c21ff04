"""What evaluate.py reports: the disentanglement scores that fit the data's labels, FID/KID of the
samplers, and the printed tables of every metric."""

from pathlib import Path
from typing import Sequence

import numpy as np

from src.attributes import held_out, indicators
from src.config import Config
from src.dataset import ImageSplit
from src.disentanglement import disentanglement_scores, mig, probe_auc
from src.fid import generative_metrics
from src.latent import latent_codes, training_gmm
from src.model import ConvVAE

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


def fid_and_kid(model: ConvVAE, cfg: Config, checkpoint: Path, split_name: str, split: ImageSplit,
                train: ImageSplit, train_mu: np.ndarray, n: int, with_train: bool, seed: int,
                samplers: Sequence[str] = ("prior", "gmm"), labels: dict[str, np.ndarray] | None = None) -> dict:
    """FID/KID of each sampler's samples ("prior", "gmm"), n each with the same seed, against the split
    (and train); labels: a conditional model's y by sampler and split name (src/fid.py)."""
    gmm = training_gmm(model, checkpoint, train.images, train.data_id, cfg.data.cache_dir, cfg.train.batch_size,
                       model.device, codes=train_mu) if "gmm" in samplers else None
    codes = {sampler: latent_codes(sampler, n, model.latent_dim, seed, gmm) for sampler in samplers}
    references = {split_name: split.images}
    if with_train and split_name != "train":
        references["train"] = train.images
    return generative_metrics(model, references, codes, cfg.data.cache_dir, cfg.data.dataset, cfg.train.batch_size,
                              model.device, seed=seed, labels=labels)




def format_report(summary: dict, recon: dict, latent: dict, factors: dict, generative: dict | None) -> str:
    """evaluate.py's printed tables: losses, reconstruction quality, disentanglement, FID/KID."""
    parts = [format_table(summary), format_quality(recon, latent), format_disentanglement(factors)]
    if generative is not None:
        parts.append(format_generative(generative))
    return "\n\n".join(parts)
