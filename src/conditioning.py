"""The labels of a conditional VAE (model.conditional): which attributes and images it trains on, the
labels of images that have none, and the model seen through its codes [z | y].

A conditional model's decoder takes y, the chosen attributes as 0/1 indicators (src/attributes.py).
Training uses the images whose chosen labels are all known, minus the held-out tenth of the labelled
training images that the edit judge scores (so no image the judge scores shaped the model). When the
validation split has no labels (the CelebA subset labels part of its training split only), one in
VALIDATION_EVERY of the remaining training images validates instead and is left out of training.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from src.attributes import binarize, held_out_mask, indicators
from src.batches import iterate_batches
from src.config import ALL_LABELS
from src.dataset import ImageSplit
from src.editing import LatentAttributes, latent_attributes
from src.errors import ConfigError, UserError
from src.judge import Judge, judge_probabilities, trained_judge
from src.model import ConvVAE

VALIDATION_EVERY = 20   # when the val split has no labels: every 20th usable training image validates


@dataclass
class LabelledSet:
    """Images with their labels y (N, K) in {0, 1}, float32."""
    images: np.ndarray
    labels: np.ndarray
    description: str

    def __len__(self) -> int:
        return len(self.images)


def condition_names(requested: list[str], train: ImageSplit, root: str) -> list[str]:
    """model.conditional resolved against the training labels' indicator names ("all": every one)."""
    if train.attributes is None or not train.attribute_names:
        raise ConfigError(f"model.conditional needs attribute labels, but the training images under '{root}' have "
                          "none (a plain folder); use CelebA with list_attr_celeba.txt or data.dataset=synthetic, "
                          "or set model.conditional=[]")
    _, names = indicators(train)
    if requested == [ALL_LABELS]:
        return names
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise ConfigError(f"model.conditional: no label '{unknown[0]}' in the training data; choose from "
                          f"{', '.join(names)} (or [\"all\"])")
    return list(requested)


def labelled_sets(names: list[str], train: ImageSplit, val: ImageSplit, predicted: np.ndarray | None = None
                  ) -> tuple[LabelledSet, LabelledSet]:
    """(training set, validation set) with labels for `names`: see the module's docstring. predicted:
    labels (N, K) for the training images whose own are missing (train.unlabelled=labeller); they
    train, never validate."""
    all_labels, all_names = indicators(train)
    columns = [all_names.index(name) for name in names]
    labels = all_labels[:, columns]
    missing, held = np.isnan(labels).any(axis=1), held_out_mask(all_labels)
    known, guessed = ~missing & ~held, np.zeros(len(labels), dtype=bool)
    if predicted is not None:  # the judge's held-out images stay out, whatever labels they lack
        guessed = missing & ~held
        labels = np.where(guessed[:, None], predicted, labels)
    val_labels = _labels_of(val, train, columns)
    if val_labels is not None:
        rows = np.flatnonzero(known | guessed)
        validation = LabelledSet(val.images, val_labels, f"the val split ({len(val)} images)")
    else:
        candidates = np.flatnonzero(known)
        val_rows = candidates[VALIDATION_EVERY // 2::VALIDATION_EVERY]
        rows = np.union1d(np.setdiff1d(candidates, val_rows), np.flatnonzero(guessed))
        validation = LabelledSet(train.images[val_rows], labels[val_rows].astype(np.float32),
                                 f"1 in {VALIDATION_EVERY} labelled training images ({len(val_rows)}; the val split "
                                 "has no labels)")
    if len(rows) == 0 or len(validation) == 0:
        raise ConfigError(f"model.conditional: too few images with all of {', '.join(names)} labelled "
                          f"({len(rows)} to train, {len(validation)} to validate)")
    training = LabelledSet(train.images[rows], labels[rows].astype(np.float32),
                           f"{len(rows)} of {len(train)} training images (labelled"
                           f"{f', {guessed.sum()} of them by the labeller' if guessed.any() else ''}; the judge's "
                           "held-out tenth left out)")
    return training, validation


def _labels_of(split: ImageSplit, train: ImageSplit, columns: list[int]) -> np.ndarray | None:
    """The split's labels binarised like the training labels, when every image has them."""
    if split.attributes is None or np.isnan(split.attributes).all():
        return None
    labels = binarize(split.attributes, split.attribute_names, train.attributes)[0][:, columns]
    return None if np.isnan(labels).any() else labels.astype(np.float32)


def image_labels(images: np.ndarray, names: list[str], train: ImageSplit, cache_dir: str | Path,
                 device: torch.device) -> np.ndarray:
    """0/1 labels `names` (N, K) of uint8 images that have none, e.g. photos or the subset's test split:
    the decisions of the labeller, a CNN trained once per data set on its labelled training images
    (src/judge.py's network with another seed, so it is not the judge that scores the edits)."""
    all_labels, all_names = indicators(train)
    labeller = trained_judge(train.images, all_labels, all_names, train.data_id, cache_dir, device, role="labeller")
    probabilities = judge_probabilities(labeller, images).numpy()
    return (probabilities[:, [all_names.index(name) for name in names]] > 0.5).astype(np.float32)


def labels_for(names: list[str], split: ImageSplit, train: ImageSplit, cache_dir: str | Path,
               device: torch.device) -> np.ndarray:
    """A conditional model's y (N, K) for every image of `split`: its own labels where all K are known
    (binarised like the training labels), the labeller's decisions for the rest."""
    all_names = indicators(train)[1]
    columns = [all_names.index(name) for name in names]
    if split.attributes is None:
        return image_labels(split.images, names, train, cache_dir, device)
    known = binarize(split.attributes, split.attribute_names, train.attributes)[0][:, columns]
    missing = np.isnan(known).any(axis=1)
    if missing.any():
        known[missing] = image_labels(split.images[np.flatnonzero(missing)], names, train, cache_dir, device)
    return known.astype(np.float32)


def drawn_labels(names: list[str], train: ImageSplit, n: int, seed: int = 0, present: Sequence[str] = (),
                 absent: Sequence[str] = ()) -> np.ndarray:
    """n label rows (n, K) drawn with replacement from the training images whose labels are all known
    (and who have the `present` attributes and lack the `absent` ones): samples of a conditional model
    then follow the joint distribution of the training labels, given those."""
    labels = matching_rows(labelled_rows(names, train), names, present, absent)
    return labels[np.random.default_rng(seed).integers(0, len(labels), n)]


def matching_rows(rows: np.ndarray, names: list[str], present: Sequence[str] = (),
                  absent: Sequence[str] = ()) -> np.ndarray:
    """The label rows (N, K) with every `present` label 1 and every `absent` one 0."""
    for wanted, value in ((present, 1), (absent, 0)):
        for name in wanted:
            if name not in names:
                raise UserError(f"{name} is not one of this model's labels ({', '.join(names)})")
            rows = rows[rows[:, names.index(name)] == value]
    if not len(rows):
        raise UserError(f"no training image has {' and '.join([*present, *(f'no {a}' for a in absent)])}: "
                        "ask for fewer attributes")
    return rows


def labelled_rows(names: list[str], train: ImageSplit) -> np.ndarray:
    """The training labels (rows with all of `names` known), as float32."""
    all_labels, all_names = indicators(train)
    labels = all_labels[:, [all_names.index(name) for name in names]]
    return labels[~np.isnan(labels).any(axis=1)].astype(np.float32)


class LabelledCodes(nn.Module):
    """A conditional VAE seen through its codes [z | y] (D + K numbers), so that every tool that moves
    codes (morphs, the GMM sampler, edits, the editor) works on it unchanged: encode(x) gives mu and
    the labeller's labels of x side by side, decode([z | y]) draws z with the labels y. A label edit
    moves the y part (src/editing.py's "label" method); the other labels stay the photo's own."""

    def __init__(self, vae: ConvVAE, labeller: Judge, columns: list[int], names: list[str]):
        super().__init__()
        self.vae, self.labeller, self.columns, self.names = vae, labeller, columns, list(names)
        self.latent_dim, self.conditions = vae.latent_dim + vae.conditions, 0
        self.codes_of = "zy"  # what its codes are, for the caches fitted to them (src/latent.py)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The labeller's 0/1 decisions on images in [0, 1]: (N, K)."""
        return (torch.sigmoid(self.labeller(x.to(self.device)))[:, self.columns] > 0.5).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """([mu | y], [logvar | 0]) of images in [0, 1], y the given labels or else the labeller's."""
        y = self.labels(x) if y is None else y.to(self.device).float()
        mu, logvar = self.vae.encode(x, y)
        return torch.cat([mu, y], dim=1), torch.cat([logvar, torch.zeros_like(y)], dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        d = self.vae.latent_dim
        return self.vae.decode(codes[:, :d], codes[:, d:])


def labelled_codes(vae: ConvVAE, names: list[str], train: ImageSplit, cache_dir: str | Path) -> LabelledCodes:
    """LabelledCodes of a conditional VAE, with the labeller of its training data (trained once, cached)."""
    all_labels, all_names = indicators(train)
    labeller = trained_judge(train.images, all_labels, all_names, train.data_id, cache_dir, vae.device,
                             role="labeller")
    return LabelledCodes(vae, labeller, [all_names.index(name) for name in names], names).eval()


def code_attributes(model, checkpoint: str | Path, train: ImageSplit, fit_rows: np.ndarray, cache_dir: str | Path,
                    batch_size: int) -> LatentAttributes:
    """The attribute directions and latent classifiers of a model's training codes (src/editing.py); a
    conditional model's (LabelledCodes) are fitted on z alone, with the labeller's labels, and leave
    the codes' labels to label edits."""
    if not isinstance(model, LabelledCodes):
        return latent_attributes(model, checkpoint, train, fit_rows, cache_dir, batch_size, model.device)
    y = torch.cat([model.labels(x) for x in iterate_batches(train.images, batch_size, model.device)]).cpu().numpy()
    return latent_attributes(model.vae, checkpoint, train, fit_rows, cache_dir, batch_size, model.device,
                             model_labels=y).with_labels(model.names)
