"""torchrun with 2 CPU ranks (gloo) trains like one process with the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from src.checkpoint import load_checkpoint
from src.errors import run_cli
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 0.01  # relative; ranks draw their own z noise, so losses differ slightly (measured: < 0.05%)


def test_two_ranks_match_one_process_and_write_once(tmp_path):
    # batch_norm off: per-rank batch statistics would be a second, expected source of difference.
    tiny_config(tmp_path, data={"synthetic_train": 128}, model={"batch_norm": False}, train={"epochs": 2})
    config = str(tmp_path / "config.json")
    train.main(["--config", config, "train.batch_size=16", f"paths.checkpoint_dir={tmp_path / 'single'}",
                f"paths.results_dir={tmp_path / 'single'}"])

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train.py"), "--config", config, "train.batch_size=8", *args]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    out = torchrun("train.epochs=1")
    assert "2 x cpu, batch 8/rank" in out and out.count("epoch 1/1  train") == 1  # rank 0 reports alone
    torchrun("--resume")  # on to epoch 2

    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["best_vae.pth", "last_vae.pth"]  # written once: no temporary or per-rank files
    ddp = json.loads((tmp_path / "results" / "history.json").read_text())
    single = json.loads((tmp_path / "single" / "history.json").read_text())
    assert [h["epoch"] for h in ddp] == [1, 2]
    for key in ("train_total", "train_recon", "val_total", "val_recon"):
        for d, s in zip(ddp, single):
            assert d[key] == pytest.approx(s[key], rel=TOLERANCE), key
    assert load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")["epoch"] == 2


SIGNAL_ONE_RANK = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from src import training
from src.errors import run_cli
import train
real_loss, calls = training.vae_loss, [0]
def loss(*args, **kwargs):  # rank {rank} alone receives a SIGTERM during its step 7 (log_every is 5)
    calls[0] += 1
    if calls[0] == 7 and os.environ["RANK"] == "{rank}":
        os.kill(os.getpid(), signal.SIGTERM)
    return real_loss(*args, **kwargs)
training.vae_loss = loss
run_cli(train.main, sys.argv[1:])
"""


@pytest.mark.parametrize("signalled_rank", [0, 1])
def test_sigterm_to_one_rank_saves_once_and_resumes_under_torchrun(tmp_path, capsys, signalled_rank):
    tiny_config(tmp_path, data={"synthetic_train": 200}, train={"epochs": 2, "batch_size": 4, "log_every": 5})
    config = str(tmp_path / "config.json")
    straight = f"paths.checkpoint_dir={tmp_path / 'straight'}"
    script = tmp_path / "signal_one_rank.py"
    script.write_text(SIGNAL_ONE_RANK.format(repo=str(REPO), rank=signalled_rank))

    def torchrun(program, *args, check=True):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(program),
               "--config", config, *args]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)  # no deadlock
        assert result.returncode == 0 or not check, result.stdout[-2000:] + result.stderr[-2000:]
        return result

    torchrun(REPO / "train.py", straight, f"paths.results_dir={tmp_path / 'straight'}")
    out = torchrun(script, check=False).stdout
    saved = load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")
    assert (saved["epoch"], saved["step"], saved["world_size"]) == (0, 10, 2)  # both ranks stopped at step 10
    assert saved["partial"][4] == 10 * 4 * 2  # images of both ranks, counted once
    assert "resume with: torchrun --standalone --nproc_per_node=2 train.py" in out and out.count("saved ") == 1

    with pytest.raises(SystemExit):  # the rest of the epoch needs the same two ranks
        run_cli(train.main, ["--config", config, "--resume"])
    assert "stopped mid-epoch with world size 2, now 1" in capsys.readouterr().err
    torchrun(REPO / "train.py", "--resume")
    resumed = load_checkpoint(tmp_path / "checkpoints" / "last_vae.pth")
    reference = load_checkpoint(tmp_path / "straight" / "last_vae.pth")
    assert resumed["epoch"] == 2
    for r, s in zip(resumed["history"], reference["history"]):
        assert r["train_total"] == pytest.approx(s["train_total"], rel=1e-5)
    assert all(torch.equal(resumed["model"][k], reference["model"][k])
               for k in reference["model"])
