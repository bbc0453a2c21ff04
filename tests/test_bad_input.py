"""Every script, on each kind of bad input: exit status 2, one line on stderr naming the problem,
and nothing already written (checkpoints, results) touched."""


import pytest
import torch
from PIL import Image

import analyze_failures
import evaluate
import inference
import plot_metrics
import train
from src.errors import run_cli
from tests.conftest import make_celeba, tiny_config
from tools import benchmark

SCRIPTS = {"train": train.main, "evaluate": evaluate.main, "inference": inference.main,
           "analyze_failures": analyze_failures.main, "plot_metrics": plot_metrics.main,
           "benchmark": benchmark.main}
USES_CHECKPOINT = ("evaluate", "inference", "analyze_failures")


@pytest.fixture
def workspace(tmp_path, trained):
    """A tiny CelebA tree, a config pointing at it, and previous outputs that must survive."""
    make_celeba(tmp_path / "celeba", counts=(12, 4, 4))
    tiny_config(tmp_path, data={"dataset": "celeba"})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best_vae.pth").write_bytes(trained["checkpoint"].read_bytes())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "history.json").write_text("[]")
    (tmp_path / "results" / "metrics.json").write_text('{"previous": true}')
    return tmp_path


def fails_cleanly(capsys, script: str, args: list[str], expected: str, workspace) -> None:
    before = {p: p.read_bytes() for p in workspace.glob("*/*") if p.parent.name in ("checkpoints", "results")}
    with pytest.raises(SystemExit) as exit_info:
        run_cli(SCRIPTS[script], args)
    lines = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2
    # One error line; anything before it is a progress bar that was running (e.g. a cache build).
    assert lines[-1].startswith("error: ") and expected in lines[-1], lines
    assert all("%|" in line for line in lines[:-1]), lines
    after = {p: p.read_bytes() for p in workspace.glob("*/*") if p.parent.name in ("checkpoints", "results")}
    assert after == before


# ----------------------------------------------------------------------------- data

def break_data(root, case: str) -> None:
    images, partition = root / "img_align_celeba", root / "list_eval_partition.txt"
    if case == "root missing":
        import shutil
        shutil.rmtree(root)
    elif case == "partition missing":
        partition.unlink()
    elif case == "partition wrong column count":
        partition.write_text(partition.read_text() + "000099.jpg 0 extra\n")
    elif case == "partition label not 0/1/2":
        partition.write_text(partition.read_text().replace("000002.jpg 0", "000002.jpg 3"))
    elif case == "partition duplicate name":
        partition.write_text(partition.read_text() + "000002.jpg 0\n")
    elif case == "partition names absent images":
        (images / "000003.jpg").unlink()
    elif case == "empty split":
        partition.write_text(partition.read_text().replace(" 1\n", " 0\n"))
    elif case == "zero-byte file":
        (images / "000004.jpg").write_bytes(b"")
    elif case == "truncated JPEG":
        (images / "000004.jpg").write_bytes((images / "000004.jpg").read_bytes()[:300])
    elif case == "text file named .jpg":
        (images / "000004.jpg").write_text("this is not an image")


DATA_CASES = {
    "root missing": "does not exist",
    "partition missing": "missing list_eval_partition.txt",
    "partition wrong column count": "list_eval_partition.txt, line 21",
    "partition label not 0/1/2": "list_eval_partition.txt, line 2",
    "partition duplicate name": "000002.jpg is listed twice",
    "partition names absent images": "lists 1 train images that are not in",
    "empty split": "lists no val images",
    "zero-byte file": "img_align_celeba/000004.jpg: ",
    "truncated JPEG": "img_align_celeba/000004.jpg: ",
    "text file named .jpg": "img_align_celeba/000004.jpg: ",
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data(workspace, capsys, case):
    break_data(workspace / "celeba", case)
    fails_cleanly(capsys, "train", ["--config", str(workspace / "config.json")], DATA_CASES[case], workspace)


def test_decompression_bomb_is_refused(workspace, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # our 178x218 test images count as huge
    fails_cleanly(capsys, "train", ["--config", str(workspace / "config.json")], "decompression bomb", workspace)


def test_odd_formats_are_not_errors(tmp_path):
    make_celeba(tmp_path / "celeba", counts=(12, 4, 4), modes={0: "L", 1: "RGBA", 2: "P", 3: "CMYK"})
    images = tmp_path / "celeba" / "img_align_celeba"
    Image.open(images / "000005.jpg").save(images / "000005.jpg", format="WEBP")  # WebP named .jpg
    tiny_config(tmp_path, data={"dataset": "celeba"})
    train.main(["--config", str(tmp_path / "config.json")])
    assert (tmp_path / "checkpoints" / "best_vae.pth").exists()


# ----------------------------------------------------------------------------- config

CONFIG_CASES = {
    "config missing": (None, "config file", "not found"),
    "invalid JSON": ('{"train": {"epochs": 2,}}', "invalid JSON at line 1, column 24", None),
    "unknown key": ('{"train": {"epochz": 2}}', "unknown config key 'train.epochz'", None),
    "wrong type": ('{"train": {"epochs": "two"}}', "'train.epochs' must be int", None),
    "impossible value": ('{"train": {"lr": -1}}', "'train.lr' must be greater than 0", None),
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config(workspace, capsys, script, case):
    content, expected, also = CONFIG_CASES[case]
    path = workspace / "bad.json"
    if content is not None:
        path.write_text(content)
    args = ["--config", str(path)]
    if script in USES_CHECKPOINT:
        args += ["--checkpoint", str(workspace / "checkpoints" / "best_vae.pth")]
    fails_cleanly(capsys, script, args, expected, workspace)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_override(workspace, capsys, script):
    args = ["--config", str(workspace / "config.json"), "train.beta=-1"]
    fails_cleanly(capsys, script, args, "'train.beta' must be 0 or more, got -1", workspace)


# ----------------------------------------------------------------------------- checkpoints

def break_checkpoint(path, case: str, trained) -> None:
    if case == "missing":
        path.unlink()
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "not a checkpoint":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif case == "other latent size":
        state = torch.load(path, weights_only=False)
        state["config"]["model"]["latent_dim"] = 3
        torch.save(state, path)
    elif case == "other architecture":
        state = torch.load(path, weights_only=False)
        state["config"]["model"]["hidden_dims"] = [8, 16, 32, 64]
        state["config"]["data"]["image_size"] = 16
        torch.save(state, path)


CHECKPOINT_CASES = {"missing": "not found", "truncated": "unreadable or truncated",
                    "not a checkpoint": "not a checkpoint of this repo's VAE",
                    "other latent size": "does not match the VAE its config describes (size mismatch for ",
                    "other architecture": "does not match the VAE its config describes"}


@pytest.mark.parametrize("script", USES_CHECKPOINT)
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(workspace, capsys, trained, script, case):
    path = workspace / "given.pth"
    path.write_bytes(trained["checkpoint"].read_bytes())
    break_checkpoint(path, case, trained)
    fails_cleanly(capsys, script, ["--checkpoint", str(path), f"paths.results_dir={workspace / 'results'}"],
                  CHECKPOINT_CASES[case], workspace)


def test_resume_from_a_broken_checkpoint(workspace, capsys):
    (workspace / "checkpoints" / "last_vae.pth").write_bytes(b"\x80garbage")
    fails_cleanly(capsys, "train", ["--config", str(workspace / "config.json"), "--resume"],
                  "unreadable or truncated", workspace)


# ----------------------------------------------------------------------------- output directories

@pytest.mark.parametrize("script", ["train", "evaluate", "inference", "analyze_failures"])
def test_results_dir_not_writable(workspace, capsys, script):
    blocked = workspace / "results" / "metrics.json" / "sub"  # a directory under a file cannot exist
    args = ["--config", str(workspace / "config.json"), f"paths.results_dir={blocked}"]
    if script in USES_CHECKPOINT:
        args += ["--checkpoint", str(workspace / "checkpoints" / "best_vae.pth")]
    fails_cleanly(capsys, script, args, "cannot create paths.results_dir", workspace)


def test_checkpoint_dir_not_writable(workspace, capsys):
    blocked = workspace / "results" / "history.json" / "ckpt"
    fails_cleanly(capsys, "train", ["--config", str(workspace / "config.json"), f"paths.checkpoint_dir={blocked}"],
                  "cannot create paths.checkpoint_dir", workspace)
