"""The benchmark runs end to end on tiny data and reports every figure (speed is not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src import benchmark
from src.dataset import load_split
from src.errors import UserError
from tests.conftest import make_celeba, tiny_config


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
    code = "import sys, src.benchmark; assert 'train' not in sys.modules, 'imports train.py'"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, check=True)
