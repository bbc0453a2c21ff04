import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from src.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_trained, model_from_checkpoint, save_checkpoint
from src.errors import CheckpointError, ConfigError, run_cli
from src.model import build_model
from src.rng import rng_state, seed_everything, set_rng_state
from tests.conftest import tiny_config
from tools import convert_checkpoint as checkpoint_module
from tools.convert_checkpoint import convert_old_checkpoint


def write_checkpoint(tmp_path, **model):
    cfg = tiny_config(tmp_path, model=model)
    path = tmp_path / "checkpoints" / "best_vae.pth"
    path.parent.mkdir(exist_ok=True)
    save_checkpoint({"model": build_model(cfg.model, cfg.data.image_size).state_dict(), "epoch": 3,
                     "config": cfg.to_dict()}, path)
    return path, cfg


def test_round_trip_leaves_no_temporary_files(tmp_path):
    path, cfg = write_checkpoint(tmp_path)
    state = load_checkpoint(path)
    model, loaded_cfg = model_from_checkpoint(state, path)
    assert state["epoch"] == 3 and loaded_cfg == cfg
    assert [p.name for p in path.parent.iterdir()] == ["best_vae.pth"]


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path, _ = write_checkpoint(tmp_path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"model": lambda: None}, path)  # cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["best_vae.pth"]


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found; train one first"):
        load_checkpoint(tmp_path / "none.pth")
    path, _ = write_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this repo's VAE"):
        load_checkpoint(path)
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(path)


def test_weights_of_another_architecture(tmp_path):
    path, cfg = write_checkpoint(tmp_path, latent_dim=8)
    state = load_checkpoint(path)
    state["config"]["model"]["latent_dim"] = 4  # config and weights disagree
    with pytest.raises(CheckpointError, match="does not match the VAE its config describes"):
        model_from_checkpoint(state, path)


def test_load_trained_uses_the_checkpoint_config_then_overrides(tmp_path, monkeypatch):
    path, cfg = write_checkpoint(tmp_path, latent_dim=6)
    monkeypatch.chdir(tmp_path)  # no --config: the checkpoint's own config applies

    def args(*overrides):
        return str(path), None, list(overrides)

    model, loaded, state, _ = load_trained(*args())
    assert loaded == cfg and model.latent_dim == 6 and not model.training
    _, loaded, _, _ = load_trained(*args("data.root=/elsewhere", "data.dataset=folder"))
    assert (loaded.data.root, loaded.data.dataset) == ("/elsewhere", "folder")
    with pytest.raises(ConfigError, match="fixed by the checkpoint"):
        load_trained(*args("model.latent_dim=3"))


# ----------------------------------------------------------------------------- nothing in a file runs

class RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "bare pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "best_vae.pth"
    payload = {"format": CHECKPOINT_FORMAT, "model": RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refused, nothing in it was run"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        convert_old_checkpoint(path)  # the conversion allows numpy arrays, never calls
    assert not marker.exists()


def old_format_checkpoint(tmp_path):
    """A conv-vae/1 file as the previous version wrote it: RNG states as numpy arrays and tuples."""
    path, cfg = write_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    state["format"] = "conv-vae/1"
    state["rng"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(state, path)
    return path


def test_an_old_checkpoint_says_how_to_convert_it_and_converts(tmp_path, capsys):
    path = old_format_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"older version of this repo .*python -m tools.convert_checkpoint"):
        load_checkpoint(path)
    before = path.read_bytes()
    run_cli(checkpoint_module.main, [str(path)])
    assert "converted" in capsys.readouterr().out
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and path.with_name("best_vae.pth.v1").read_bytes() == before
    set_rng_state(state["rng"])
    np.random.seed(0)  # the restored numpy state is a usable one
    model_from_checkpoint(state, path)


def test_rng_state_restores_the_same_whatever_the_map_location(tmp_path):
    """Resume state read with map_location=cuda once broke torch.set_rng_state; RNG states are now
    plain integers, which no map_location moves (meta stands in for a GPU here)."""
    seed_everything(5)
    path = tmp_path / "last_vae.pth"
    save_checkpoint({"rng": rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    for map_location in ("cpu", "meta"):
        state = torch.load(path, map_location=map_location, weights_only=True)
        set_rng_state(state["rng"], torch.device("cpu"))
        got = (random.random(), np.random.rand(), torch.rand(3))
        assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_cuda_rng_is_saved_and_restored_for_this_device_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.arange(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored every GPU"))
    device = torch.device("cuda", 1)  # rank 1 of a job: its GPU may not exist in a run with fewer GPUs
    state = rng_state(device)
    assert state["cuda"] == list(range(16))
    set_rng_state(state, device)
    assert len(calls) == 1 and calls[0][1] == device and calls[0][0].tolist() == list(range(16))
    set_rng_state(state, torch.device("cpu"))  # resumed on a CPU: the GPU state is simply unused
    assert len(calls) == 1


def test_checkpoints_with_and_without_the_new_keys_load(tmp_path):
    """A checkpoint written before the faces recipe's options (its config lacks them) loads as the baseline's
    model; one that kept a moving average of its weights is evaluated with that average."""
    import train
    cfg = tiny_config(tmp_path, model={"upsample": "nearest", "res_blocks": 1}, train={"ema_decay": 0.5})
    train.main(["--config", str(tmp_path / "config.json")])
    state = load_checkpoint(Path(cfg.paths.checkpoint_dir) / "best_vae.pth")
    assert set(state["ema"]) >= set(state["model"]) and state["ema_updates"] > 0
    model, _ = model_from_checkpoint(state)
    ema_weight = state["ema"]["decoder.0.0.1.weight"]
    assert torch.equal(model.state_dict()["decoder.0.0.1.weight"], ema_weight)
    assert not torch.equal(ema_weight, state["model"]["decoder.0.0.1.weight"])

    old = {k: v for k, v in state.items() if k not in ("ema", "ema_updates")}
    old["config"] = json.loads(json.dumps(state["config"]))
    for section, keys in {"model": ("upsample", "decoder_dims", "res_blocks"),
                          "train": ("lr_schedule", "warmup_steps", "ema_decay")}.items():
        for key in keys:
            del old["config"][section][key]
    (tmp_path / "seed").mkdir()
    seed_model = tiny_config(tmp_path / "seed")
    old["model"] = build_model(seed_model.model, seed_model.data.image_size).state_dict()
    model, cfg = model_from_checkpoint(old)
    assert (cfg.model.upsample, cfg.model.res_blocks, cfg.train.ema_decay) == ("transpose", 0, 0.0)
