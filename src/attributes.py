"""Attributes of images as 0/1 indicators, and the latent directions that add or remove them.

Labels come from CelebA's attribute list (40 binary attributes, possibly for only some images: NaN
where unknown) or from the synthetic faces' nine factors (categorical, binary and continuous). Every
consumer (the failure analysis, latent editing, the edit judge) sees them through binarize().
"""

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from src.dataset import ImageSplit
from src.errors import UserError
from src.latent import cached_arrays, encode, file_digest
from src.model import ConvVAE

MAX_CATEGORIES = 12    # integer attributes with at most this many values get one indicator per value
HOLD_OUT_EVERY = 10    # every 10th labelled training image is held out (of the edit judge's training, of probes)


def binarize(attributes: np.ndarray, names: Sequence[str],
             reference: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """0/1 indicator columns (NaN where unknown) and their names.

    Binary attributes (values in {0, 1}) stay as they are; integer attributes with at most
    MAX_CATEGORIES values become one indicator per value ('hair_style=2', one-vs-rest); any other
    numeric attribute becomes 'name>median'. The values and medians come from `reference` (e.g. the
    training split's labels, so that held-out images are labelled the same way), by default from
    `attributes` itself. Columns with no known reference value are dropped.
    """
    reference = attributes if reference is None else reference
    columns, out_names = [], []
    for j, name in enumerate(names):
        col, ref = attributes[:, j].astype(np.float64), reference[:, j].astype(np.float64)
        known = ~np.isnan(col)
        values = np.unique(ref[~np.isnan(ref)])
        if len(values) == 0:
            continue
        if set(values.tolist()) <= {0.0, 1.0}:
            columns.append(col)
            out_names.append(name)
        elif np.all(values == np.round(values)) and len(values) <= MAX_CATEGORIES:
            for v in values:
                columns.append(np.where(known, (col == v).astype(np.float64), np.nan))
                out_names.append(f"{name}={int(v)}")
        else:
            median = np.median(ref[~np.isnan(ref)])
            columns.append(np.where(known, (col > median).astype(np.float64), np.nan))
            out_names.append(f"{name}>median")
    matrix = np.stack(columns, axis=1) if columns else np.empty((len(attributes), 0))
    return matrix, out_names


def indicators(split: ImageSplit, reference: ImageSplit | None = None) -> tuple[np.ndarray, list[str]]:
    """binarize() of a split's labels (categories and medians from `reference`, e.g. the training
    split); a split without labels is a UserError saying so."""
    if split.attributes is None or not split.attribute_names:
        raise UserError("this checkpoint's data has no attribute labels (CelebA's list_attr_celeba.txt, or "
                        "the synthetic faces' factors): attribute editing needs them")
    return binarize(split.attributes, split.attribute_names,
                    None if reference is None else reference.attributes)


def held_out_mask(labels: np.ndarray) -> np.ndarray:
    """True for the labelled images held out of fitting (the edit judge, linear probes): every
    HOLD_OUT_EVERY-th one. Used where a split's labels cover only training images (the CelebA subset)."""
    labelled = np.flatnonzero(~np.isnan(labels).all(axis=1))
    mask = np.zeros(len(labels), dtype=bool)
    mask[labelled[::HOLD_OUT_EVERY]] = True
    return mask


@dataclass
class HeldOut:
    """Labelled images kept out of fitting (edit judge, probes): rows of the split, or of the training set."""
    on_split: bool              # rows index the evaluated split (else the training split)
    rows: np.ndarray
    labels: np.ndarray          # their 0/1/NaN indicators, binarised like the training labels
    fit_rows: np.ndarray        # the training rows that fitting may use
    description: str


def held_out(split_name: str, split: ImageSplit, train: ImageSplit) -> HeldOut:
    """The evaluated split when it has labels (the synthetic test split); else the held-out tenth of
    the labelled training images (the CelebA subset labels part of its train split only)."""
    labels, _ = indicators(train)
    if split_name != "train" and split.attributes is not None and not np.isnan(split.attributes).all():
        return HeldOut(True, np.arange(len(split)), indicators(split, reference=train)[0], np.arange(len(train)),
                       f"the {split_name} split ({len(split)} images)")
    mask = held_out_mask(labels)
    return HeldOut(False, np.flatnonzero(mask), labels[mask], np.flatnonzero(~mask),
                   f"the held-out tenth of the labelled training images ({mask.sum()}; the {split_name} split "
                   "has no labels)")


def resolve(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested attribute names, checked; an unknown one is a UserError listing the choices."""
    for name in requested:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"unknown attribute '{name}'; {hint}available: {', '.join(available)}")
    return list(requested)


def mean_difference(codes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per indicator column: mean code of images with it minus mean code of images without it.

    codes (N, D); labels (N, A) of 0/1/NaN. Images whose label is unknown are left out. Returns the
    directions (A, D) and the counts (A, 2) of images with and without; a direction with an empty
    side is NaN.
    """
    directions = np.full((labels.shape[1], codes.shape[1]), np.nan)
    counts = np.zeros((labels.shape[1], 2), dtype=np.int64)
    for a, column in enumerate(labels.T):
        with_it, without = codes[column == 1], codes[column == 0]
        counts[a] = len(with_it), len(without)
        if len(with_it) and len(without):
            directions[a] = with_it.mean(0) - without.mean(0)
    return directions, counts


def attribute_directions(model: ConvVAE, checkpoint: str | Path, train: ImageSplit, cache_dir: str | Path,
                         batch_size: int, device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """Every attribute's direction from the training set's posterior means, once per checkpoint and data.

    Returns ({name: direction (D,) float32}, {name: [images with, images without]}); attributes with
    an empty side are left out.
    """
    labels, names = indicators(train)
    key = {"checkpoint": file_digest(checkpoint), "data": train.data_id, "names": names, "version": 1}
    path = Path(cache_dir) / f"directions-{key['checkpoint'][:16]}-{train.data_id[:12]}.npz"

    def compute() -> dict[str, np.ndarray]:
        mu, _ = encode(model, train.images, batch_size, device, desc="encoding train for attribute directions")
        directions, counts = mean_difference(mu.astype(np.float64), labels)
        return {"directions": directions, "counts": counts}

    arrays = cached_arrays(path, key, compute)
    usable = [i for i, name in enumerate(names) if np.isfinite(arrays["directions"][i]).all()]
    return ({names[i]: torch.from_numpy(arrays["directions"][i]).float() for i in usable},
            {names[i]: arrays["counts"][i].tolist() for i in usable})
