"""Attribute edits in the latent space: along which direction, how far, and what else they change.

Directions, per attribute indicator, from the posterior means mu of the labelled training images:
- mean:        mean mu of images with the attribute minus mean mu of images without it;
- normal:      the unit normal of a logistic regression of the attribute on mu (InterFaceGAN,
               Shen et al. 2020, uses a linear SVM's the same way);
- conditional: the mean difference with the normals of the --keep attributes projected out, so
               that the latent classifiers of the kept attributes do not move (InterFaceGAN's
               conditional manipulation, which projects from the normal; here the normal moves faces
               along directions of little variance that the decoder hardly draws).
How far: a fixed strength s (mu + s * direction), or a target probability P: every code moves along
its direction until the latent classifier gives P (1 - P to remove), in closed form since the
classifier is linear, so a face that already half-smiles moves less than a frowning one.

Whether an edit works is the independent judge's call (src/judge.py): success (the judge's decision
moves to the intended side), and preservation (the fraction of (image, other attribute) pairs whose
decision does not change, over the attributes the judge reads reliably).
"""

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from src.attributes import indicators
from src.cache import cached_arrays
from src.dataset import ImageSplit
from src.errors import UserError
from src.files import file_digest
from src.latent import decode, encode

METHODS = ("mean", "normal", "conditional")
LABEL = "label"              # a conditional model's edit: set the attribute's label in y (src/latent.py's codes)
LABEL_STRENGTH = 2.0         # a label edit's default value: past the labels' 1, chosen by measurement
                             # (docs/experiments/conditional-screen.md)
DEFAULT_METHOD, DEFAULT_TARGET = "conditional", 0.999   # chosen by measurement: docs/experiments/edits.md
RELIABLE_ACCURACY = 0.85     # preservation counts the attributes the judge reads at least this accurately
CLASSIFIER_C = 1.0           # inverse L2 strength of the latent logistic regressions (scikit-learn's default)


@dataclass
class LatentAttributes:
    """Every attribute's mean-difference direction and linear classifier on mu (arrays over A attributes)."""
    names: list[str]
    mean: np.ndarray         # (A, D) mean mu with - mean mu without
    counts: np.ndarray       # (A, 2) images with, without
    weights: np.ndarray      # (A, D) logistic regression: logit = mu @ w + b
    biases: np.ndarray       # (A,)
    conditioned: list[str] = field(default_factory=list)  # a conditional model's labels, the codes' last K entries

    def index(self, name: str) -> int:
        return self.names.index(name)

    def label_column(self, name: str) -> int:
        """Where `name`'s label sits in a conditional model's codes [z | y]."""
        if name not in self.conditioned:
            raise UserError(f"{name} is not one of this model's labels ({', '.join(self.conditioned) or 'none'}); "
                            "edit it along a direction instead (--method conditional)")
        return self.mean.shape[1] - len(self.conditioned) + self.conditioned.index(name)

    def with_labels(self, conditioned: list[str]) -> "LatentAttributes":
        """The same directions and classifiers for codes [z | y] of a conditional model: zero in the y
        part, so direction edits move z only and a label edit moves y only."""
        pad = lambda a: np.concatenate([a, np.zeros((len(a), len(conditioned)))], axis=1)
        return LatentAttributes(self.names, pad(self.mean), self.counts, pad(self.weights), self.biases,
                                list(conditioned))

    def logits(self, name: str, codes: np.ndarray) -> np.ndarray:
        a = self.index(name)
        return codes @ self.weights[a] + self.biases[a]


@dataclass
class Edit:
    """How to edit: a direction method, and a fixed strength or a target probability."""
    method: str = "mean"
    strength: float | None = 1.0
    target: float | None = None
    keep: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        if self.method == LABEL:
            return f"label to {self.strength:g}"
        how = f"to p = {self.target:g}" if self.target is not None else f"strength {self.strength:g}"
        keep = f", keeping {' '.join(self.keep)}" if self.method == "conditional" and self.keep else ""
        return f"{self.method} {how}{keep}"


# --------------------------------------------------------------------------- fitting

def fit_classifiers(codes: np.ndarray, labels: np.ndarray, c: float = CLASSIFIER_C) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression per indicator column on the images whose label is known, with balanced
    class weights (so p = 0.5 is a balanced decision even for rare attributes). NaN rows where a
    column has only one side."""
    from sklearn.linear_model import LogisticRegression
    weights = np.full((labels.shape[1], codes.shape[1]), np.nan)
    biases = np.full(labels.shape[1], np.nan)
    for a, column in enumerate(labels.T):
        known = ~np.isnan(column)
        if len(np.unique(column[known])) < 2:
            continue
        fit = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(codes[known], column[known])
        weights[a], biases[a] = fit.coef_[0], fit.intercept_[0]
    return weights, biases


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


def latent_attributes(model, checkpoint: str | Path, train: ImageSplit, fit_rows: np.ndarray,
                      cache_dir: str | Path, batch_size: int, device: torch.device,
                      model_labels: np.ndarray | None = None) -> LatentAttributes:
    """Directions and classifiers of every attribute, fitted on the training rows `fit_rows` (the
    held-out ones excluded), once per checkpoint and data (cached under cache_dir). Attributes
    without both sides among the fitted rows are left out. model_labels: a conditional model's y of
    every training image (its mu depends on them when its encoder sees them)."""
    labels, names = indicators(train)
    rows_digest = hashlib.sha256(np.asarray(fit_rows, dtype=np.int64).tobytes()).hexdigest()[:16]
    key = {"checkpoint": file_digest(checkpoint), "data": train.data_id, "names": names, "rows": rows_digest,
           "c": CLASSIFIER_C, "version": 2,
           **({"y": hashlib.sha256(model_labels.tobytes()).hexdigest()[:16]} if model_labels is not None else {})}
    path = Path(cache_dir) / (f"directions-{key['checkpoint'][:16]}-{train.data_id[:12]}-{rows_digest[:8]}"
                              f"{'-y' if model_labels is not None else ''}.npz")

    def compute() -> dict[str, np.ndarray]:
        mu, _ = encode(model, train.images, batch_size, device, desc="encoding train for attribute directions",
                       labels=model_labels)
        codes, fit_labels = mu[fit_rows].astype(np.float64), labels[fit_rows]
        mean, counts = mean_difference(codes, fit_labels)
        labelled = int((~np.isnan(fit_labels).all(axis=1)).sum())
        print(f"fitting {len(names)} latent attribute classifiers on the codes of {labelled} labelled training "
              "images ...")
        weights, biases = fit_classifiers(codes, fit_labels)
        return {"mean": mean, "counts": counts, "weights": weights, "biases": biases}

    arrays = cached_arrays(path, key, compute)
    usable = [i for i in range(len(names))
              if np.isfinite(arrays["mean"][i]).all() and np.isfinite(arrays["weights"][i]).all()]
    return LatentAttributes([names[i] for i in usable], arrays["mean"][usable], arrays["counts"][usable],
                            arrays["weights"][usable], arrays["biases"][usable])


# --------------------------------------------------------------------------- directions and steps

def project_out(vector: np.ndarray, others: np.ndarray) -> np.ndarray:
    """`vector` minus its least-squares projection on the span of the rows of `others` (k, D)."""
    if len(others) == 0:
        return vector
    coefficients, *_ = np.linalg.lstsq(others.T, vector, rcond=None)
    return vector - others.T @ coefficients


def direction(attrs: LatentAttributes, name: str, method: str, keep: Sequence[str] = ()) -> np.ndarray:
    """The (D,) direction that adds `name`: the mean difference, the classifier's unit normal, or the
    mean difference made orthogonal to the normals of the `keep` attributes, so that their latent
    classifiers do not move (conditional; it starts from the mean difference, not the normal, which
    moves faces in directions the decoder hardly draws)."""
    a = attrs.index(name)
    if method == "mean":
        return attrs.mean[a]
    if method == "normal":
        return attrs.weights[a] / np.linalg.norm(attrs.weights[a])
    if name in keep:
        raise UserError(f"{name} cannot be edited and kept at once; keep only other attributes")
    kept = attrs.weights[[attrs.index(k) for k in keep]] if keep else np.empty((0, attrs.mean.shape[1]))
    conditional = project_out(attrs.mean[a], kept)
    if np.linalg.norm(conditional) < 1e-6 * np.linalg.norm(attrs.mean[a]):
        raise UserError(f"the direction of {name} lies in the span of the kept attributes' directions; "
                        "keep fewer attributes")
    return conditional


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def steps_to_target(codes: np.ndarray, weights: np.ndarray, bias: float, towards: np.ndarray,
                    probability: np.ndarray | float) -> np.ndarray:
    """How far (N,) each code must move along `towards` for the classifier sigmoid(z @ w + b) to give
    `probability` (closed form: the logit is linear along any line)."""
    rate = float(towards @ weights)
    if abs(rate) < 1e-9:
        raise UserError("this direction does not change the attribute's latent classifier; use another method")
    target_logit = np.log(probability) - np.log1p(-np.asarray(probability, dtype=np.float64))
    return (target_logit - (codes @ weights + bias)) / rate


def edited(codes: np.ndarray, attrs: LatentAttributes, name: str, how: Edit, add: np.ndarray | bool = True
           ) -> np.ndarray:
    """Codes (N, D) edited to add `name` (where `add`) or remove it (elsewhere), as `how` says. A label
    edit sets the label to how.strength S where it adds and to 1 - S where it removes (S = 1: the
    label's own values; a little more reaches past them)."""
    add = np.broadcast_to(np.asarray(add, dtype=bool), (len(codes),))
    if how.method == LABEL:
        moved = np.array(codes, dtype=np.float64)
        moved[:, attrs.label_column(name)] = np.where(add, how.strength, 1 - how.strength)
        return moved
    d = direction(attrs, name, how.method, how.keep)
    if how.target is None:
        step = np.where(add, how.strength, -how.strength)
    else:
        a = attrs.index(name)
        step = steps_to_target(codes, attrs.weights[a], attrs.biases[a], d,
                               np.where(add, how.target, 1 - how.target))
    return codes + step[:, None] * d


def lacks(codes: np.ndarray, attrs: LatentAttributes, name: str, method: str) -> np.ndarray:
    """Which faces (N,) lack `name`, so that an edit adds it: a label edit reads each face's own label in
    y, a direction edit the latent classifier on z."""
    if method == LABEL:
        return codes[:, attrs.label_column(name)] < 0.5
    return attrs.logits(name, codes) < 0


def sweep(codes: np.ndarray, attrs: LatentAttributes, name: str, how: Edit, steps: int
          ) -> tuple[np.ndarray, list[str]]:
    """Codes (N, steps, D) for a figure and their column labels: strengths from -S to +S, or target
    probabilities from 1 - P to P evenly spaced in logit, or labels from 1 - S to S."""
    if how.method == LABEL:
        values = np.linspace(1 - how.strength, how.strength, steps)
        swept = np.repeat(np.asarray(codes, dtype=np.float64)[:, None, :], steps, axis=1)
        swept[:, :, attrs.label_column(name)] = values
        return swept, [f"y = {v:.2f}" for v in values]
    d = direction(attrs, name, how.method, how.keep)
    if how.target is None:
        strengths = np.linspace(-how.strength, how.strength, steps)
        labels = ["s = 0" if abs(s) < 1e-9 else f"{s:+.2f}" for s in strengths]
        return codes[:, None, :] + strengths[None, :, None] * d, labels
    a = attrs.index(name)
    probabilities = 1 / (1 + np.exp(-np.linspace(-logit(how.target), logit(how.target), steps)))
    moves = [steps_to_target(codes, attrs.weights[a], attrs.biases[a], d, p) for p in probabilities]
    return codes[:, None, :] + np.stack(moves, 1)[:, :, None] * d, [f"p = {p:.3g}" for p in probabilities]


def slider_codes(codes: np.ndarray, attrs: LatentAttributes, values: dict[str, float], method: str,
                 target: float | None = DEFAULT_TARGET, strength: float | None = None) -> np.ndarray:
    """Codes (N, D) moved by several attribute sliders at once, each value v in [-1, 1] (0: unchanged).

    With a target P (the editor's default), v > 0 moves each face the fraction v of the way to where
    the latent classifier gives P, v < 0 the fraction -v of the way to 1 - P: the slider's ends are
    edited() to P and to 1 - P, its middle is the face as it is. With a strength S (target None),
    v moves v * S directions. Every slider's step is measured from the unedited codes and the steps
    add up; the conditional method keeps the other sliders' attributes (their classifiers do not
    move), so every attribute ends where its own slider says whatever the others do. The label method
    (a conditional model) moves the label the fraction |v| of the way from the face's own to S or
    1 - S (S = strength, default LABEL_STRENGTH), and nothing else."""
    moved = codes.astype(np.float64, copy=True)
    for name, v in values.items():
        if not -1 <= v <= 1:
            raise UserError(f"slider value of {name} must be between -1 and 1, got {v}")
        if v == 0:
            continue
        if method == LABEL:  # from the face's own label to S (v = 1) or to 1 - S (v = -1)
            s = strength or LABEL_STRENGTH
            column, end = attrs.label_column(name), s if v > 0 else 1 - s
            moved[:, column] += abs(v) * (end - codes[:, column])
            continue
        d = direction(attrs, name, method, tuple(k for k in values if k != name))
        if target is None:
            step = np.full(len(codes), v * strength)
        else:
            a = attrs.index(name)
            step = abs(v) * steps_to_target(codes, attrs.weights[a], attrs.biases[a], d,
                                            target if v > 0 else 1 - target)
        moved += step[:, None] * d
    return moved


# --------------------------------------------------------------------------- judging an edit

def score_edit(decide: Callable[[np.ndarray], np.ndarray], codes: np.ndarray, labels: np.ndarray, column: int,
               others: Sequence[int], edit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
    """Success and preservation of one edit of held-out codes.

    decide(codes) -> the judge's 0/1 decisions (N, A) on the decoded images; labels: their 0/1/NaN
    labels of attribute `column`; edit(codes, add) -> edited codes, adding where `add`, removing
    elsewhere. Success: the decision on `column` moves to the intended side (from the unedited
    reconstruction's, which is the baseline); preservation: the decisions on `others` stay as they were.
    """
    known = ~np.isnan(labels)
    codes, has = codes[known], labels[known] == 1
    after_codes = edit(codes, ~has)
    before, after = decide(codes), decide(after_codes)
    hits, base = after[:, column] != has, before[:, column] != has
    others = [c for c in others if c != column]
    kept = (before[:, others] == after[:, others]).mean() if others else math.nan
    nan_mean = lambda x: float(x.mean()) if len(x) else math.nan
    return {"success": nan_mean(hits), "success_add": nan_mean(hits[~has]), "success_remove": nan_mean(hits[has]),
            "baseline": nan_mean(base), "preservation": float(kept),
            "latent_distance": float(np.linalg.norm(after_codes - codes, axis=1).mean()),
            "images": int(len(has)), "images_with": int(has.sum())}


def judge_decider(model, judge) -> Callable[[np.ndarray], np.ndarray]:
    """codes -> the judge's decisions (probability > 0.5) on their decoded images."""
    from src.judge import judge_probabilities
    return lambda codes: (judge_probabilities(judge, decode(model, torch.from_numpy(codes).float())) > 0.5).numpy()


def score_edits(model, judge, attrs: LatentAttributes, codes: np.ndarray, labels: np.ndarray, label_names: list[str],
                  scores: dict[str, dict], edits: dict[str, dict[str, Edit]]) -> tuple[list[str], dict]:
    """Every attribute's edits ({attribute: {label: Edit}}) judged on held-out codes (N, D) with their
    0/1/NaN labels (N, A): (the attributes preservation counts, {attribute: judge accuracy and
    {label: score_edit()}}). Preservation counts the attributes the judge reads with balanced
    accuracy of at least RELIABLE_ACCURACY (`scores`: src.judge.accuracy's)."""
    reliable = [i for i, n in enumerate(label_names) if scores[n]["accuracy"] >= RELIABLE_ACCURACY]
    decide = judge_decider(model, judge)
    results = {}
    for name, methods in edits.items():
        a = label_names.index(name)
        results[name] = {"judge_accuracy": scores[name]["accuracy"],
                         "judge_balanced_accuracy": scores[name]["balanced_accuracy"], "methods": {}}
        for label, how in methods.items():
            edit = lambda z, add, how=how: edited(z, attrs, name, how, add)
            results[name]["methods"][label] = score_edit(decide, codes, labels[:, a], a, reliable, edit)
    return [label_names[i] for i in reliable], results
