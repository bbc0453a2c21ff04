"""The model behind the face editor's page: what is fitted once (directions, the GMM, dimensions by KL),
the requests the page sends, and the Studio that answers them with src/'s model code, one forward
pass at a time. src/editor.py speaks HTTP around it."""

import base64
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from src.attributes import held_out, resolve
from src.conditioning import LabelledCodes, code_attributes, labelled_rows, matching_rows
from src.config import Config
from src.dataset import load_split
from src.editing import DEFAULT_METHOD, DEFAULT_TARGET, LABEL, METHODS, LatentAttributes, slider_codes
from src.errors import UserError
from src.faces import PHOTO_FORMATS, describe, model_input, open_photo, small_face_warning
from src.images import to_float, to_uint8
from src.latent import (
    SAMPLERS,
    TRAVERSE_RANGE,
    decode,
    dims_by_kl,
    encode,
    interpolate_at,
    latent_codes,
    posterior_means,
    training_gmm,
    traversal_codes,
)
from src.pretrained import shipped_parts
from src.threads import timed

MAX_SAMPLES = 64                 # faces per sample grid
KL_IMAGES = 2000                 # test images whose mean KL ranks the latent dimensions
SHOWN = 5                        # sliders the Edit tab starts with
FIRST_SHOWN = ("Smiling", "Eyeglasses", "Male", "Wearing_Hat", "Blond_Hair",   # CelebA (docs/editing.md)
               "glasses", "hat", "smile>median", "face_width>median", "hair_colour=0")  # the synthetic faces


# --------------------------------------------------------------------------- what the page needs, fitted once

@dataclass
class Fitted:
    """What the training data gives the page: directions, the GMM, the dimensions by mean KL (largest first)."""
    attrs: LatentAttributes | None
    gmm: dict | None
    dims: list[tuple[int, float | None]]
    notes: list[str] = field(default_factory=list)
    label_rows: np.ndarray | None = None  # a conditional model: the training labels its prior samples draw from


def fit(model, cfg: Config, checkpoint: Path) -> Fitted:
    """Directions and the mixture as inference.py fits them (cached under data.cache_dir, so only the
    first start of a checkpoint fits them), and the dimensions ranked on up to KL_IMAGES test images.
    Without training data or labels the page still samples, morphs and traverses, and says why."""
    device, bs = model.device, cfg.train.batch_size
    attrs, gmm, notes = None, None, []
    try:
        train, test = load_split(cfg, "train"), load_split(cfg, "test")
    except UserError as e:
        notes.append(f"no edits, no GMM sampler and dimensions unranked: the training data is not readable ({e})")
        return Fitted(None, None, [(d, None) for d in range(model.latent_dim)], notes)
    gmm = training_gmm(model, checkpoint, train.images, train.data_id, cfg.data.cache_dir, bs, device)
    try:
        held = held_out("test", test, train)  # inference.py's default split: the same cached directions
        attrs = code_attributes(model, checkpoint, train, held.fit_rows, cfg.data.cache_dir, bs)
    except UserError as e:
        notes.append(f"no edits: {e}")
    ranked = test if len(test) else train
    rows = np.linspace(0, len(ranked) - 1, min(KL_IMAGES, len(ranked))).astype(int)
    mu, logvar = encode(model, np.asarray(ranked.images[rows]), bs, device, desc="ranking latent dimensions by KL")
    label_rows = labelled_rows(model.names, train) if isinstance(model, LabelledCodes) else None
    return Fitted(attrs, gmm, dims_by_kl(mu, logvar, model.latent_dim), notes, label_rows)


def fitted_for(model, cfg: Config, checkpoint: Path) -> Fitted:
    """What a pretrained file carries (no dataset needed), else fit() on the training data."""
    shipped = shipped_parts(checkpoint)
    if shipped is not None:
        return Fitted(shipped.attrs, shipped.gmm, shipped.dims)
    return fit(model, cfg, checkpoint)


def first_shown(names: list[str]) -> list[str]:
    """The attributes the Edit tab starts with: the docs' five, where the data has them, then the first others."""
    chosen = [n for n in FIRST_SHOWN if n in names][:SHOWN]
    return chosen + [n for n in names if n not in chosen][:SHOWN - len(chosen)]


# --------------------------------------------------------------------------- images in memory

def png(image: torch.Tensor) -> bytes:
    """A [0, 1] image (3, S, S) as PNG bytes, built in memory (fast compression: these are tiny)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def data_url(image: torch.Tensor) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


# --------------------------------------------------------------------------- requests

class SampleRequest(BaseModel):
    sampler: Literal[SAMPLERS] = "prior"
    temperature: float = Field(1.0, gt=0, le=3)
    seed: int = Field(0, ge=0, lt=2**32)
    n: int = Field(16, ge=1, le=MAX_SAMPLES)
    present: list[str] = Field(default_factory=list, max_length=64)   # a conditional model: generate with...
    absent: list[str] = Field(default_factory=list, max_length=64)    # ... and without


class PickRequest(SampleRequest):
    index: int = Field(0, ge=0, lt=MAX_SAMPLES)


class EditRequest(BaseModel):
    values: dict[str, float] = Field(default_factory=dict, max_length=256)
    method: Literal[(*METHODS, LABEL)] = DEFAULT_METHOD
    target: float | None = Field(DEFAULT_TARGET, gt=0.5, lt=1)   # None: strength
    strength: float | None = Field(None, gt=0, le=10)


class MorphRequest(BaseModel):
    t: float = Field(ge=0, le=1)


class TraverseRequest(BaseModel):
    dim: int = Field(ge=0)
    value: float = Field(ge=-TRAVERSE_RANGE, le=TRAVERSE_RANGE)


# --------------------------------------------------------------------------- the model behind the page

class Studio:
    """The model and what was fitted, behind one lock: one forward pass at a time (2 cores gain nothing
    from two at once, and a lock needs no argument about thread safety)."""

    def __init__(self, model, cfg: Config, fitted: Fitted, align: bool):
        self.model, self.cfg, self.fitted, self.align = model, cfg, fitted, align
        self.model_lock = threading.Lock()
        self.photo_lock = threading.Lock()  # one photo decoded at a time: a 64-MP photo takes ~200 MB

    def decode(self, codes: np.ndarray | torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(codes, dtype=torch.float32)
        with self.model_lock, torch.inference_mode(), timed(len(z), "decode"):  # train.threads=auto tunes on it
            return decode(self.model, z)

    def probabilities(self, code: np.ndarray) -> dict[str, float]:
        attrs = self.fitted.attrs
        if attrs is None:
            return {}
        logits = code @ attrs.weights.T + attrs.biases
        return {n: round(float(p), 4) for n, p in zip(attrs.names, 1 / (1 + np.exp(-logits)))}

    def photo(self, data: bytes, name: str) -> tuple[np.ndarray, dict]:
        """An uploaded photo's code (encoded once, here) and what the page shows of it."""
        size, crop = self.cfg.data.image_size, self.cfg.data.center_crop
        with self.photo_lock:
            array, face = model_input(open_photo(data, name, PHOTO_FORMATS), name, size, crop, self.align)
        x = to_float(array[None])
        with self.model_lock, torch.inference_mode():
            code = posterior_means(self.model, x)[0].double().numpy()
            reconstruction = decode(self.model, torch.from_numpy(code[None]).float())[0]
        if face is None:
            note = f"{name}: the picture's centre, not aligned (this model was trained on unaligned faces)"
        else:
            note = "; ".join(filter(None, [describe(face, name), small_face_warning(face, name, size, crop)]))
        return code, {"input": data_url(x[0]), "reconstruction": data_url(reconstruction), "note": note,
                      "probabilities": self.probabilities(code)}

    def codes(self, request: SampleRequest) -> torch.Tensor:
        if request.sampler == "gmm" and self.fitted.gmm is None:
            raise UserError("the GMM sampler needs the training data, which this server could not read; use prior")
        codes = latent_codes(request.sampler, request.n, self.model.latent_dim, request.seed, self.fitted.gmm,
                             request.temperature)
        rows, asked = self.fitted.label_rows, request.present or request.absent
        if rows is None:
            if asked:
                raise UserError("generating with or without attributes needs a conditional model")
            return codes
        if request.sampler == "prior" or asked:  # labels as in the training data (that match the request)
            rows = matching_rows(rows, self.fitted.attrs.conditioned, request.present, request.absent)
            codes[:, -rows.shape[1]:] = torch.from_numpy(rows[np.random.default_rng(request.seed).integers(
                0, len(rows), request.n)])
        return codes

    def generated(self, request: PickRequest) -> tuple[np.ndarray, dict]:
        if request.index >= request.n:
            raise UserError(f"index {request.index} is not among the {request.n} samples")
        code = self.codes(request)[request.index].double().numpy()
        image = data_url(self.decode(code[None])[0])
        note = (f"generated: {request.sampler} sample {request.index + 1} of {request.n}, seed {request.seed}, "
                f"temperature {request.temperature:g}")
        return code, {"input": image, "reconstruction": image, "note": note, "probabilities": self.probabilities(code)}

    def edit(self, code: np.ndarray, request: EditRequest) -> tuple[torch.Tensor, dict[str, float]]:
        if self.fitted.attrs is None:
            raise UserError("this server has no attribute directions: " + " ".join(self.fitted.notes))
        attrs = self.fitted.attrs
        resolve(list(request.values), attrs.names)
        if request.target is None and request.strength is None:
            raise UserError("give a target probability or a strength")
        moved = slider_codes(code[None], attrs, request.values, request.method, request.target, request.strength)[0]
        return self.decode(moved[None])[0], self.probabilities(moved)

    def morph(self, a: np.ndarray, b: np.ndarray, t: float) -> torch.Tensor:
        path = interpolate_at(torch.from_numpy(a), torch.from_numpy(b), torch.tensor([t]), spherical=True)
        return self.decode(path)[0]

    def traverse(self, start: np.ndarray | None, dim: int, value: float) -> torch.Tensor:
        if dim >= self.model.latent_dim:
            raise UserError(f"dimension {dim} does not exist: the latent has {self.model.latent_dim}")
        start = torch.zeros(self.model.latent_dim) if start is None else torch.from_numpy(start).float()
        return self.decode(traversal_codes(start, [dim], torch.tensor([value]))[0])[0]
