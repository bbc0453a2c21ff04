"""Attributes of images as 0/1 indicators, and which labelled images are held out of fitting.

Labels come from CelebA's attribute list (40 binary attributes, possibly for only some images: NaN
where unknown) or from the synthetic faces' nine factors (categorical, binary and continuous). Every
consumer (the failure analysis, latent editing, the edit judge) sees them through binarize().
"""

import difflib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from src.dataset import ImageSplit
from src.errors import UserError

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
