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
