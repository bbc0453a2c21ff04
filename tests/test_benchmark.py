"""The benchmark runs end to end on tiny data and reports every figure (speed is not asserted)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from src.dataset import load_split
from src.errors import UserError
from tests.conftest import make_celeba, tiny_config
from tools import benchmark, thread_counts

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_reports_all_three_paths(tmp_path, capsys):
    make_celeba(tmp_path / "celeba", counts=(48, 8, 8), size=(89, 109))
    tiny_config(tmp_path, data={"dataset": "celeba", "center_crop": 148})
    benchmark.main(["--config", str(tmp_path / "config.json"), "--steps", "2", "--batch-size", "4"])
    report = json.loads((tmp_path / "results" / "benchmark.json").read_text())
    assert set(report["images_per_second"]) == {"compute", "project", "naive"}
    assert set(report["data_only_images_per_second"]) == {"project", "naive"}
    assert all(v > 0 for v in report["data_only_images_per_second"].values())
    assert all(v > 0 for v in report["images_per_second"].values())
    assert report["ratio_project_to_compute"] > 0 and report["peak_rss_gb_training_run"] > 0.1
    assert report["train_images"] == 48 and report["batch_size"] == 4
    assert "(2)/(1) =" in capsys.readouterr().out


def test_benchmark_needs_jpegs(tmp_path):
    tiny_config(tmp_path)
    with pytest.raises(UserError, match="use CelebA"):
        benchmark.main(["--config", str(tmp_path / "config.json")])


def test_the_naive_path_decodes_like_the_project_even_without_a_crop(tmp_path):
    make_celeba(tmp_path / "celeba", counts=(4, 2, 2), size=(89, 109))
    naive = benchmark.NaiveCelebA(tmp_path / "celeba", "train", 16, center_crop=0)  # once divided by zero
    split = load_split(tiny_config(tmp_path, data={"dataset": "celeba", "center_crop": 0}), "train")
    assert torch.equal((naive[0] * 255).round().to(torch.uint8), torch.from_numpy(np.array(split.images[0])))


def test_the_benchmark_does_not_import_the_training_script():
    code = "import sys, tools.benchmark; assert 'train' not in sys.modules, 'imports train.py'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ----------------------------------------------------------------------------- thread counts and busy programs

HOLDS_BUSY_PROGRAMS = """
import time
from tools.thread_counts import busy_programs
with busy_programs(2, limit_s=120) as procs:
    print(" ".join(str(p.pid) for p in procs), flush=True)
    time.sleep(120)
"""


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an ended child its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until_gone(pids: list[int], seconds: float = 10) -> bool:
    deadline = time.time() + seconds
    while any(running(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    return not any(running(pid) for pid in pids)


def holder() -> tuple[subprocess.Popen, list[int]]:
    """A process inside busy_programs(2, ...), with Ctrl-C at its default (a background test run ignores
    SIGINT, and a child would inherit that), and the pids of its busy programs."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDS_BUSY_PROGRAMS], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pids = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(running(pid) for pid in pids), proc.stderr.read()
    return proc, pids


def test_busy_programs_end_with_the_block_and_on_errors():
    with thread_counts.busy_programs(2, limit_s=120) as procs:
        assert all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError):
        with thread_counts.busy_programs(1, limit_s=120) as procs:
            raise RuntimeError("a failed measurement")
    assert procs[0].poll() is not None


def test_busy_programs_end_on_ctrl_c():
    proc, pids = holder()
    proc.send_signal(signal.SIGINT)  # to the benchmark alone: it must end its busy programs itself
    proc.communicate(timeout=30)
    assert proc.returncode != 0 and wait_until_gone(pids)


def test_busy_programs_end_by_themselves_when_the_benchmark_is_killed_or_their_time_is_up():
    proc, pids = holder()
    proc.kill()  # kill -9: no finally runs
    proc.wait()
    assert wait_until_gone(pids)
    with thread_counts.busy_programs(1, limit_s=0.2) as procs:
        procs[0].wait(timeout=30)


def test_thread_counts_are_compared_idle_and_busy_on_synthetic_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(thread_counts, "available_cores", lambda: 2)
    tiny_config(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "benchmark.json").write_text(json.dumps({"images_per_second": {"compute": 1.0}}))
    torch.set_num_threads(1)  # as a forced train.threads left it: the benchmark puts it back
    thread_counts.main(["--config", str(tmp_path / "config.json"), "--busy", "1", "--seconds", "0.2", "--batch-size", "4",
                    "--work", "train", "decode"])
    assert torch.get_num_threads() == 1
    report = json.loads((tmp_path / "results" / "benchmark.json").read_text())
    assert report["images_per_second"] == {"compute": 1.0}  # the other figures are kept
    threads = report["threads"]
    assert threads["cores"] == 2 and threads["busy_programs"] == 1 and threads["cpu"]
    for work in ("train", "decode"):
        for load in ("idle", "busy"):
            figures = threads["work"][work][load]
            assert all(figures[k] > 0 for k in ("1", "2", "auto")) and figures["best_fixed"] in (1, 2)
            assert figures["auto_to_best_fixed"] == pytest.approx(figures["auto"] / figures[str(figures["best_fixed"])])
            assert sum(figures["auto_units"].values()) > 0
    assert "(auto): auto / the best fixed count" in capsys.readouterr().out
