"""Plots of numbers: training curves from history.json, and the summary of a beta sweep of evaluate.py runs."""

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # drawn to files only: no pyplot, no backend to choose
from matplotlib.ticker import NullLocator

from src.errors import UserError
from src.files import MissingFile, read_json

PANELS = [("total", "total loss (recon + β·KL)"), ("recon", "reconstruction (SSE per image)"),
          ("kl", "KL divergence (nats)")]
GAUSSIAN_PANELS = [("total", "total loss (NLL + β·KL, nats)"), ("recon", "reconstruction (Gaussian NLL, nats)"),
                   ("kl", "KL divergence (nats)")]


def read_history(path: Path) -> list[dict]:
    missing = MissingFile(f"no training history at '{path}' yet; run train.py first (it writes history.json "
                          "after each epoch)")
    history = read_json(path, missing, f"{path} is not valid JSON (line {{line}}); re-run train.py to rewrite it")
    if not isinstance(history, list) or not history:
        raise UserError(f"{path} holds no finished epoch yet; wait for the first epoch to end")
    return history


def plot_history(history: list[dict], out: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(11, 8), constrained_layout=True)
    axes = fig.subplots(2, 2)
    panels = PANELS if "val_bpd" not in history[0] else GAUSSIAN_PANELS  # a calibrated decoder: nats
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label="val")
        ax.set(title=title, xlabel="epoch", ylabel=key)
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes.flat[3]
    ax.plot(epochs, [h["grad_norm"] for h in history], "o-", color="tab:red", label="mean pre-clip norm")
    ax.set(title="gradient norm (before clipping)", xlabel="epoch", ylabel="L2 norm")
    ax.legend()
    ax.grid(alpha=0.3)
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    last = history[-1]
    fig.suptitle(f"{len(history)} epochs; last: val total {last['val_total']:.1f}, "
                 f"recon {last['val_recon']:.1f}, KL {last['val_kl']:.1f}", fontsize=13)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def plot_runs(histories: dict[str, list[dict]], out: Path) -> Path:
    """Several runs' validation loss and learning rate per epoch on shared axes, labelled by run."""
    fig = Figure(figsize=(11, 4.5), constrained_layout=True)
    loss_ax, lr_ax = fig.subplots(1, 2)
    bpd = all("val_bpd" in history[0] for history in histories.values())  # one unit on the shared axis
    for label, history in histories.items():
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["val_bpd" if bpd else "val_total"] for h in history], ".-", label=label)
        lr_ax.plot(epochs, [h["lr"] for h in history], "-", label=label)
    loss_ax.set(title=f"validation −ELBO ({'bits/dim' if bpd else 'total loss'})", xlabel="epoch")
    lr_ax.set(title="learning rate", xlabel="epoch", yscale="log")
    for ax in (loss_ax, lr_ax):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


# (key, column title, value read from a metrics.json)
SWEEP_COLUMNS = [
    ("recon", "recon (SSE)", lambda m: m["z_sampled"]["recon"]),
    ("kl", "KL", lambda m: m["z_sampled"]["kl"]),
    ("active", "active units", lambda m: m["latent"]["active_units"]),
    ("mig", "MIG", lambda m: m["disentanglement"]["mig"]),
    ("dci_d", "DCI-D", lambda m: m["disentanglement"]["dci_disentanglement"]),
    ("sap", "SAP", lambda m: m["disentanglement"]["sap"]),
    ("fid", "prior FID", lambda m: m["generative"]["prior_vs_test"]["fid"] if m.get("generative") else math.nan),
]


def read_sweep(directory: Path) -> dict[tuple[str, float], list[dict]]:
    """Every metrics.json below `directory`, grouped by (recon_loss, beta)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for path in sorted(directory.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        if "disentanglement" not in metrics or "mig" not in (metrics["disentanglement"] or {}):
            raise UserError(f"{path} has no MIG/DCI/SAP: evaluate runs on data with factor labels (synthetic faces)")
        groups.setdefault((metrics.get("recon_loss", "mse_sum"), metrics["beta"]), []).append(metrics)
    if not groups:
        raise UserError(f"no metrics.json under '{directory}'; run evaluate.py with paths.results_dir in it first")
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0] != "mse_sum", kv[0][1])))


def sweep_summary(groups: dict[tuple[str, float], list[dict]]) -> dict[tuple[str, float], dict]:
    """Per group: {column key: (mean, std over the runs, ddof=1; 0 for a single run)} and the run count."""
    summary = {}
    for group, runs in groups.items():
        values = {key: np.array([read(m) for m in runs], dtype=float) for key, _, read in SWEEP_COLUMNS}
        summary[group] = {key: (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0) for key, v in values.items()}
        summary[group]["runs"] = len(runs)
    return summary


def sweep_table(summary: dict) -> str:
    """A Markdown table: one row per (recon_loss, beta), mean +- std over seeds (the value, for one run)."""
    lines = ["| recon_loss | beta | runs | " + " | ".join(title for _, title, _ in SWEEP_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(SWEEP_COLUMNS)]
    digits = {k: 3 if k in ("mig", "dci_d", "sap") else 1 for k, _, _ in SWEEP_COLUMNS}
    for (loss, beta), row in summary.items():
        # One run has no spread to show: its value alone, not a misleading "± 0".
        cells = [f"{row[k][0]:.{d}f} ± {row[k][1]:.{d}f}" if row["runs"] > 1 else f"{row[k][0]:.{d}f}"
                 for k, d in digits.items()]
        lines.append(f"| {loss} | {beta:g} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(summary: dict, out: Path) -> Path:
    """MIG and reconstruction error against beta (log scale), mean +- std over seeds."""
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    axes = fig.subplots(1, 2)
    for loss, marker in (("mse_sum", "o-"), ("gaussian", "s")):
        groups = [(beta, row) for (l, beta), row in summary.items() if l == loss]
        if not groups:
            continue
        betas = [beta for beta, _ in groups]
        for ax, key in zip(axes, ("mig", "recon")):
            ax.errorbar(betas, [row[key][0] for _, row in groups], yerr=[row[key][1] for _, row in groups],
                        fmt=marker, capsize=4, label=f"recon_loss={loss}")
    swept = sorted({beta for _, beta in summary})
    for ax, title in zip(axes, ("MIG (higher: more disentangled)", "reconstruction error (SSE per image)")):
        ax.set(xscale="log", xlabel="beta (KL weight)", title=title)
        ax.set_xticks(swept, [f"{b:g}" for b in swept])  # the swept values, not 10^x
        ax.xaxis.set_minor_locator(NullLocator())
        ax.axvline(1.2, color="gray", ls=":", lw=1)
        ax.legend()
        ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
