import argparse

import pytest
import torch

from src.errors import CheckpointError, ConfigError
from src.model import build_model
from src.utils import load_checkpoint, load_trained, model_from_checkpoint, save_checkpoint
from tests.conftest import tiny_config


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
        return argparse.Namespace(config=None, overrides=list(overrides), checkpoint=str(path))

    model, loaded, state, _ = load_trained(args())
    assert loaded == cfg and model.latent_dim == 6 and not model.training
    _, loaded, _, _ = load_trained(args("data.root=/elsewhere", "data.dataset=folder"))
    assert (loaded.data.root, loaded.data.dataset) == ("/elsewhere", "folder")
    with pytest.raises(ConfigError, match="fixed by the checkpoint"):
        load_trained(args("model.latent_dim=3"))
