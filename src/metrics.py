"""Evaluation of a trained VAE: per-image losses (shared with analyze_failures.py), SSIM and MS-SSIM,
and posterior collapse (KL per latent dimension, active units). FID and KID are in src/fid.py.

torchmetrics is imported inside the functions that need it: it takes seconds to import, and
analyze_failures.py does not use it.
"""

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.batches import iterate_labelled
from src.config import TrainConfig
from src.model import ConvVAE, bits_per_dim, calibrated_log_sigma, gaussian_nll, kl_divergence


@torch.no_grad()
def per_image_stats(model: ConvVAE, images: np.ndarray, batch_size: int, device: torch.device,
                    seed: int = 0, labels: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """For every image: summed squared error with z sampled and with z = mu, and KL (float32, CPU).
    labels: a conditional model's y of each image.

    The sampled z uses a generator seeded with `seed`, so repeated runs give identical numbers.
    """
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {"sse_sampled": [], "sse_mean": [], "kl": []}
    batches = iterate_labelled(images, labels, batch_size, device)
    for x, y in tqdm(batches, total=math.ceil(len(images) / batch_size), desc="evaluating", leave=False):
        mu, logvar = model.encode(x, y)
        z = mu + torch.randn(mu.shape, generator=generator, device=device) * torch.exp(0.5 * logvar)
        out["sse_sampled"].append((model.decode(z, y) - x).pow(2).flatten(1).sum(1))
        out["sse_mean"].append((model.decode(mu, y) - x).pow(2).flatten(1).sum(1))
        out["kl"].append(kl_divergence(mu, logvar).sum(1))
    return {k: torch.cat(v).float().cpu() for k, v in out.items()}


def summarize(stats: dict[str, torch.Tensor], pixels_per_image: int, t: TrainConfig) -> dict[str, dict]:
    """Means over the split, for z sampled (the ELBO) and z = mu.

    The baseline's units, for every model: recon = summed squared error per image, total = recon + KL.
    In nats, for every model: nll = -log N(x | x_hat, sigma^2 I) with the one sigma calibrated to this
    split's error (sigma^2 = its MSE, soft-floored at train.sigma_min), elbo_nats = nll + KL, and bpd
    the same in bits per dimension on the 8-bit scale. beta_loss = the training objective (recon or
    nll, as train.recon_loss) + beta * KL. mse: per pixel and channel; psnr: mean over images of
    10 log10(1 / mse) for pixels in [0, 1].
    """
    kl = stats["kl"].mean().item()
    summary = {}
    for mode in ("sampled", "mean"):
        sse = stats[f"sse_{mode}"].double()
        mse = sse / pixels_per_image
        recon = sse.mean().item()
        log_sigma = calibrated_log_sigma(sse, pixels_per_image, t.sigma_min)
        nll = gaussian_nll(sse, pixels_per_image, log_sigma).mean().item()
        trained_recon = nll if t.recon_loss == "gaussian" else recon
        summary[mode] = {"recon": recon, "kl": kl, "total": recon + kl, "beta_loss": trained_recon + t.beta * kl,
                         "sigma": math.exp(log_sigma.item()), "nll_nats": nll, "elbo_nats": nll + kl,
                         "bpd": bits_per_dim(nll + kl, pixels_per_image), "mse": mse.mean().item(),
                         "psnr": (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item()}
    return summary


# --------------------------------------------------------------------------- reconstruction and latent space

# MS-SSIM at 64x64: the standard 5 scales would shrink images to 4 px, below the 11-px Gaussian window,
# so we keep that window (sigma 1.5, the same as SSIM) and use 3 scales (64, 32, 16 px) with the
# first three of Wang et al.'s five exponents, renormalised to sum to 1.
MS_SSIM_KERNEL = 11
MS_SSIM_BETAS = tuple(b / (0.0448 + 0.2856 + 0.3001) for b in (0.0448, 0.2856, 0.3001))
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a latent unit is active if Cov_x(E[z|x]) > 0.01


def ms_ssim_min_size() -> int:
    """Smallest image side torchmetrics accepts for MS_SSIM_BETAS and MS_SSIM_KERNEL (44 px)."""
    divisor = (len(MS_SSIM_BETAS) - 1) ** 2  # torchmetrics' check: side // divisor > kernel - 1
    return divisor * MS_SSIM_KERNEL


@torch.no_grad()
def posterior_stats(model: ConvVAE, images: np.ndarray, batch_size: int, device: torch.device,
                    labels: np.ndarray | None = None) -> dict[str, torch.Tensor | None]:
    """mu and logvar of every image, and SSIM / MS-SSIM of its reconstruction with z = mu (CPU float32);
    labels: a conditional model's y of each image.

    "ms_ssim" is None when the images are too small for the 3-scale MS-SSIM (see ms_ssim_min_size).
    """
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        structural_similarity_index_measure,
    )
    model.eval()
    with_ms_ssim = images.shape[-1] >= ms_ssim_min_size()
    out = {"mu": [], "logvar": [], "ssim": [], "ms_ssim": []}
    batches = iterate_labelled(images, labels, batch_size, device)
    for x, y in tqdm(batches, total=math.ceil(len(images) / batch_size), desc="SSIM and latents", leave=False):
        mu, logvar = model.encode(x, y)
        x_hat = model.decode(mu, y)
        out["mu"].append(mu)
        out["logvar"].append(logvar)
        out["ssim"].append(structural_similarity_index_measure(x_hat, x, data_range=1.0, reduction="none"))
        if with_ms_ssim:
            out["ms_ssim"].append(multiscale_structural_similarity_index_measure(
                x_hat, x, data_range=1.0, kernel_size=MS_SSIM_KERNEL, betas=MS_SSIM_BETAS, reduction="none"))
    return {k: torch.cat(v).float().cpu() if v else None for k, v in out.items()}


def reconstruction_quality(posterior: dict[str, torch.Tensor | None]) -> dict:
    """Mean SSIM and MS-SSIM over the split (from posterior_stats); MS-SSIM None, with the reason, if too small."""
    ms_ssim = posterior["ms_ssim"]
    return {"ssim": posterior["ssim"].mean().item(),
            "ms_ssim": ms_ssim.mean().item() if ms_ssim is not None else None,
            "ms_ssim_note": None if ms_ssim is not None else
            f"needs images of at least {ms_ssim_min_size()} px (3 scales of an 11-px window)"}


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Latent dimensions whose posterior mean varies across images: Var_x(E[z_j|x]) > threshold.

    A collapsed dimension has q(z_j|x) = N(0, 1) for every x, so its mean is constant (variance 0).
    """
    return int((mu.var(dim=0, correction=0) > threshold).sum())


def latent_usage(mu: torch.Tensor, logvar: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> dict:
    """Posterior-collapse summary: active units, and per dimension the mean KL and Var_x(E[z|x])."""
    return {"active_units": active_units(mu, threshold), "latent_dim": mu.shape[1], "threshold": threshold,
            "kl_per_dim": kl_divergence(mu, logvar).mean(0).tolist(),
            "mu_variance": mu.var(dim=0, correction=0).tolist()}


def plot_kl_per_dim(usage: dict, path: str | Path) -> Path:
    """Bar chart of the mean KL of each latent dimension, largest first, active units highlighted."""
    from matplotlib.figure import Figure  # drawn to a file only: no pyplot, no backend to choose
    from matplotlib.patches import Patch
    kl = np.asarray(usage["kl_per_dim"])
    active = np.asarray(usage["mu_variance"]) > usage["threshold"]
    order = np.argsort(-kl, kind="stable")
    fig = Figure(figsize=(max(6.0, 0.06 * len(kl) + 3), 4), constrained_layout=True)
    ax = fig.subplots()
    colours = np.where(active[order], "tab:blue", "tab:gray")
    ax.bar(np.arange(len(kl)), np.maximum(kl[order], 1e-6), width=0.9, color=colours)  # > 0 for the log scale
    ax.legend(handles=[Patch(color="tab:blue", label=f"active (Var_x E[z|x] > {usage['threshold']})"),
                       Patch(color="tab:gray", label="inactive (collapsed)")])
    ax.set_yscale("log")  # collapsed dimensions sit orders of magnitude below the used ones
    ax.set(xlabel="latent dimension (sorted by KL)", ylabel="mean KL per image (nats, log scale)",
           title=f"KL per latent dimension: {usage['active_units']} of {len(kl)} units active")
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
