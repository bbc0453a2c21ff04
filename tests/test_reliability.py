"""Interruptions and numerical faults lose nothing: SIGTERM, kill -9 during a save, NaN losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from src.errors import NumericalError
from src.utils import load_checkpoint
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent


def slow_config(tmp_path, name: str, **train_keys) -> Path:
    """Enough steps per epoch (400 images, batch 4) that a signal lands mid-epoch."""
    tiny_config(tmp_path, data={"synthetic_train": 400},
                train={"epochs": 3, "batch_size": 4, "log_every": 5, **train_keys},
                paths={"checkpoint_dir": str(tmp_path / name / "checkpoints"),
                       "results_dir": str(tmp_path / name / "results")})
    return tmp_path / "config.json"


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    config = slow_config(tmp_path, "straight")
    train.main(["--config", str(config)])
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last_vae.pth")

    config = slow_config(tmp_path, "interrupted")
    run_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run_dir / "results" / "history.json").exists():  # epoch 1 is done: interrupt epoch 2
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    time.sleep(0.2)  # usually mid-epoch; at an epoch boundary the resume must be exact all the same
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out
    assert "resume with" in out and "--resume" in out
    saved = load_checkpoint(run_dir / "checkpoints" / "last_vae.pth")
    assert 1 <= saved["epoch"] < 3

    train.main(["--config", str(config), "--resume"])
    resumed = load_checkpoint(run_dir / "checkpoints" / "last_vae.pth")
    assert resumed["epoch"] == 3
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    history = json.loads((run_dir / "results" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_total"] == pytest.approx(straight["history"][-1]["train_total"], rel=1e-6)


def test_interrupt_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    config = slow_config(tmp_path, "straight", epochs=2)
    train.main(["--config", str(config)])
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last_vae.pth")

    config = slow_config(tmp_path, "interrupted", epochs=2)
    calls = {"n": 0}
    real_loss = train.vae_loss

    def loss_then_sigterm(*args, **kwargs):  # a SIGTERM arrives during step 30 of epoch 2
        calls["n"] += 1
        if calls["n"] == 100 + 4 + 30:  # epoch 1: 100 training steps and 4 validation batches
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train, "vae_loss", loss_then_sigterm)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(config)])
    assert exit_info.value.code == 143
    saved = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last_vae.pth")
    assert (saved["epoch"], saved["step"]) == (1, 30)

    monkeypatch.setattr(train, "vae_loss", real_loss)
    train.main(["--config", str(config), "--resume"])
    resumed = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last_vae.pth")
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert resumed["history"][-1]["train_total"] == straight["history"][-1]["train_total"]


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last_vae.pth"
    saver = ("import sys, torch; from src.utils import save_checkpoint\n"
             "i = 0\n"
             "while True:\n"
             "    save_checkpoint({'model': {'w': torch.full((512, 512), float(i))}, 'epoch': i}, sys.argv[1])\n"
             "    i += 1\n")
    proc = subprocess.Popen([sys.executable, "-c", saver, str(path)], cwd=REPO)
    deadline = time.time() + 60
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.5)  # many saves under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.full((512, 512), float(state["epoch"])))


def test_nan_stops_at_once_and_saves_nothing(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, train={"epochs": 3})
    config = tmp_path / "config.json"
    train.main(["--config", str(config), "train.epochs=1"])
    best = tmp_path / "checkpoints" / "best_vae.pth"
    before = best.read_bytes()

    calls = {"n": 0}
    real_loss = train.vae_loss

    def faulty_loss(*args, **kwargs):  # the 3rd step of epoch 2 goes non-finite
        calls["n"] += 1
        total, recon, kl = real_loss(*args, **kwargs)
        return (total * float("nan"), recon, kl) if calls["n"] == 3 else (total, recon, kl)

    monkeypatch.setattr(train, "vae_loss", faulty_loss)
    with pytest.raises(NumericalError, match=r"epoch 2, step 3.*last_vae.pth \(epoch 1\)"):
        train.main(["--config", str(config), "--resume"])
    assert best.read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")["epoch"] == 1
    assert len(json.loads((tmp_path / "results" / "history.json").read_text())) == 1
