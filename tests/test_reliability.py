"""Interruptions and numerical faults lose nothing: SIGTERM, kill -9 during a save, NaN losses."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from src import threads, trainer, training
from src.checkpoint import load_checkpoint
from src.errors import NumericalError, run_cli
from tests.conftest import make_celeba, tiny_config

REPO = Path(__file__).resolve().parent.parent


def slow_config(tmp_path, name: str, model: dict | None = None, **train_keys) -> Path:
    """Enough steps per epoch (400 images, batch 4) that a signal lands mid-epoch."""
    tiny_config(tmp_path, data={"synthetic_train": 400}, model={"latent_dim": 8, "hidden_dims": [8, 16], **(model or {})},
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


FACES_OPTIONS = {"model": {"upsample": "nearest", "res_blocks": 1},
                 "train": {"ema_decay": 0.99, "lr_schedule": "cosine", "warmup_steps": 20}}


@pytest.mark.parametrize("options, thread_count", [({}, 1), ({}, 2), (FACES_OPTIONS, 1)],
                         ids=["seed-1-thread", "seed-2-threads", "faces-options"])
def test_interrupt_mid_epoch_resumes_exactly(tmp_path, monkeypatch, options, thread_count):
    """Bitwise at any forced train.threads (for "auto" see test_auto_is_bitwise_the_run_...), with the
    faces recipe's options too (EMA, per-step schedule)."""
    model, keys = options.get("model"), {**options.get("train", {}), "threads": thread_count}
    config = slow_config(tmp_path, "straight", model, epochs=2, **keys)
    train.main(["--config", str(config)])
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last_vae.pth")

    config = slow_config(tmp_path, "interrupted", model, epochs=2, **keys)
    calls = {"n": 0}
    real_loss = training.vae_loss

    def loss_then_sigterm(*args, **kwargs):  # a SIGTERM arrives during step 30 of epoch 2
        calls["n"] += 1
        if calls["n"] == 100 + 4 + 30:  # epoch 1: 100 training steps and 4 validation batches
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "vae_loss", loss_then_sigterm)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(config)])
    assert exit_info.value.code == 143
    saved = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last_vae.pth")
    assert (saved["epoch"], saved["step"]) == (1, 30)

    monkeypatch.setattr(training, "vae_loss", real_loss)
    train.main(["--config", str(config), "--resume"])
    resumed = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last_vae.pth")
    for weights in ("model", "ema") if options else ("model",):
        assert all(torch.equal(straight[weights][k], resumed[weights][k]) for k in straight[weights])
    assert resumed["history"][-1]["train_total"] == straight["history"][-1]["train_total"]
    assert resumed["history"][-1]["val_total"] == straight["history"][-1]["val_total"]


def test_kill_9_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last_vae.pth"
    saver = ("import sys, torch; from src.checkpoint import save_checkpoint\n"
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
    tiny_config(tmp_path, train={"epochs": 3})
    config = tmp_path / "config.json"
    train.main(["--config", str(config), "train.epochs=1"])
    best = tmp_path / "checkpoints" / "best_vae.pth"
    before = best.read_bytes()

    calls = {"n": 0}
    real_loss = training.vae_loss

    def faulty_loss(*args, **kwargs):  # the 3rd step of epoch 2 goes non-finite
        calls["n"] += 1
        total, recon, kl = real_loss(*args, **kwargs)
        return (total * float("nan"), recon, kl) if calls["n"] == 3 else (total, recon, kl)

    monkeypatch.setattr(training, "vae_loss", faulty_loss)
    with pytest.raises(NumericalError, match=r"epoch 2, step 3.*last_vae.pth \(epoch 1\)"):
        train.main(["--config", str(config), "--resume"])
    assert best.read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")["epoch"] == 1
    assert len(json.loads((tmp_path / "results" / "history.json").read_text())) == 1


# ----------------------------------------------------------------------------- cache builds and signals

def test_a_corrupt_image_with_worker_processes_fails_at_once(tmp_path):
    """Pool workers once inherited train.py's SIGTERM handler, ignored pool.terminate() and hung for ever."""
    make_celeba(tmp_path / "celeba", counts=(300, 8, 8), size=(89, 109))
    bad = tmp_path / "celeba" / "img_align_celeba" / "000004.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    tiny_config(tmp_path, data={"dataset": "celeba", "num_workers": 2})
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(tmp_path / "config.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot read image") and "000004.jpg" in lines[0]


SLOW_BUILD = """
import sys, time
import src.dataset as dataset
from src.errors import run_cli
import train
real = dataset._generate_chunk
def slow_chunk(job):  # a cache build that lasts long enough to be interrupted
    time.sleep(0.5)
    return real(job)
dataset._generate_chunk = slow_chunk
run_cli(train.main, sys.argv[1:])
"""


def test_ctrl_c_during_a_cache_build_stops_it_promptly_printing_once(tmp_path):
    tiny_config(tmp_path, data={"synthetic_train": 20000, "num_workers": 2})
    cache = tmp_path / "cache"
    # Its own process group with Ctrl-C at its default, as a terminal's job: a test run started in the
    # background (CI) has SIGINT ignored, which a child would inherit (and Python would then respect).
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, "--config", str(tmp_path / "config.json")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not list(cache.glob("*.tmp*.npy")):  # the build has started
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the main process and every worker
    start = time.time()
    out, err = proc.communicate(timeout=30)
    assert time.time() - start < 10 and proc.returncode == 130, (out, err)
    lines = [line for line in (out + err).splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and "interrupted (SIGINT)" in lines[0], lines
    assert not list(cache.glob("*.tmp*")) and not list(cache.glob("*.json"))  # no half-built cache
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no worker process is left behind


# ----------------------------------------------------------------------------- resume compatibility

def interrupted_run(tmp_path, monkeypatch, at_step: int, **train_keys) -> Path:
    """Train `slow_config` until a SIGTERM lands during step `at_step` of epoch 1; returns the config."""
    config = slow_config(tmp_path, "run", epochs=2, **train_keys)
    calls, real_loss = {"n": 0}, training.vae_loss

    def loss_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "vae_loss", loss_then_sigterm)
    with pytest.raises(SystemExit):
        train.main(["--config", str(config)])
    monkeypatch.setattr(training, "vae_loss", real_loss)
    return config


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=8", "stopped mid-epoch with train.batch_size 4, now 8"),
    ("train.seed=1", "stopped mid-epoch with train.seed 0, now 1"),
    ("model.latent_dim=4", "different 'model' settings (model.latent_dim: 8 -> 4)"),
    ("data.image_size=32", "different 'data' settings (data.image_size: 16 -> 32)"),
])
def test_a_mid_epoch_resume_that_would_change_the_epoch_is_refused(tmp_path, monkeypatch, capsys, override,
                                                                   message):
    config = interrupted_run(tmp_path, monkeypatch, at_step=20)
    last = tmp_path / "run" / "checkpoints" / "last_vae.pth"
    before = last.read_bytes()
    capsys.readouterr()  # the interrupted run's output
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--config", str(config), "--resume", override])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert last.read_bytes() == before


def fake_clock(seconds: dict[int, float]):
    """perf_counter for the thread tuner: every timed unit lasts seconds[the current thread count]."""
    state = {"now": 0.0, "started": False}

    def clock() -> float:
        if state["started"]:
            state["now"] += seconds[torch.get_num_threads()]
        state["started"] = not state["started"]
        return state["now"]
    return clock


def test_auto_is_bitwise_the_run_with_the_same_thread_count_at_every_step(tmp_path, monkeypatch):
    """train.threads=auto changes the weights only through the counts it runs steps at (its timing uses
    no RNG, no data, no step of its own), and resumes exactly: an auto run, interrupted mid-epoch and
    resumed, ends bitwise like an uninterrupted run forced to the same count at every step. Timings
    are fake (one thread twice as fast) so that auto measures and switches at known steps."""
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "perf_counter", fake_clock({1: 0.5, 2: 1.0}))
    monkeypatch.setattr(threads.OtherPrograms, "__call__", lambda self: True)  # a busy machine: auto measures
    counts, real_step = [], trainer.train_step

    def logged_step(*args):
        counts.append(torch.get_num_threads())
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", logged_step)
    config = interrupted_run(tmp_path, monkeypatch, at_step=30, threads="auto")
    train.main(["--config", str(config), "--resume"])
    auto = load_checkpoint(tmp_path / "run" / "checkpoints" / "last_vae.pth")
    assert len(counts) == 200 and counts[:2] == [2, 2] and counts.count(2) < 10  # 1 thread won, 2 re-measured
    assert auto["history"][1]["threads"] == {str(n): counts[100:].count(n) for n in (1, 2)}

    schedule = iter(list(counts))

    def replayed_step(*args):
        torch.set_num_threads(next(schedule))
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", replayed_step)
    config = slow_config(tmp_path, "replayed", epochs=2, threads=1)
    train.main(["--config", str(config)])
    replayed = load_checkpoint(tmp_path / "replayed" / "checkpoints" / "last_vae.pth")
    assert all(torch.equal(auto["model"][k], replayed["model"][k]) for k in auto["model"])
    assert next(schedule, None) is None


def test_auto_on_an_idle_machine_is_bitwise_the_forced_full_count(tmp_path, monkeypatch):
    """Alone on the machine auto never tries fewer threads, so the baseline's numbers hold under the default."""
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads.OtherPrograms, "__call__", lambda self: False)
    runs = {}
    for setting in ("auto", 2):
        train.main(["--config", str(slow_config(tmp_path, str(setting), epochs=1, threads=setting))])
        runs[setting] = load_checkpoint(tmp_path / str(setting) / "checkpoints" / "last_vae.pth")
    assert runs["auto"]["history"][0]["threads"] == {"2": 100}
    assert all(torch.equal(runs["auto"]["model"][k], runs[2]["model"][k]) for k in runs[2]["model"])


def test_a_resume_may_move_the_data_cache_and_workers(tmp_path, monkeypatch):
    config = slow_config(tmp_path, "straight", epochs=2)
    train.main(["--config", str(config)])
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last_vae.pth")
    config = interrupted_run(tmp_path, monkeypatch, at_step=20)
    train.main(["--config", str(config), "--resume", "data.num_workers=1", f"data.cache_dir={tmp_path / 'moved'}",
                f"paths.results_dir={tmp_path / 'elsewhere'}"])
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / "last_vae.pth")
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


def test_celeba_moved_to_another_root_resumes_but_other_files_do_not(tmp_path, capsys):
    make_celeba(tmp_path / "celeba", counts=(40, 8, 8))
    tiny_config(tmp_path, data={"dataset": "celeba"}, train={"epochs": 2})
    config = str(tmp_path / "config.json")
    train.main(["--config", config, "train.epochs=1"])
    shutil.copytree(tmp_path / "celeba", tmp_path / "moved")
    train.main(["--config", config, "--resume", f"data.root={tmp_path / 'moved'}"])
    assert load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")["epoch"] == 2
    with open(tmp_path / "moved" / "img_align_celeba" / "000001.jpg", "ab") as f:
        f.write(b"\0")  # another file now (its size changed)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--config", config, "--resume", "train.epochs=3", f"data.root={tmp_path / 'moved'}"])
    assert exit_info.value.code == 2 and "was trained on other images" in capsys.readouterr().err


# ----------------------------------------------------------------------------- numerics and batch sizes

def test_nothing_non_finite_is_saved_between_cuda_checks(tmp_path, monkeypatch):
    """On CUDA the finite check runs every train.log_every steps; a save in between must check first."""
    monkeypatch.setattr(trainer, "checks_every_step", lambda device: False)  # the CUDA policy, on the CPU
    config = slow_config(tmp_path, "run", log_every=50)
    calls, real_loss = {"n": 0}, training.vae_loss

    def nan_then_sigterm(*args, **kwargs):  # step 3 goes non-finite, and a SIGTERM arrives during it
        calls["n"] += 1
        total, recon, kl = real_loss(*args, **kwargs)
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            return total * float("nan"), recon, kl
        return total, recon, kl

    monkeypatch.setattr(training, "vae_loss", nan_then_sigterm)
    with pytest.raises(NumericalError, match="epoch 1, step 3"):
        train.main(["--config", str(config)])
    assert not (tmp_path / "run" / "checkpoints" / "last_vae.pth").exists()


def test_a_batch_of_one_never_reaches_batchnorm_at_a_1x1_bottleneck(tmp_path):
    """33 images in batches of 16 would end in a batch of one, which BatchNorm cannot train on."""
    tiny_config(tmp_path, data={"synthetic_train": 33}, model={"hidden_dims": [8, 16, 32, 64]})
    train.main(["--config", str(tmp_path / "config.json")])
    history = json.loads((tmp_path / "results" / "history.json").read_text())
    assert history[0]["train_total"] > 0
