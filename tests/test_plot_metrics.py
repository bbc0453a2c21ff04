import json

import pytest
from PIL import Image

import plot_metrics
from src.errors import run_cli


def test_plots_the_history_of_a_run(trained, tmp_path):
    out = tmp_path / "curves.png"
    plot_metrics.main(["--history", str(trained["dir"] / "results" / "history.json"), "--out", str(out)])
    width, height = Image.open(out).size
    assert width > 1000 and height > 800


def test_partial_history_of_a_run_in_progress(trained, tmp_path):
    history = json.loads((trained["dir"] / "results" / "history.json").read_text())[:1]
    (tmp_path / "history.json").write_text(json.dumps(history))
    plot_metrics.main([f"paths.results_dir={tmp_path}"])
    assert (tmp_path / "training_curves.png").exists()


@pytest.mark.parametrize("content, message", [(None, "no training history"), ("[]", "no finished epoch"),
                                              ("[{", "not valid JSON")])
def test_no_history_is_said_clearly(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "history.json").write_text(content)
    with pytest.raises(SystemExit):
        run_cli(plot_metrics.main, [f"paths.results_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def fake_metrics(beta: float, seed: int, mig: float, loss: str = "mse_sum") -> dict:
    return {"beta": beta, "recon_loss": loss, "seed": 0, "z_sampled": {"recon": 100 / beta + seed, "kl": 10 * beta},
            "latent": {"active_units": 20}, "generative": {"prior_vs_test": {"fid": 150.0 + seed}},
            "disentanglement": {"mig": mig, "dci_disentanglement": 0.3, "sap": 0.05}}


def test_a_sweep_is_summarised_by_beta_with_mean_and_spread(tmp_path, capsys):
    runs = [(1.0, 1, 0.10), (1.0, 2, 0.20), (4.0, 1, 0.30), (4.0, 2, 0.30)]
    for beta, seed, mig in runs:
        (tmp_path / f"b{beta}-s{seed}").mkdir()
        (tmp_path / f"b{beta}-s{seed}" / "metrics.json").write_text(json.dumps(fake_metrics(beta, seed, mig)))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "metrics.json").write_text(json.dumps(fake_metrics(1.0, 1, 0.4, "gaussian")))
    plot_metrics.main(["--sweep", str(tmp_path)])
    table = (tmp_path / "beta_sweep.md").read_text().splitlines()
    assert table[2].startswith("| mse_sum | 1 | 2 | 101.5 ± 0.7 | 10.0 ± 0.0 | 20.0 ± 0.0 | 0.150 ± 0.071")
    assert table[3].startswith("| mse_sum | 4 | 2 |")
    assert table[4].startswith("| gaussian | 1 | 1 | 101.0 | 10.0 | 20.0 | 0.400 |")  # one run: no "± 0"
    assert Image.open(tmp_path / "beta_sweep.png").size[0] > 1000
    assert "| MIG |" in capsys.readouterr().out


def test_a_sweep_needs_disentanglement_metrics(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"beta": 1.0, "disentanglement": {"skipped": "x"}}))
    with pytest.raises(SystemExit):
        run_cli(plot_metrics.main, ["--sweep", str(tmp_path)])
    assert "has no MIG/DCI/SAP" in capsys.readouterr().err


def test_several_histories_are_compared_in_one_figure_labelled_by_run(trained, tmp_path, capsys):
    history = json.loads((trained["dir"] / "results" / "history.json").read_text())
    paths = []
    for run, scale in (("run_a", 1.0), ("run_b", 0.5)):
        (tmp_path / run / "results").mkdir(parents=True)
        paths.append(tmp_path / run / "results" / "history.json")
        paths[-1].write_text(json.dumps([{**h, "lr": h["lr"] * scale} for h in history]))
    plot_metrics.main(["--history", *map(str, paths)])
    assert "compared 2 runs (run_a, run_b)" in capsys.readouterr().out
    assert Image.open(tmp_path / "run_a" / "results" / "runs.png").size[0] > 1000
    with pytest.raises(SystemExit):
        run_cli(plot_metrics.main, ["--history", str(paths[0]), str(paths[0])])
    assert "share folder names" in capsys.readouterr().err
