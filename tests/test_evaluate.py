import json

import numpy as np
import pytest
import torch

import evaluate
from src import fid
from src.checkpoint import load_checkpoint, model_from_checkpoint
from src.dataset import load_split
from src.errors import run_cli
from src.model import vae_loss
from tests.conftest import face_like_image, make_celeba


def run(trained, tmp_path, *args):
    # --no-fid: these tests check the losses; FID and KID are tested in test_metrics.py
    evaluate.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}", "--no-fid", *args])
    return json.loads((tmp_path / "metrics.json").read_text())


def test_metrics_match_a_direct_computation_and_repeat(trained, tmp_path):
    metrics = run(trained, tmp_path)
    assert metrics["split"] == "test" and metrics["num_images"] == 16 and metrics["epoch"] >= 1

    model, cfg = model_from_checkpoint(load_checkpoint(trained["checkpoint"]))
    model.eval()
    x = torch.from_numpy(np.array(load_split(cfg, "test").images)).float() / 255
    with torch.no_grad():
        mu, logvar = model.encode(x)
        total, recon, kl = vae_loss(model.decode(mu), x, mu, logvar, beta=cfg.train.beta)
        mse = ((model.decode(mu) - x) ** 2).flatten(1).mean(1)
    z_mean = metrics["z_mean"]
    assert z_mean["recon"] == pytest.approx(recon.item(), rel=1e-4)
    assert z_mean["kl"] == pytest.approx(kl.item(), rel=1e-4)
    assert z_mean["total"] == pytest.approx(recon.item() + kl.item(), rel=1e-4)
    assert z_mean["beta_loss"] == pytest.approx(total.item(), rel=1e-4)
    assert z_mean["mse"] == pytest.approx(mse.mean().item(), rel=1e-4)
    assert z_mean["psnr"] == pytest.approx((-10 * torch.log10(mse)).mean().item(), rel=1e-4)
    assert metrics["z_sampled"]["kl"] == z_mean["kl"]  # KL does not depend on the sampled z
    assert metrics["z_sampled"]["recon"] != z_mean["recon"]

    again = run(trained, tmp_path)
    assert again == metrics


def test_val_split_and_table(trained, tmp_path, capsys):
    metrics = run(trained, tmp_path, "--split", "val", "train.threads=2")
    assert metrics["split"] == "val"
    out = capsys.readouterr().out
    assert "total = recon + KL (-ELBO)" in out and "PSNR (dB)" in out
    assert "threads 2 (train.threads=2)" in out  # every script applies train.threads


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, ["--checkpoint", str(tmp_path / "nope.pth")])
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "not found" in err and err.count("\n") == 1


def test_no_fid_skips_inception_but_reports_ssim_and_collapse(trained, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("--no-fid must not load the Inception network")
    monkeypatch.setattr(fid, "InceptionFeatures", fail)
    monkeypatch.setattr(evaluate, "inception_path", fail)
    metrics_json = run(trained, tmp_path)
    assert metrics_json["generative"] is None
    assert metrics_json["reconstruction"]["ssim"] > 0 and "active_units" in metrics_json["latent"]
    assert (tmp_path / "kl_per_dim.png").is_file()


def test_fid_samples_must_be_at_least_two(trained, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, ["--checkpoint", str(trained["checkpoint"]), "--fid-samples", "1"])
    assert "--fid-samples must be at least 2" in capsys.readouterr().err


def test_metrics_json_is_replaced_atomically(trained, tmp_path):
    """A crash mid-write must leave the previous metrics.json whole: a new file is renamed over it."""
    run(trained, tmp_path)
    first = (tmp_path / "metrics.json").stat().st_ino
    run(trained, tmp_path)
    assert (tmp_path / "metrics.json").stat().st_ino != first
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_disentanglement_of_synthetic_factors_is_reported(trained, tmp_path, capsys):
    d = run(trained, tmp_path)["disentanglement"]
    for key in ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap"):
        assert 0 <= d[key] <= 1, key
    assert d["num_test"] == 16 and set(d["per_factor"]) == {"skin_tone", "hair_colour", "hair_style", "face_width",
                                                             "eye_spacing", "smile", "glasses", "hat", "background"}
    out = capsys.readouterr().out
    assert "MIG" in out and "DCI" in out and "SAP" in out


def test_celeba_attributes_get_probes_and_a_proxy_mig(trained, tmp_path, capsys):
    make_celeba(tmp_path / "celeba", counts=(60, 8, 8), attributes_for=50)  # labels for part of train only
    d = run(trained, tmp_path, "data.dataset=celeba", f"data.root={tmp_path / 'celeba'}",
            f"data.cache_dir={tmp_path / 'cache'}")["disentanglement"]
    assert "held-out tenth" in d["probe_evaluated_on"] and "only a proxy" in d["note"]
    assert 0 <= d["mig_proxy"] <= 1 and set(d["probe_auc"]["auc"]) | set(d["probe_auc"]["skipped"]) == {
        "Eyeglasses", "Smiling", "Wearing_Hat"}
    assert "a proxy only" in capsys.readouterr().out


def test_a_split_without_labels_skips_disentanglement_saying_why(trained, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(60):
        face_like_image(i, 30, 30).save(photos / f"{i}.png")
    d = run(trained, tmp_path, "data.dataset=folder", f"data.root={photos}", "data.center_crop=0",
            f"data.cache_dir={tmp_path / 'cache'}")["disentanglement"]
    assert d == {"skipped": "folder data has no factor or attribute labels"}
    assert "disentanglement: skipped (folder data has no factor or attribute labels)" in capsys.readouterr().out
