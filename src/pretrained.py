"""A trained model in one small file that samples and edits without any dataset.

The file holds the averaged (EMA) weights in float16, the config, the GMM sampler's parameters,
the attribute directions with their latent classifiers, and the latent dimensions ranked by KL:
everything inference.py and the editor would otherwise fit on the training data. It holds plain
tensors and values only and loads with torch.load(weights_only=True); its SHA-256 is recorded in
pretrained/SHA256SUMS and checked before it is read. tools/export_model.py writes both.
"""

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from src.config import Config, config_from_dict
from src.editing import LatentAttributes
from src.errors import CheckpointError, ConfigError
from src.files import atomic_write, file_digest
from src.model import ConvVAE, build_model

PRETRAINED_FORMAT = "conv-vae-pretrained/1"
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
SUMS = "SHA256SUMS"          # sha256sum's format: "<hex digest>  <file name>" per line
SHIPPED = PRETRAINED_DIR / "celeba64.pt"   # the model that ships with the repo (docs/model-card.md)
RESULTS_DIR = "results/pretrained"         # where scripts write what they make with a pretrained model
ATTRIBUTE_ARRAYS = ("mean", "counts", "weights", "biases")


class PretrainedError(CheckpointError):
    """A pretrained file that is missing, damaged or not of this format."""


@dataclass
class Pretrained:
    """What a pretrained file gives: the model and everything fitted on its training data."""
    model: ConvVAE                       # float32 weights, eval mode, on the CPU
    cfg: Config                          # the config it was trained with
    gmm: dict[str, np.ndarray]           # weights, means, covariances (src/latent.py's sampler)
    attrs: LatentAttributes              # directions and latent classifiers (src/editing.py)
    dims: list[tuple[int, float]]        # latent dimensions by mean KL, largest first
    info: dict                           # how it was made (epoch, ...)
    path: Path


def portable(cfg: Config) -> Config:
    """The config as it ships: how the model was trained, without where its data, caches and outputs
    lived on the exporting machine or how many threads it ran (they become the defaults, and the
    results go to RESULTS_DIR)."""
    default = Config()
    data = replace(cfg.data, root=default.data.root, cache_dir=default.data.cache_dir,
                   num_workers=default.data.num_workers)
    train = replace(cfg.train, threads=default.train.threads, device=default.train.device)
    return replace(cfg, data=data, train=train, paths=replace(default.paths, results_dir=RESULTS_DIR))


def pack(model: ConvVAE, cfg: Config, gmm: dict[str, np.ndarray], attrs: LatentAttributes,
         dims: list[tuple[int, float]], info: dict) -> dict:
    """The file's contents: float tensors of the weights in float16, the config made portable, the
    rest as tensors and plain values."""
    weights = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
               for k, v in model.state_dict().items()}
    return {"format": PRETRAINED_FORMAT, "config": portable(cfg).to_dict(), "weights": weights,
            "gmm": {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in gmm.items()},  # Cholesky needs it
            "attributes": {"names": list(attrs.names),
                           **{k: torch.from_numpy(np.asarray(getattr(attrs, k))) for k in ATTRIBUTE_ARRAYS}},
            "dims": [[int(d), float(kl)] for d, kl in dims], "info": dict(info)}


def save_pretrained(contents: dict, path: str | Path) -> str:
    """Write the file atomically and record its SHA-256 in SHA256SUMS beside it; returns the digest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(contents, f))
    digest = file_digest(path)
    sums = _read_sums(path.parent / SUMS)
    sums[path.name] = digest
    text = "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))
    atomic_write(path.parent / SUMS, lambda f: f.write(text.encode()))
    return digest


def _read_sums(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    lines = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {parts[1].lstrip("*"): parts[0] for parts in lines if len(parts) == 2}


def recorded_digest(path: Path) -> str | None:
    """The SHA-256 that SHA256SUMS beside `path` records for it (None: not recorded)."""
    return _read_sums(path.parent / SUMS).get(path.name)


def is_pretrained(path: Path) -> bool:
    """Whether `path` is a pretrained file: one that the SHA256SUMS beside it records."""
    return recorded_digest(path) is not None


@functools.lru_cache(maxsize=2)
def _cached_load(path: Path, digest: str) -> Pretrained:
    return load_pretrained(path, digest)


def shipped_parts(path: Path) -> Pretrained | None:
    """The pretrained file's contents when `path` is one (read once per process), else None."""
    path = Path(path)
    return _cached_load(path.resolve(), file_digest(path)) if is_pretrained(path) else None


def load_pretrained(path: str | Path, digest: str | None = None) -> Pretrained:
    """The pretrained file at `path`, checked against its recorded SHA-256 before it is read (`digest`:
    the file's, when the caller has just computed it)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"pretrained model '{path}' not found")
    expected, digest = recorded_digest(path), digest or file_digest(path)
    if expected is None:
        raise PretrainedError(f"'{path}' has no SHA-256 in {path.parent / SUMS}; export it again "
                              "(python -m tools.export_model) or use a file recorded there")
    if digest != expected:
        raise PretrainedError(f"'{path}' is damaged or replaced: its SHA-256 is {digest[:16]}..., "
                              f"{SUMS} records {expected[:16]}...; restore the file (git checkout -- {path})")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a recorded file that still cannot be read: say so in one line
        raise PretrainedError(f"'{path}' is unreadable ({type(e).__name__}); restore or re-export it") from None
    if not isinstance(contents, dict) or contents.get("format") != PRETRAINED_FORMAT:
        raise PretrainedError(f"'{path}' is not a pretrained model of this repo (no '{PRETRAINED_FORMAT}' marker)")
    return _unpack(contents, path)


def _unpack(contents: dict, path: Path) -> Pretrained:
    try:
        cfg = config_from_dict(contents["config"])
    except (KeyError, ConfigError) as e:
        raise PretrainedError(f"'{path}' has no usable config ({e}); re-export it with this version") from None
    model = build_model(cfg.model, cfg.data.image_size)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in contents["weights"].items()})
    a = contents["attributes"]
    attrs = LatentAttributes(list(a["names"]), *(a[k].numpy().astype(np.float64 if k != "counts" else np.int64)
                                                  for k in ATTRIBUTE_ARRAYS))
    gmm = {k: v.numpy().astype(np.float64) for k, v in contents["gmm"].items()}
    dims = [(int(d), float(kl)) for d, kl in contents["dims"]]
    return Pretrained(model.eval(), cfg, gmm, attrs, dims, dict(contents["info"]), path)
