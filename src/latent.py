"""The latent space of a trained VAE: posterior means of a split, and an ex-post density to sample from.

A VAE's prior samples come from N(0, I), while the encoder's codes of real images fill only part of
it. Fitting a Gaussian mixture to the training set's posterior means and sampling from it (the
"ex-post density estimation" of Ghosh et al. 2020, RAE; pythae's GaussianMixtureSampler) decodes
codes that lie where the decoder was trained. Fitted results are cached under data.cache_dir as
.npz arrays (src/cache.py), keyed by the checkpoint's bytes and the data.
"""

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.batches import iterate_labelled
from src.cache import cached_arrays
from src.files import file_digest
from src.model import ConvVAE, kl_divergence
from src.threads import timed

GMM_COMPONENTS = 10          # as the RAE paper and pythae
GMM_COVARIANCE = "full"
SAMPLERS = ("prior", "gmm")
TRAVERSE_RANGE = 3.0         # traversals run from -3 to +3 prior standard deviations


@torch.no_grad()
def encode(model: ConvVAE, images: np.ndarray, batch_size: int, device: torch.device,
           desc: str = "encoding", labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) of every image, float32 on the CPU, in order (labels: a conditional model's y)."""
    model.eval()
    mus, logvars = [], []
    batches = iterate_labelled(images, labels, batch_size, device)
    for x, y in tqdm(batches, total=math.ceil(len(images) / batch_size), desc=desc, leave=False):
        with timed(len(x), "encode"):
            mu, logvar = model.encode(x, y)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus).numpy(), torch.cat(logvars).numpy()


# --------------------------------------------------------------------------- Gaussian mixture sampler

def fit_gmm(codes: np.ndarray, components: int = GMM_COMPONENTS, covariance: str = GMM_COVARIANCE,
            seed: int = 0) -> dict[str, np.ndarray]:
    """A Gaussian mixture (scikit-learn) fitted to codes (N, D): weights, means and covariances (full)."""
    from sklearn.mixture import GaussianMixture
    gmm = GaussianMixture(n_components=min(components, len(codes)), covariance_type=covariance,
                          random_state=seed, reg_covar=1e-6).fit(np.asarray(codes, dtype=np.float64))
    covariances = {"full": lambda c: c, "diag": lambda c: np.stack([np.diag(v) for v in c]),
                   "spherical": lambda c: np.stack([v * np.eye(codes.shape[1]) for v in c]),
                   "tied": lambda c: np.repeat(c[None], len(gmm.weights_), axis=0)}[covariance](gmm.covariances_)
    return {"weights": gmm.weights_, "means": gmm.means_, "covariances": covariances}


def sample_gmm(gmm: dict[str, np.ndarray], n: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """n codes (float32) from the mixture: a component by its weight, then mean + T L eps (L L^T = covariance).

    A seeded NumPy generator: the same seed gives the same codes on every machine and device.
    """
    rng = np.random.default_rng(seed)
    weights = gmm["weights"] / gmm["weights"].sum()
    component = rng.choice(len(weights), size=n, p=weights)
    chol = np.linalg.cholesky(gmm["covariances"])
    eps = rng.standard_normal((n, gmm["means"].shape[1])) * temperature
    z = gmm["means"][component] + np.einsum("nij,nj->ni", chol[component], eps)
    return torch.from_numpy(z).float()


def prior_codes(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """n codes from N(0, temperature^2 I), drawn on the CPU from a seeded generator (device-independent)."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed)) * temperature


def training_gmm(model: ConvVAE, checkpoint: str | Path, train_images: np.ndarray, data_id: str,
                 cache_dir: str | Path, batch_size: int, device: torch.device, codes: np.ndarray | None = None,
                 components: int = GMM_COMPONENTS, covariance: str = GMM_COVARIANCE) -> dict[str, np.ndarray]:
    """The mixture fitted to the posterior means of the training images (`codes`, if the caller has
    them already), once per checkpoint and data."""
    codes_of = getattr(model, "codes_of", "")  # e.g. a conditional model's [z | y]: another mixture
    key = {"checkpoint": file_digest(checkpoint), "data": data_id, "components": components,
           "covariance": covariance, "version": 1, **({"codes": codes_of} if codes_of else {})}
    path = Path(cache_dir) / (f"gmm-{key['checkpoint'][:16]}-{data_id[:12]}-{components}{covariance}"
                              f"{'-' + codes_of if codes_of else ''}.npz")

    def fit() -> dict[str, np.ndarray]:
        mu = codes if codes is not None else encode(model, train_images, batch_size, device,
                                                     desc="encoding train for the GMM")[0]
        print(f"fitting a {components}-component {covariance}-covariance Gaussian mixture to "
              f"{len(mu)} posterior means ...")
        return fit_gmm(mu, components, covariance)

    return cached_arrays(path, key, fit)


def latent_codes(sampler: str, n: int, latent_dim: int, seed: int, gmm: dict | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
    """n codes from the prior N(0, T^2 I) or from the fitted mixture (each component's spread scaled by T)."""
    if sampler == "gmm":
        return sample_gmm(gmm, n, seed, temperature)
    return prior_codes(n, latent_dim, seed, temperature)


# --------------------------------------------------------------------------- codes <-> images, paths, traversals

def decode(model: ConvVAE, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images decoded from codes of any leading shape (..., D), on the CPU, shape (..., 3, S, S)."""
    device = model.device
    flat = z.reshape(-1, z.shape[-1])
    images = torch.cat([model.decode(flat[i:i + batch_size].to(device)).cpu() for i in range(0, len(flat), batch_size)])
    return images.reshape(*z.shape[:-1], *images.shape[1:])


def posterior_means(model: ConvVAE, x: torch.Tensor) -> torch.Tensor:
    """mu of images in [0, 1] (N, 3, S, S), on the CPU."""
    return model.encode(x.to(model.device))[0].cpu()


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """`steps` codes from z0 to z1 (both included) as a (steps, D) tensor, for 1-D codes z0, z1 of size D.

    Linear: (1 - t) z0 + t z1. Spherical (slerp, Shoemake 1985; White 2016 for VAEs):
    sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1 with w the angle between z0 and z1, which keeps
    the norm of codes of equal norm (a linear midpoint of two orthogonal unit codes has norm 0.71,
    in a region the prior rarely samples). When sin(w) is ~0 (parallel or opposite codes) or a code
    is ~0, the angle is undefined or the formula unstable, and slerp falls back to the linear path.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (both endpoints), got {steps}")
    return interpolate_at(z0, z1, torch.linspace(0, 1, steps, dtype=torch.float64), spherical)


def interpolate_at(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, spherical: bool = False) -> torch.Tensor:
    """The codes at fractions `t` (T,) of the way from z0 to z1 as interpolate() goes: (T, D); t = 0
    and t = 1 give z0 and z1 exactly (the morph slider of the editor asks for any t)."""
    if z0.dim() != 1 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must be 1-D codes of the same size, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.double(), z1.double()  # float64: the angle of nearly parallel codes needs the precision
    t = t.to(dtype=torch.float64, device=a.device).reshape(-1, 1)
    path = (1 - t) * a + t * b
    if spherical:
        norms = a.norm() * b.norm()
        if norms > 1e-12:
            omega = torch.arccos(((a @ b) / norms).clamp(-1, 1))
            sin_omega = torch.sin(omega)
            if sin_omega > 1e-6:
                path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    path[t[:, 0] == 0], path[t[:, 0] == 1] = a, b  # exact endpoints, whatever the rounding
    return path.to(z0.dtype)


def morph_rows(model: ConvVAE, a: torch.Tensor, b: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear row, slerp row) for one pair; each is (steps + 2, 3, S, S): a, decoded codes, b."""
    device = model.device
    mu = model.encode(torch.stack([a, b]).to(device))[0].cpu()  # interpolate on the CPU: MPS has no float64
    rows = []
    for spherical in (False, True):
        decoded = model.decode(interpolate(mu[0], mu[1], steps, spherical).to(device)).cpu()
        rows.append(torch.cat([a[None], decoded, b[None]]))
    return rows[0], rows[1]


def traversal_codes(start: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """The code `start` (D,) with dimension dims[r] set to each of `values`: (len(dims), len(values), D)."""
    codes = start.repeat(len(dims), len(values), 1)
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    return codes


def dims_by_kl(mu: np.ndarray, logvar: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k latent dimensions with the largest mean KL(q(z_j|x) || N(0, 1)), largest first, with their KL."""
    kl = kl_divergence(torch.from_numpy(mu), torch.from_numpy(logvar)).mean(0).numpy()
    order = np.argsort(-kl, kind="stable")[:k]
    return [(int(d), float(kl[d])) for d in order]
