"""The benchmark runs end to end on tiny data and reports every figure (speed is not asserted)."""

import json

import pytest

from src import benchmark
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
