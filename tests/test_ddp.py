"""torchrun with 2 CPU ranks (gloo) trains like one process with the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import train
from src.utils import load_checkpoint
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
