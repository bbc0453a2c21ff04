"""Per-image evaluation of a trained VAE, shared by evaluate.py and analyze_failures.py."""

import math

import numpy as np
import torch
from tqdm import tqdm

from src.dataset import iterate_batches
from src.model import ConvVAE


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
