import json
from dataclasses import asdict

import pytest

from src.config import Config, load_config, parse_override
from src.errors import ConfigError

# Keys added after the original specification: config/config.json stays the baseline's file, and these
# default to its behaviour.
ADDED_SINCE_THE_SPECIFICATION = {
    "data": {"align"},
    "model": {"upsample", "decoder_dims", "res_blocks", "conditional", "condition", "condition_encoder"},
    "train": {"threads", "lr_schedule", "warmup_steps", "ema_decay", "adversary", "label_loss", "unlabelled"}}


def test_config_json_is_the_baseline_with_the_schema_defaults():
    """config/config.json is the baseline's CelebA setup: every key of its time, with the schema's default value."""
    with open("config/config.json") as f:
        raw = json.load(f)
    expected = asdict(Config())
    for key in ("synthetic_train", "synthetic_val", "synthetic_test", "synthetic_seed"):  # quickstart-only keys
        del expected["data"][key]
    for section, keys in ADDED_SINCE_THE_SPECIFICATION.items():
        for key in keys:
            del expected[section][key]
    assert raw == expected


def test_quickstart_is_synthetic_and_valid():
    cfg = load_config("config/quickstart.json")
    assert cfg.data.dataset == "synthetic"
    assert cfg.model.hidden_dims == [32, 64, 128, 256, 512]


def test_faces_recipe_is_the_baseline_plus_its_levers():
    """config/faces.json changes only what the faces recipe names, and writes beside the baseline's run."""
    faces, seed = asdict(load_config("config/faces.json")), asdict(load_config("config/config.json"))
    changed = {(section, key): value for section in seed for key, value in faces[section].items()
               if seed[section][key] != value}
    assert changed == {("data", "hflip"): True, ("train", "epochs"): 28, ("train", "batch_size"): 64,
                       ("train", "recon_loss"): "gaussian", ("train", "ema_decay"): 0.998,
                       ("paths", "checkpoint_dir"): "checkpoints/faces", ("paths", "results_dir"): "results/faces"}


@pytest.mark.parametrize("name", ["faces.json", "quickstart.json"])
def test_other_configs_hold_only_what_differs_from_the_baseline(name):
    """Every key a config sets differs from config/config.json's value (which is the schema default),
    so the file reads as what it changes."""
    baseline = asdict(load_config("config/config.json"))
    with open(f"config/{name}") as f:
        raw = json.load(f)
    same = [f"{section}.{key}" for section, values in raw.items() for key, value in values.items()
            if baseline[section][key] == value]
    assert raw and not same


@pytest.mark.parametrize("text, key, value", [
    ("train.epochs=3", "train.epochs", 3),
    ("train.lr=3e-4", "train.lr", 3e-4),
    ("train.bf16=false", "train.bf16", False),
    ("model.hidden_dims=[16,32]", "model.hidden_dims", [16, 32]),
    ("data.root=/data/celeba", "data.root", "/data/celeba"),
    ("data.root=123abc", "data.root", "123abc"),
])
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_overrides_apply_and_int_is_accepted_for_float():
    cfg = load_config("config/config.json", ["train.epochs=2", "train.lr=1", "data.root=/x/y"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.root) == (2, 1.0, "/x/y")
    assert isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("trian.epochs=3", "unknown config key 'trian.epochs'"),
    ("epochs=3", "unknown config key 'epochs'"),
    ("train.epochs=three", "'train.epochs' must be int"),
    ("train.epochs=2.5", "'train.epochs' must be int"),
    ("train.bf16=1", "'train.bf16' must be bool"),
    ("model.hidden_dims=[32,\"x\"]", "'model.hidden_dims' must be list[int]"),
    ("train.epochs=0", "'train.epochs' must be at least 1"),
    ("train.lr=0", "'train.lr' must be greater than 0"),
    ("train.beta=-1", "'train.beta' must be 0 or more"),
    ("model.latent_dim=0", "'model.latent_dim' must be at least 1"),
    ("data.dataset=imagenet", "'data.dataset' must be one of celeba, folder, synthetic"),
    ("train.device=tpu", "'train.device' must be one of"),
    ("data.image_size=100", "'data.image_size' = 100 does not fit model.hidden_dims"),
    ("train.epochs", "not of the form section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_config("config/config.json", [override])
    assert "\n" not in str(e.value)


def test_json_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "train": {"epochs": 3,}\n}\n')
    with pytest.raises(ConfigError, match=r"broken.json: invalid JSON at line 2, column 25"):
        load_config(path)


def test_missing_file_and_unknown_key_in_file(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.json' not found"):
        load_config(tmp_path / "nope.json")
    path = tmp_path / "c.json"
    path.write_text('{"train": {"epochs": 3, "lerning_rate": 0.1}}')
    with pytest.raises(ConfigError, match=r"c.json: unknown config key 'train.lerning_rate'; train has epochs"):
        load_config(path)
