"""Disentanglement metrics of a representation against known generative factors, plus linear probes.

codes:   posterior means, (N, D) float.  factors: ground-truth factors, (N, K) float, each factor either
discrete (categorical / binary, integer-valued) or continuous.  Plain numpy + scikit-learn.

- MIG, Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"),
  computed exactly as google-research/disentanglement_lib (evaluation/metrics/mig.py, utils.py): every
  code dim is discretised into 20 equal-width bins, MI(code_i; factor_j) = sklearn mutual_info_score,
  H(factor_j) = mutual_info_score(y, y), and per factor (largest MI - second largest MI) / H; MIG is the
  mean over factors. disentanglement_lib only has discrete factors; here continuous factors are
  discretised into 20 equal-width bins the same way. A constant factor (H = 0) is left out, and reported.
- DCI, Disentanglement / Completeness / Informativeness (Eastwood & Williams 2018, "A Framework for the
  Quantitative Evaluation of Disentangled Representations"). One predictor per factor on the train codes
  gives an importance matrix R (D x K). Disentanglement = sum_i rho_i (1 - H_K(P_i.)), P_ij = R_ij / sum_k
  R_ik, rho_i = sum_j R_ij / sum R. Completeness = sum_j w_j (1 - H_D(P~_.j)), P~_ij = R_ij / sum_i R_ij:
  as in disentanglement_lib's dci.py each factor is weighted by its share of importance w_j = sum_i R_ij /
  sum R (the paper says a plain mean; since tree importances are normalised per factor, every factor with
  any split has the same w_j and the two agree). Also as dci.py: entropies of R + 1e-11.
  Informativeness = mean over factors of the test score: accuracy for discrete factors (as dci.py), R^2
  clipped to [0, 1] for continuous ones (a regressor, not 20-bin classification, so that "close" counts).
  Predictor: disentanglement_lib uses GradientBoostingClassifier() (100 stages of depth-3 trees, one tree
  per class per stage): about 13 min for N_train=6000, D=128 and the 9 face factors on 2 cores
  (extrapolated from one stage). Here: scikit-learn ExtraTreesClassifier / ExtraTreesRegressor, 10 trees,
  max_depth 8, all D features tried at every split, impurity (MDI) importances, random_state=seed.
  Measured at that size on 2 shared cores (axis-aligned code / rotated code / noise): 2.6 / 4.3 / 3.7 s,
  D = 1.00 / 0.23 / 0.05, C = 1.00 / 0.13 / 0.02. Alternatives measured on the same codes: random forest
  (Eastwood & Williams' choice) with max_features="sqrt", 30 trees: 9-10 s and D = 0.64 on the aligned code
  (importance smeared onto noise dims whenever the true dim is not among the candidates); all-feature
  random forest, 5 trees: 8-18 s; GradientBoosting with 10 stages: 51 s; L1 logistic regression / Lasso:
  3-19 s (saga slow to converge) and D = 0.33 on pure noise (sparse weights look disentangled).
- SAP, Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of Disentangled
  Latent Concepts from Unlabeled Observations"), as disentanglement_lib's sap_score.py: score matrix
  (D x K) = squared Pearson correlation on train for continuous factors, test accuracy of
  LinearSVC(C=0.01, class_weight="balanced") on one code dim for discrete factors; SAP = mean over
  factors of (largest - second largest score). Inactive code dims (variance <= 1e-12) score 0 for both
  kinds (sap_score.py does this for continuous factors; for discrete ones it would fit an SVC on a
  constant, whose accuracy is just the frequency of whichever class it happens to predict). Caveats
  kept from the reference: accuracy is not chance-corrected, a one-dim OvR linear SVC cannot isolate the
  middle categories of a 6-way factor, and C=0.01 on raw codes is scale-sensitive; so a perfect code of
  the face factors scores only ~0.55-0.6.
- probe_auc: per binary attribute (NaN = unknown, as CelebA labels cover only some images), ROC AUC of
  a standardised logistic regression from all code dims: how linearly readable each attribute is.

MIG uses the train codes only (disentanglement_lib: 10,000 points); DCI and SAP fit on train, score on test.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import entropy
from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

NUM_BINS = 20            # disentanglement_lib's histogram discretizer for MIG
MAX_DISCRETE_VALUES = 12  # factor inference: integer-valued with at most this many values = discrete
INACTIVE_VAR = 1e-12     # code dims with less variance than this carry nothing (sap_score.py's threshold)
DCI_PREDICTOR = "ExtraTrees(n_estimators=10, max_depth=8, max_features=all), MDI importances"


# ----------------------------------------------------------------------------------------------------
# helpers

def discretize(x: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Each column into num_bins equal-width bins (1..num_bins), exactly as disentanglement_lib."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(x.shape, dtype=np.int64)
    for i in range(x.shape[1]):
        out[:, i] = np.digitize(x[:, i], np.histogram(x[:, i], num_bins)[1][:-1])
    return out


def infer_discrete(factors: np.ndarray, max_values: int = MAX_DISCRETE_VALUES) -> list[bool]:
    """A factor is discrete when all its values are integers and it takes at most max_values of them."""
    factors = np.asarray(factors, dtype=np.float64)
    return [bool(np.all(f == np.round(f)) and len(np.unique(f)) <= max_values) for f in factors.T]


def _constant(factors: np.ndarray) -> np.ndarray:
    return np.ptp(factors, axis=0) == 0


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else 0.0


def _unit(x: float) -> float:
    # Scores lie in [0, 1] mathematically; clip away rounding such as 1 + 2e-16.
    return float(np.clip(x, 0.0, 1.0))


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Per column of p (normalised inside), 1 - entropy in the given base, of p + 1e-11 as dci.py.
    With one row there is nothing to spread over (and base-1 entropy is undefined): 1."""
    return 1.0 - entropy(p + 1e-11, base=base) if base > 1 else np.ones(p.shape[1])


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column, largest minus second largest entry."""
    s = np.sort(matrix, axis=0)
    return s[-1] - s[-2]


# ----------------------------------------------------------------------------------------------------
# MIG

def mig(codes: np.ndarray, factors: np.ndarray, discrete: Sequence[bool],
        num_bins: int = NUM_BINS) -> dict:
    """Mutual Information Gap. Returns {"mig", "gaps" (per factor, None if skipped), "top_dims",
    "mutual_info" (D x K, nats), "skipped" {factor index: reason}}."""
    codes_d = discretize(codes, num_bins)
    factors = np.asarray(factors, dtype=np.float64)
    # Continuous factors are binned like the codes; discrete ones keep their values.
    ys = np.column_stack([f if d else discretize(f[:, None], num_bins)[:, 0]
                          for f, d in zip(factors.T, discrete)])
    D, K = codes_d.shape[1], ys.shape[1]
    m = np.array([[mutual_info_score(ys[:, j], codes_d[:, i]) for j in range(K)] for i in range(D)])
    h = np.array([mutual_info_score(ys[:, j], ys[:, j]) for j in range(K)])
    gaps, skipped = [], {}
    for j, g in enumerate(_top_two_gap(m)):
        if h[j] <= 0:  # constant factor: nothing to capture, and 0/0
            gaps.append(None)
            skipped[j] = "constant factor (zero entropy): left out of MIG"
        else:
            gaps.append(_unit(g / h[j]))
    return {"mig": _mean(gaps), "gaps": gaps, "top_dims": [int(i) for i in np.argmax(m, axis=0)],
            "mutual_info": m, "skipped": skipped}


# ----------------------------------------------------------------------------------------------------
# DCI

def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix R (D codes x K factors), as dci.py."""
    R = np.abs(np.asarray(importance, dtype=np.float64))
    D, K = R.shape
    weights = R if R.sum() > 0 else np.ones_like(R)  # all-zero R: weight codes/factors equally, as dci.py
    per_code = _one_minus_entropy(R.T, K)    # each code's spread over factors
    per_factor = _one_minus_entropy(R, D)    # each factor's spread over codes
    rho = weights.sum(axis=1) / weights.sum()
    w = weights.sum(axis=0) / weights.sum()
    return _unit(np.sum(per_code * rho)), _unit(np.sum(per_factor * w))


def _dci_predictor(is_discrete: bool, seed: int):
    # Extremely randomised trees: one random threshold per feature and node, so trying all D features
    # (which keeps importance off noise dims) stays cheap; depth 8 bounds the cost on noise codes.
    cls = ExtraTreesClassifier if is_discrete else ExtraTreesRegressor
    return cls(n_estimators=10, max_depth=8, max_features=None, random_state=seed)


def dci(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
        test_factors: np.ndarray, discrete: Sequence[bool], seed: int = 0) -> dict:
    """DCI. Returns {"disentanglement", "completeness", "informativeness", "importance" (D x K),
    "informativeness_per_factor", "chance_per_factor", "completeness_per_factor", "skipped"}."""
    D, K = train_codes.shape[1], train_factors.shape[1]
    importance = np.zeros((D, K))
    info, chance, skipped = [None] * K, [None] * K, {}
    for j in range(K):
        y, y_test = train_factors[:, j], test_factors[:, j]
        if np.ptp(y) == 0:
            skipped[j] = "constant factor in train set: left out of DCI"
            continue
        model = _dci_predictor(discrete[j], seed).fit(train_codes, y)
        importance[:, j] = model.feature_importances_
        pred = model.predict(test_codes)
        if discrete[j]:
            info[j] = float(np.mean(pred == y_test))
            values, counts = np.unique(y, return_counts=True)  # chance = always the train majority
            chance[j] = float(np.mean(y_test == values[np.argmax(counts)]))
        else:
            info[j] = _unit(r2_score(y_test, pred))  # below 0 = worse than the mean: no information
            chance[j] = 0.0
    used = [j for j in range(K) if j not in skipped]
    d, c = dci_from_importance(importance[:, used])
    per_factor_c = [None] * K
    for j, cj in zip(used, _one_minus_entropy(importance[:, used], D)):
        per_factor_c[j] = _unit(cj)
    return {"disentanglement": d, "completeness": c, "informativeness": _mean(info),
            "importance": importance, "informativeness_per_factor": info, "chance_per_factor": chance,
            "completeness_per_factor": per_factor_c, "skipped": skipped}


# ----------------------------------------------------------------------------------------------------
# SAP

def sap_score_matrix(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                     test_factors: np.ndarray, discrete: Sequence[bool], seed: int = 0) -> np.ndarray:
    """(D x K) SAP scores: r^2 on train (continuous factors), one-dim LinearSVC test accuracy (discrete)."""
    D, K = train_codes.shape[1], train_factors.shape[1]
    scores = np.zeros((D, K))
    mu = train_codes - train_codes.mean(axis=0)
    var_mu = mu.var(axis=0, ddof=1)
    active = var_mu > INACTIVE_VAR
    for j in range(K):
        y = train_factors[:, j]
        if not discrete[j]:
            yc = y - y.mean()
            cov = mu.T @ yc / (len(y) - 1)
            var_y = yc.var(ddof=1)
            if var_y > 0:
                scores[active, j] = cov[active] ** 2 / (var_mu[active] * var_y)
            continue
        for i in np.flatnonzero(active):
            svc = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            svc.fit(train_codes[:, i:i + 1], y)
            scores[i, j] = np.mean(svc.predict(test_codes[:, i:i + 1]) == test_factors[:, j])
    return scores


def sap(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
        test_factors: np.ndarray, discrete: Sequence[bool], seed: int = 0) -> dict:
    """SAP score. Returns {"sap", "gaps" (per factor, None if skipped), "score_matrix", "skipped"}."""
    K = train_factors.shape[1]
    const = _constant(train_factors)
    used = [j for j in range(K) if not const[j]]
    scores = np.zeros((train_codes.shape[1], K))
    scores[:, used] = sap_score_matrix(train_codes, train_factors[:, used], test_codes,
                                       test_factors[:, used], [discrete[j] for j in used], seed)
    gaps = [None if const[j] else _unit(g) for j, g in enumerate(_top_two_gap(scores))]
    skipped = {j: "constant factor in train set: left out of SAP" for j in range(K) if const[j]}
    return {"sap": _mean(gaps), "gaps": gaps, "score_matrix": scores, "skipped": skipped}


# ----------------------------------------------------------------------------------------------------
# top level

def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def disentanglement_scores(train_codes: np.ndarray, train_factors: np.ndarray, test_codes: np.ndarray,
                           test_factors: np.ndarray, discrete: Sequence[bool] | None = None,
                           seed: int = 0, factor_names: Sequence[str] | None = None) -> dict:
    """MIG (on train), DCI and SAP (fit on train, scored on test) as one JSON-serialisable dict.

    discrete=None infers each factor's kind (see infer_discrete). Every top-level score is a float in
    [0, 1]; per_factor holds each factor's MIG gap, SAP gap, DCI completeness and informativeness (with the
    chance level: majority-class accuracy, or R^2 = 0), None where the factor was skipped (constant).
    """
    train_codes, test_codes = _as_2d("train_codes", train_codes), _as_2d("test_codes", test_codes)
    train_factors, test_factors = _as_2d("train_factors", train_factors), _as_2d("test_factors", test_factors)
    if len(train_codes) != len(train_factors) or len(test_codes) != len(test_factors):
        raise ValueError("codes and factors must have the same number of rows")
    if train_codes.shape[1] != test_codes.shape[1] or train_factors.shape[1] != test_factors.shape[1]:
        raise ValueError("train and test must have the same number of code dims and factors")
    D, K = train_codes.shape[1], train_factors.shape[1]
    if D < 2:
        raise ValueError("MIG and SAP compare the two best code dims: need at least 2")
    if discrete is None:
        discrete = infer_discrete(np.vstack([train_factors, test_factors]))
    discrete = [bool(d) for d in discrete]
    names = list(factor_names) if factor_names is not None else [f"factor_{j}" for j in range(K)]
    if len(discrete) != K or len(names) != K:
        raise ValueError(f"discrete and factor_names need one entry per factor ({K})")
    if _constant(train_factors).all():
        raise ValueError("every factor is constant in the train set: nothing to score")

    m = mig(train_codes, train_factors, discrete)
    d = dci(train_codes, train_factors, test_codes, test_factors, discrete, seed)
    s = sap(train_codes, train_factors, test_codes, test_factors, discrete, seed)
    per_factor = {
        name: {"discrete": discrete[j], "mig": m["gaps"][j], "mig_top_dim": m["top_dims"][j],
               "sap": s["gaps"][j], "dci_completeness": d["completeness_per_factor"][j],
               "dci_informativeness": d["informativeness_per_factor"][j],
               "dci_informativeness_chance": d["chance_per_factor"][j]}
        for j, name in enumerate(names)}
    skipped: dict[str, list[str]] = {}
    for part in (m, d, s):
        for j, reason in part["skipped"].items():
            skipped.setdefault(names[j], []).append(reason)
    return {"mig": m["mig"], "dci_disentanglement": d["disentanglement"],
            "dci_completeness": d["completeness"], "dci_informativeness": d["informativeness"],
            "sap": s["sap"], "dci_predictor": DCI_PREDICTOR, "num_train": len(train_codes),
            "num_test": len(test_codes), "seed": int(seed), "per_factor": per_factor,
            "skipped_factors": {name: "; ".join(reasons) for name, reasons in skipped.items()}}


# ----------------------------------------------------------------------------------------------------
# linear probes for partially labelled binary attributes (CelebA)

def probe_auc(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray,
              test_labels: np.ndarray, names: Sequence[str], min_known: int = 10, seed: int = 0) -> dict:
    """ROC AUC of a standardised logistic-regression probe per binary attribute (label > 0 = positive,
    so {0, 1} and CelebA's {-1, 1} both work; NaN = unknown, rows left out). Attributes with fewer than
    min_known known rows on either side, or only one class on either side, are skipped with a reason.
    Returns {"auc": {name: float}, "mean_auc": float | None, "num_known": {name: [train, test]},
    "skipped": {name: reason}}."""
    train_codes, test_codes = np.asarray(train_codes, np.float64), np.asarray(test_codes, np.float64)
    train_labels = np.asarray(train_labels, dtype=np.float64).reshape(len(train_codes), -1)
    test_labels = np.asarray(test_labels, dtype=np.float64).reshape(len(test_codes), -1)
    if train_labels.shape[1] != len(names) or test_labels.shape[1] != len(names):
        raise ValueError(f"need one label column per name ({len(names)})")
    auc, known, skipped = {}, {}, {}
    for j, name in enumerate(names):
        tr, te = ~np.isnan(train_labels[:, j]), ~np.isnan(test_labels[:, j])
        known[name] = [int(tr.sum()), int(te.sum())]
        y_tr, y_te = train_labels[tr, j] > 0, test_labels[te, j] > 0
        if tr.sum() < min_known or te.sum() < min_known:
            skipped[name] = f"too few known labels (train {tr.sum()}, test {te.sum()}; need {min_known})"
        elif y_tr.all() or not y_tr.any():
            skipped[name] = "only one class among the known train labels"
        elif y_te.all() or not y_te.any():
            skipped[name] = "only one class among the known test labels (AUC undefined)"
        else:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
            probe.fit(train_codes[tr], y_tr)
            auc[name] = float(roc_auc_score(y_te, probe.decision_function(test_codes[te])))
    return {"auc": auc, "mean_auc": float(np.mean(list(auc.values()))) if auc else None,
            "num_known": known, "skipped": skipped}
