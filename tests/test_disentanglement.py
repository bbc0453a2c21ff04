"""MIG / DCI / SAP / probe AUC on constructed codes with known answers (src/disentanglement.py).

Factors are drawn like the synthetic faces' (src/synthetic.py): three categorical, three continuous, two
binary, one categorical. Thresholds are measured values with a margin. This fixture (N_train=3000,
N_test=500, 14 dims): aligned MIG 0.985, DCI D = C = I = 1.00, SAP 0.55; rotated MIG 0.09, D 0.26,
SAP 0.06; noise MIG 0.001, D 0.007, C 0.035, SAP 0.009, informativeness 0.271 vs chance 0.272.
Other seeds of the same construction (without the inactive dim) gave aligned SAP 0.55-0.63, rotated
MIG 0.05-0.09, D 0.22-0.34, SAP 0.04-0.06.
"""

import json
import math
import warnings

import numpy as np
import pytest

from src.disentanglement import dci_from_importance, disentanglement_scores, infer_discrete, mig, probe_auc, sap
from src.synthetic import FACTOR_NAMES, generate_faces

DISCRETE = [True, True, True, False, False, False, True, True, True]
N_TRAIN, N_TEST = 3000, 500
SCORES = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap")


def face_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Factors distributed as in src/synthetic.py, in FACTOR_NAMES order."""
    return np.column_stack([rng.integers(6, size=n), rng.integers(6, size=n), rng.integers(4, size=n),
                            rng.random(n), rng.random(n), rng.uniform(-1, 1, n),
                            rng.random(n) < 0.2, rng.random(n) < 0.15, rng.integers(6, size=n)]).astype(float)


def scores(codes: np.ndarray, factors: np.ndarray, **kw) -> dict:
    # Inactive (constant) code dims are part of every case: they must not warn or give NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return disentanglement_scores(codes[:N_TRAIN], factors[:N_TRAIN], codes[N_TRAIN:], factors[N_TRAIN:],
                                      factor_names=FACTOR_NAMES, **kw)


@pytest.fixture(scope="module")
def cases() -> dict:
    """aligned: the factors themselves, rescaled/shifted per dim, shuffled, plus 4 noise and 1 constant
    dims; rotated: that code times a random orthogonal matrix; noise: independent Gaussians."""
    rng = np.random.default_rng(0)
    factors = face_factors(N_TRAIN + N_TEST, rng)
    n = len(factors)
    codes = np.column_stack([factors, rng.normal(size=(n, 4)), np.zeros((n, 1))])
    codes = codes * rng.uniform(0.5, 3.0, codes.shape[1]) + rng.uniform(-2.0, 2.0, codes.shape[1])
    perm = rng.permutation(codes.shape[1])
    codes = codes[:, perm]
    rotation, _ = np.linalg.qr(rng.normal(size=(codes.shape[1],) * 2))
    noise = rng.normal(size=codes.shape)
    noise[:, 0] = 1.0  # an inactive dim here too
    return {"factors": factors, "dim_of_factor": np.argsort(perm)[:9],
            "aligned": scores(codes, factors), "rotated": scores(codes @ rotation, factors),
            "noise": scores(noise, factors)}


def test_aligned_code_scores_high(cases):
    r = cases["aligned"]
    assert r["mig"] > 0.95 and r["dci_disentanglement"] > 0.95 and r["dci_completeness"] > 0.95
    assert r["dci_informativeness"] > 0.95
    # SAP (as disentanglement_lib) reads each discrete factor with a one-dim linear SVC: a 6-way factor on
    # one axis is only about half recoverable that way, so even a perfect code scores ~0.55-0.63 here.
    assert r["sap"] > 0.45
    for j, name in enumerate(FACTOR_NAMES):
        f = r["per_factor"][name]
        assert f["mig"] > 0.95 and f["mig_top_dim"] == cases["dim_of_factor"][j]
        assert f["discrete"] == DISCRETE[j]
        if not f["discrete"]:
            assert f["sap"] > 0.95  # r^2 of the exact copy is 1, of the others ~0


def test_rotated_code_is_entangled(cases):
    a, r = cases["aligned"], cases["rotated"]
    assert r["mig"] < 0.2 and r["sap"] < 0.15 and r["dci_disentanglement"] < 0.5
    for key in ("mig", "dci_disentanglement", "sap"):
        assert r[key] < a[key] - 0.4
    # The information is still there, just mixed: well above what noise gives.
    assert r["dci_informativeness"] > cases["noise"]["dci_informativeness"] + 0.2


def test_noise_code_scores_near_zero(cases):
    r = cases["noise"]
    assert r["mig"] < 0.02 and r["sap"] < 0.03
    # An unused (constant) dim makes every factor look slightly concentrated on the other 13:
    # completeness >= 1 - log(13) / log(14) = 0.028 even for noise.
    assert r["dci_disentanglement"] < 0.05 and r["dci_completeness"] < 0.08
    per = r["per_factor"].values()
    chance = np.mean([f["dci_informativeness_chance"] for f in per])
    assert abs(r["dci_informativeness"] - chance) < 0.03
    assert all(f["dci_informativeness"] < f["dci_informativeness_chance"] + 0.08 for f in per)
    # Discrete factors score accuracy, so chance is the majority rate (80% wear no glasses), not 0.
    assert r["per_factor"]["glasses"]["dci_informativeness"] == pytest.approx(0.8, abs=0.05)


def test_outputs_are_plain_floats_in_unit_interval_and_json(cases):
    for name in ("aligned", "rotated", "noise"):
        r = cases[name]
        json.dumps(r)
        for key in SCORES:
            assert type(r[key]) is float and 0.0 <= r[key] <= 1.0, (name, key)
        for f in r["per_factor"].values():
            for key in ("mig", "sap", "dci_completeness", "dci_informativeness"):
                assert type(f[key]) is float and 0.0 <= f[key] <= 1.0
        assert r["num_train"] == N_TRAIN and r["num_test"] == N_TEST and r["dci_predictor"]
        assert r["skipped_factors"] == {}


def test_same_seed_same_result():
    rng = np.random.default_rng(1)
    factors = face_factors(N_TRAIN + N_TEST, rng)
    codes = np.column_stack([factors[:, :5], rng.normal(size=(len(factors), 3))])
    first, second = scores(codes, factors, seed=3), scores(codes, factors, seed=3)
    assert first == second


def test_mig_hand_computed():
    # Full grid of a (binary) x b (4 values), so a and b are exactly independent. Code: dim 0 copies a,
    # dim 1 = [b >= 2] (1 of b's 2 bits), dim 2 constant. Factor c is constant.
    a, b = np.meshgrid(np.arange(2), np.arange(4), indexing="ij")
    a, b = np.tile(a.ravel(), 25).astype(float), np.tile(b.ravel(), 25).astype(float)
    codes = np.column_stack([3.0 * a - 1.0, (b >= 2).astype(float), np.full_like(a, 7.0)])
    factors = np.column_stack([a, b, np.full_like(a, 2.0)])
    r = mig(codes, factors, discrete=[True, True, True])
    # a: MI(dim0) = H(a), every other MI 0 -> gap 1. b: MI(dim1) = ln 2, H(b) = ln 4, others 0 -> 0.5.
    assert r["gaps"][:2] == pytest.approx([1.0, 0.5], abs=1e-12)
    assert r["gaps"][2] is None and 2 in r["skipped"]
    assert r["mig"] == pytest.approx(0.75, abs=1e-12)
    assert r["mutual_info"][1, 1] == pytest.approx(math.log(2))
    assert r["top_dims"][:2] == [0, 1]


def test_mig_bins_continuous_factor():
    # A continuous factor and an affine copy of it fall into the same 20 equal-width bins: gap 1.
    y = np.random.default_rng(0).random(1000)
    codes = np.column_stack([2.0 * y + 5.0, np.zeros_like(y)])
    assert mig(codes, y[:, None], discrete=[False])["mig"] == pytest.approx(1.0)


def test_dci_from_importance_matrix():
    # Identity-like (plus an unused code): each code explains one factor, each factor one code.
    d, c = dci_from_importance(np.vstack([np.eye(3), np.zeros((1, 3))]))
    assert d == pytest.approx(1.0, abs=1e-8) and c == pytest.approx(1.0, abs=1e-8)
    d, c = dci_from_importance(np.ones((4, 3)))
    assert d == pytest.approx(0.0, abs=1e-8) and c == pytest.approx(0.0, abs=1e-8)
    # One code explains both factors: complete, not disentangled.
    d, c = dci_from_importance(np.array([[1.0, 1.0], [0.0, 0.0]]))
    assert d == pytest.approx(0.0, abs=1e-8) and c == pytest.approx(1.0, abs=1e-8)
    # By hand: code 0 = (3, 1) -> 1 - H2(.75, .25) = 0.18872, weight 4/5; code 1 = (0, 1) -> 1, weight 1/5.
    # Factor 0 on code 0 only -> 1, weight 3/5; factor 1 split evenly -> 0, weight 2/5 (dci.py's weights;
    # a plain mean would give 0.5).
    d, c = dci_from_importance(np.array([[3.0, 1.0], [0.0, 1.0]]))
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert d == pytest.approx(0.8 * (1 - h) + 0.2, abs=1e-8)
    assert c == pytest.approx(0.6, abs=1e-8)
    assert dci_from_importance(np.zeros((3, 2))) == pytest.approx((0.0, 0.0), abs=1e-8)


def test_sap_hand_computed():
    # Discrete: a, b independent balanced bits (full grid); dim 0 = a, dim 1 = b. The SVC on the own dim is
    # exact (1.0); on the other dim it can only reach 0.5. Gap 0.5 each.
    a = np.tile([0.0, 1.0, 0.0, 1.0], 250)
    b = np.tile([0.0, 0.0, 1.0, 1.0], 250)
    grid = np.column_stack([a, b])
    r = sap(grid, grid, grid, grid, discrete=[True, True])
    assert r["score_matrix"] == pytest.approx(np.array([[1.0, 0.5], [0.5, 1.0]]))
    assert r["sap"] == pytest.approx(0.5)
    # Continuous: x1, x2 orthogonal, zero mean, equal norm; codes x1 and x1 + x2 -> r^2 = 1 and 0.5.
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 500))
    x1 -= x1.mean()
    x2 -= x2.mean()
    x2 -= (x2 @ x1) / (x1 @ x1) * x1
    x2 *= np.linalg.norm(x1) / np.linalg.norm(x2)
    codes = np.column_stack([x1, x1 + x2, np.zeros_like(x1)])
    r = sap(codes, x1[:, None], codes, x1[:, None], discrete=[False])
    assert r["score_matrix"][:, 0] == pytest.approx([1.0, 0.5, 0.0])
    assert r["sap"] == pytest.approx(0.5)


def test_constant_factor_is_skipped_with_reason():
    rng = np.random.default_rng(2)
    factors = face_factors(N_TRAIN + N_TEST, rng)
    factors[:, 7] = 0.0  # nobody wears a hat
    r = scores(factors[:, [0, 3, 5]] + 0.0, factors)
    assert "hat" in r["skipped_factors"] and "constant" in r["skipped_factors"]["hat"]
    assert r["per_factor"]["hat"]["mig"] is None and r["per_factor"]["hat"]["sap"] is None
    assert all(0.0 <= r[k] <= 1.0 for k in SCORES)
    json.dumps(r)


def test_infer_discrete_on_synthetic_faces():
    _, factors = generate_faces(200, seed=0, image_size=16)
    assert infer_discrete(factors) == DISCRETE
    assert infer_discrete(np.arange(13.0)[:, None]) == [False]  # integers, but too many values
    assert infer_discrete(np.arange(12.0)[:, None]) == [True]


def test_bad_input_raises():
    z, f = np.zeros((10, 3)), np.zeros((10, 2))
    with pytest.raises(ValueError, match="same number of rows"):
        disentanglement_scores(z, f[:5], z, f)
    z_nan = z.copy()
    z_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        disentanglement_scores(z_nan, f, z, f)


def test_probe_auc():
    rng = np.random.default_rng(0)
    n_train, n_test = 2000, 500
    codes = rng.normal(size=(n_train + n_test, 8))
    codes[:, 5] = 0.0  # an inactive dim
    linear = np.where(2.0 * codes[:, 2] + 0.3 > 0, 1.0, -1.0)  # CelebA-style -1 / 1
    random = rng.integers(2, size=len(codes)).astype(float)
    single = np.full(len(codes), np.nan)
    single[::3] = 1.0  # known only for a third, and always positive
    few = np.full(len(codes), np.nan)
    few[:6] = [0, 1, 0, 1, 0, 1]
    few[n_train:n_train + 6] = [0, 1, 0, 1, 0, 1]
    labels = np.column_stack([linear, random, single, few])
    labels[rng.random(len(codes)) < 0.3, :2] = np.nan  # 30% unknown
    names = ["linear", "random", "single", "few"]
    r = probe_auc(codes[:n_train], labels[:n_train], codes[n_train:], labels[n_train:], names)

    assert r["auc"]["linear"] > 0.99
    assert abs(r["auc"]["random"] - 0.5) < 0.1
    assert "one class" in r["skipped"]["single"] and "too few" in r["skipped"]["few"]
    assert set(r["auc"]) == {"linear", "random"}
    assert r["mean_auc"] == pytest.approx((r["auc"]["linear"] + r["auc"]["random"]) / 2)
    known = ~np.isnan(labels[:, 0])
    assert r["num_known"]["linear"] == [int(known[:n_train].sum()), int(known[n_train:].sum())]
    json.dumps(r)

    # NaN rows are ignored: dropping them beforehand gives the same AUC.
    tr, te = known[:n_train], known[n_train:]
    alone = probe_auc(codes[:n_train][tr], labels[:n_train][tr, :1], codes[n_train:][te],
                      labels[n_train:][te, :1], ["linear"])
    assert alone["auc"]["linear"] == r["auc"]["linear"]
