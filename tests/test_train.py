import json
import math

import pytest
import torch
from PIL import Image

import train
from src.checkpoint import load_checkpoint, model_from_checkpoint
from src.errors import run_cli
from tests.conftest import make_celeba

HISTORY_KEYS = {"epoch", "train_total", "train_recon", "train_kl", "val_total", "val_recon", "val_kl",
                "lr", "grad_norm", "epoch_seconds", "images_per_second", "threads"}


@pytest.mark.parametrize("dataset", ["synthetic", "celeba"])
def test_one_epoch_writes_checkpoints_history_and_samples(tmp_path, config_file, dataset):
    if dataset == "celeba":
        make_celeba(tmp_path / "celeba", counts=(40, 8, 8))
    train.main(["--config", str(config_file(data={"dataset": dataset}))])

    history = json.loads((tmp_path / "results" / "history.json").read_text())
    assert len(history) == 1 and set(history[0]) == HISTORY_KEYS
    assert history[0]["train_total"] == pytest.approx(history[0]["train_recon"] + 1.2 * history[0]["train_kl"],
                                                      rel=1e-4)
    assert history[0]["images_per_second"] > 0 and history[0]["grad_norm"] > 0
    assert history[0]["threads"] == {"1": 3}  # steps at each CPU thread count (train.threads=1 in the tests)
    for name in ("best_vae.pth", "last_vae.pth"):
        state = load_checkpoint(tmp_path / "checkpoints" / name)
        assert state["epoch"] == 1 and state["history"] == history
        model, cfg = model_from_checkpoint(state)
        assert cfg.data.dataset == dataset and cfg.model.hidden_dims == [8, 16]
    samples = Image.open(tmp_path / "results" / "train_samples.png")
    assert samples.size == (8 * 18 + 2, 8 * 18 + 2)  # 8x8 grid of 16-px images, 2-px padding


def test_auto_threads_say_what_they_chose_and_old_checkpoints_load(tmp_path, config_file, capsys):
    path = str(config_file())
    train.main(["--config", path, "train.threads=auto"])
    out = capsys.readouterr().out
    assert "threads " in out and "(auto: " in out  # the startup line (and the choice, once measured)
    history = json.loads((tmp_path / "results" / "history.json").read_text())
    assert sum(history[0]["threads"].values()) == 3
    last = tmp_path / "checkpoints" / "last_vae.pth"
    state = load_checkpoint(last)
    del state["config"]["train"]["threads"]  # a checkpoint from before train.threads
    torch.save(state, last)
    assert model_from_checkpoint(load_checkpoint(last))[1].train.threads == "auto"  # the default
    train.main(["--config", path, "--resume", "train.epochs=2"])
    assert load_checkpoint(last)["epoch"] == 2


def test_resume_continues_the_epoch_count(tmp_path, config_file):
    path = str(config_file())
    train.main(["--config", path])
    train.main(["--config", path, "--resume", "train.epochs=3"])
    history = json.loads((tmp_path / "results" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")["epoch"] == 3
    assert history[1]["lr"] == pytest.approx(history[0]["lr"] * 0.95)  # the scheduler resumed too


def test_resume_matches_an_uninterrupted_run(tmp_path, config_file):
    path = str(config_file())
    train.main(["--config", path, "train.epochs=2", f"paths.checkpoint_dir={tmp_path / 'straight'}"])
    train.main(["--config", path, "train.epochs=1"])
    train.main(["--config", path, "train.epochs=2", "--resume"])
    straight = load_checkpoint(tmp_path / "straight" / "last_vae.pth")["model"]
    resumed = load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_with_another_model_is_refused(tmp_path, config_file):
    path = str(config_file())
    train.main(["--config", path])
    with pytest.raises(Exception, match="different 'model' settings"):
        train.main(["--config", path, "--resume", "model.latent_dim=4"])


@pytest.mark.parametrize("args, message", [
    (["train.epochs=0"], "config key 'train.epochs' must be at least 1, got 0"),
    (["train.epoch=2"], "unknown config key 'train.epoch'"),
    (["paths.results_dir=CONFIG/results"], "cannot create paths.results_dir"),  # under a file
    (["--resume"], "last_vae.pth' not found"),
])
def test_bad_input_is_one_line_and_touches_nothing(tmp_path, config_file, capsys, args, message):
    path = str(config_file())
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best_vae.pth").write_bytes(b"previous run")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--config", path, *[a.replace("CONFIG", path) for a in args]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (tmp_path / "checkpoints" / "best_vae.pth").read_bytes() == b"previous run"


def test_the_calibrated_gaussian_decoder_trains_in_nats_and_evaluates(tmp_path, config_file):
    import evaluate
    path = str(config_file(train={"recon_loss": "gaussian", "epochs": 2}))
    train.main(["--config", path])
    history = json.loads((tmp_path / "results" / "history.json").read_text())
    assert set(history[0]) == HISTORY_KEYS | {"train_bpd", "val_bpd"}
    h = history[-1]
    assert h["train_total"] == pytest.approx(h["train_recon"] + 1.2 * h["train_kl"], rel=1e-4)
    assert h["val_bpd"] == pytest.approx((h["val_recon"] + h["val_kl"]) / (3 * 16 * 16 * math.log(2)) + 8)
    evaluate.main(["--checkpoint", str(tmp_path / "checkpoints" / "best_vae.pth"), "--no-fid",
                   f"paths.results_dir={tmp_path / 'eval'}"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    z = metrics["z_sampled"]
    assert metrics["recon_loss"] == "gaussian" and z["beta_loss"] == pytest.approx(z["nll_nats"] + 1.2 * z["kl"])
    assert z["recon"] > 0 and z["elbo_nats"] == pytest.approx(z["nll_nats"] + z["kl"])  # the baseline's units too
    with pytest.raises(Exception, match="trained with train.recon_loss=gaussian"):
        train.main(["--config", path, "--resume", "train.recon_loss=mse_sum", "train.epochs=3"])


def test_a_resume_with_another_learning_rate_schedule_is_refused(tmp_path, config_file):
    path = str(config_file())
    train.main(["--config", path])
    for override in ("train.lr_schedule=cosine", "train.warmup_steps=10"):
        with pytest.raises(Exception, match="another learning-rate schedule"):
            train.main(["--config", path, "--resume", "train.epochs=2", override])
