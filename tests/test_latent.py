"""The ex-post sampler: a Gaussian mixture fitted to posterior means, sampled reproducibly, cached safely."""

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from src import latent
from src.cache import cached_arrays
from src.checkpoint import load_checkpoint, model_from_checkpoint
from src.dataset import load_split
from src.latent import fit_gmm, sample_gmm, training_gmm


def test_the_gmm_recovers_a_known_two_component_mixture():
    rng = np.random.default_rng(0)
    cov_a = np.array([[1.0, 0.8], [0.8, 1.0]])
    codes = np.vstack([rng.multivariate_normal([-4, 0], cov_a, 3000),
                       rng.multivariate_normal([3, 2], 0.25 * np.eye(2), 1000)])
    gmm = fit_gmm(codes, components=2)
    order = np.argsort(gmm["means"][:, 0])
    np.testing.assert_allclose(gmm["weights"][order], [0.75, 0.25], atol=0.02)
    np.testing.assert_allclose(gmm["means"][order], [[-4, 0], [3, 2]], atol=0.1)
    np.testing.assert_allclose(gmm["covariances"][order[0]], cov_a, atol=0.1)
    z = sample_gmm(gmm, 20000, seed=1).numpy()
    assert abs((z[:, 0] > 0).mean() - 0.25) < 0.02  # samples follow the weights
    np.testing.assert_allclose(np.cov(z[z[:, 0] < 0].T), cov_a, atol=0.1)
    assert torch.equal(sample_gmm(gmm, 5, seed=1), sample_gmm(gmm, 5, seed=1))  # seeded
    assert not torch.equal(sample_gmm(gmm, 5, seed=1), sample_gmm(gmm, 5, seed=2))


def test_cached_arrays_are_keyed_and_recomputed_when_stale_or_corrupt(tmp_path, capsys):
    path, calls = tmp_path / "gmm.npz", []

    def compute(value):
        def f():
            calls.append(value)
            return {"means": np.full((2, 3), value)}
        return f

    assert cached_arrays(path, {"checkpoint": "a"}, compute(1.0))["means"][0, 0] == 1.0
    assert cached_arrays(path, {"checkpoint": "a"}, compute(9.0))["means"][0, 0] == 1.0  # read back
    assert cached_arrays(path, {"checkpoint": "b"}, compute(2.0))["means"][0, 0] == 2.0  # stale: refitted
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert cached_arrays(path, {"checkpoint": "b"}, compute(3.0))["means"][0, 0] == 3.0
    assert calls == [1.0, 2.0, 3.0]
    out = capsys.readouterr().out
    assert "another checkpoint" in out and "unreadable" in out


def test_the_training_gmm_is_fitted_once_per_checkpoint(trained, tmp_path, monkeypatch):
    state = load_checkpoint(trained["checkpoint"])
    model, cfg = model_from_checkpoint(state)
    train = load_split(cfg, "train")
    args = (train.images, train.data_id, tmp_path, 16, torch.device("cpu"))
    first = training_gmm(model, trained["checkpoint"], *args)
    assert first["means"].shape == (10, 8) and first["covariances"].shape == (10, 8, 8)
    monkeypatch.setattr(latent, "fit_gmm", lambda *a, **k: pytest.fail("refitted a cached mixture"))
    again = training_gmm(model, trained["checkpoint"], *args)
    np.testing.assert_array_equal(first["means"], again["means"])
    other = tmp_path / "other.pth"
    other.write_bytes(trained["checkpoint"].read_bytes() + b"\0")  # other bytes: another checkpoint
    monkeypatch.undo()
    assert len(list(tmp_path.glob("gmm-*.npz"))) == 1
    training_gmm(model, other, *args)
    assert len(list(tmp_path.glob("gmm-*.npz"))) == 2


def test_inference_samples_from_the_gmm(trained, tmp_path):
    for sampler in ("prior", "gmm"):
        inference.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path / sampler}",
                        "--sampler", sampler, "--n", "9"])
    prior, gmm = (np.asarray(Image.open(tmp_path / s / "inference_test_set" / "samples.png")) for s in ("prior", "gmm"))
    assert prior.shape == gmm.shape and not np.array_equal(prior, gmm)
