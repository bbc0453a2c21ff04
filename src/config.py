"""Configuration: one typed schema, JSON files for values, dotted overrides on the command line.

    python train.py --config config/config.json train.epochs=3 data.root=/data/celeba

The dataclasses below are the schema and the defaults (the CelebA setup). A config file
sets any subset of keys; an override `section.key=value` parses `value` as JSON when it
can (numbers, true/false, lists) and as a plain string otherwise. Unknown keys, wrong
types and impossible values raise ConfigError with a one-line message naming the key.
"""

import copy
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from src.errors import ConfigError
from src.files import read_json
from src.model import CONDITIONINGS, UPSAMPLES

# The default config lives in the repo, so scripts find it from any working directory.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.json"
DATASETS = ("celeba", "folder", "synthetic")
DEVICES = ("auto", "cuda", "mps", "cpu")
RECON_LOSSES = ("mse_sum", "gaussian")
LR_SCHEDULES = ("exponential", "cosine")
UNLABELLED = ("drop", "labeller")   # train.unlabelled: what a conditional model does with unlabelled images
ALL_LABELS = "all"   # model.conditional=["all"]: every label of the training data (saved as their names)


@dataclass
class DataConfig:
    dataset: str = "celeba"              # celeba | folder | synthetic
    root: str = "data/celeba"            # CelebA root (any supported layout) or image folder
    image_size: int = 64
    center_crop: int = 148               # crop of the 178-px-wide aligned frame; 0 = largest centred square
    cache_dir: str = "data/cache"        # decoded uint8 arrays, one per split
    num_workers: int = 4                 # processes that decode images when a cache is built
    hflip: bool = False                  # random horizontal flips of training images (on the device)
    align: bool = False                  # folder: find each photo's face and align it like CelebA (src/faces.py)
    synthetic_train: int = 8000          # synthetic faces per split
    synthetic_val: int = 500
    synthetic_test: int = 500
    synthetic_seed: int = 42             # the faces drawn (apart from train.seed: other seeds, same faces)


@dataclass
class ModelConfig:
    latent_dim: int = 128
    hidden_dims: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    batch_norm: bool = True
    upsample: str = "transpose"          # decoder upsampling: transpose (the baseline's) | nearest | bilinear (+ 3x3 conv)
    decoder_dims: list[int] = field(default_factory=list)  # decoder widths from the bottleneck up; [] = mirror
    res_blocks: int = 0                  # residual blocks after each decoder upsampling stage
    conditional: list[str] = field(default_factory=list)  # labels the decoder is given (a conditional VAE); [] = none
    condition: str = "both"              # where they enter the decoder: input (with z) | film (every stage) | both
    condition_encoder: bool = False      # the encoder sees them too: q(z | x, y)


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "exponential"     # exponential (x lr_gamma per epoch) | cosine (per step, to 0)
    lr_gamma: float = 0.95               # exponential: learning rate is multiplied by this after each epoch
    warmup_steps: int = 0                # linear learning-rate warm-up over this many optimizer steps
    ema_decay: float = 0.0               # exponential moving average of the weights (e.g. 0.999), used for
                                         # validation, evaluation and sampling; 0 = off
    beta: float = 1.2                    # weight of the KL term
    adversary: float = 0.0               # conditional: weight of a Fader-style adversary that keeps the labels
                                         # out of the codes (src/adversary.py); 0 = off
    label_loss: float = 0.0              # conditional: weight of the labeller's cross-entropy on faces decoded with
                                         # another image's labels (src/label_loss.py); 0 = off
    unlabelled: str = "drop"             # conditional: training images without labels are left out (drop) or
                                         # take the labeller's (labeller)
    recon_loss: str = "mse_sum"          # mse_sum (the baseline's) | gaussian (calibrated sigma, loss in nats)
    sigma_min: float = 0.0025            # gaussian: soft floor on the calibrated sigma (sigma-VAE: exp(-6) = 0.00248)
    grad_clip: float = 1.0               # max gradient norm; 0 disables clipping
    seed: int = 42
    device: str = "auto"                 # auto = cuda, else mps, else cpu
    bf16: bool | str = "auto"            # bf16 autocast: "auto" = where native (CUDA GPUs, CPUs with AVX512-BF16/AMX)
    channels_last: bool = True           # NHWC memory layout: faster convolutions on CUDA and CPU
    compile: bool = False                # torch.compile the model (slow start, faster steps)
    threads: int | str = "auto"          # CPU threads of PyTorch: a count, or "auto" = measured (src/threads.py)
    log_every: int = 10                  # steps between progress-bar updates (and CUDA finite checks)


@dataclass
class PathsConfig:
    checkpoint_dir: str = "checkpoints"
    results_dir: str = "results"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _type_ok(value: object, annotation: object) -> bool:
    """isinstance for the few annotations the schema uses (int, float, str, bool, list[int], X | str)."""
    if isinstance(annotation, types.UnionType):
        return any(_type_ok(value, option) for option in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item_type) for v in value)
    if annotation is float:  # an int is a fine float; a bool is not a number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _type_name(annotation: object) -> str:
    if isinstance(annotation, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(annotation))
    return str(annotation).replace("typing.", "") if typing.get_origin(annotation) else annotation.__name__


def _set_key(cfg: Config, dotted: str, value: object, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    sections = {f.name: f for f in fields(Config)}
    if section_name not in sections or not key:
        raise ConfigError(f"{source}: unknown config key '{dotted}'; keys look like "
                          f"section.key with section one of {', '.join(sections)}")
    section = getattr(cfg, section_name)
    keys = {f.name: f for f in fields(section)}
    if key not in keys:
        raise ConfigError(f"{source}: unknown config key '{dotted}'; {section_name} has "
                          f"{', '.join(keys)}")
    annotation = keys[key].type
    if not _type_ok(value, annotation):
        raise ConfigError(f"{source}: config key '{dotted}' must be {_type_name(annotation)}, "
                          f"got {json.dumps(value)}")
    if annotation is float:
        value = float(value)
    setattr(section, key, value)


def _read_json(path: Path) -> dict:
    missing = ConfigError(f"config file '{path}' not found; name an existing file (e.g. config/config.json or "
                          "config/quickstart.json)")
    raw = read_json(path, missing, f"{path}: invalid JSON at line {{line}}, column {{column}}: {{msg}}", ConfigError)
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: expected an object of sections, like "
                          '{"train": {"epochs": 15}}')
    return raw


def parse_override(text: str) -> tuple[str, object]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003); a value that is not JSON stays a string."""
    key, eq, raw = text.partition("=")
    if not eq or not key:
        raise ConfigError(f"override '{text}' is not of the form section.key=value "
                          "(e.g. train.epochs=3)")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def check_values(cfg: Config) -> None:
    """Reject values no run could use, naming the key and what is allowed."""
    d, m, t = cfg.data, cfg.model, cfg.train
    checks = [
        (d.dataset in DATASETS, "data.dataset", f"one of {', '.join(DATASETS)}"),
        (d.image_size >= 8, "data.image_size", "at least 8"),
        (0 <= d.center_crop <= 178, "data.center_crop", "between 0 and 178 (0 = largest centred square)"),
        (d.num_workers >= 0, "data.num_workers", "0 or more"),
        (not d.align or d.dataset == "folder", "data.align",
         "false unless data.dataset is folder (CelebA's images are aligned already; no detector reads the "
         "synthetic faces)"),
        (min(d.synthetic_train, d.synthetic_val, d.synthetic_test) >= 1,
         "data.synthetic_*", "at least 1 image per split"),
        (d.synthetic_seed >= 0, "data.synthetic_seed", "0 or more"),
        (m.latent_dim >= 1, "model.latent_dim", "at least 1"),
        (len(m.hidden_dims) >= 1 and min(m.hidden_dims) >= 1, "model.hidden_dims",
         "a non-empty list of positive channel counts"),
        (m.upsample in UPSAMPLES, "model.upsample", f"one of {', '.join(UPSAMPLES)}"),
        (not m.decoder_dims or (len(m.decoder_dims) == len(m.hidden_dims) and min(m.decoder_dims) >= 1),
         "model.decoder_dims", "[] (the encoder's widths, mirrored) or one positive width per model.hidden_dims entry"),
        (m.res_blocks >= 0, "model.res_blocks", "0 or more"),
        (len(set(m.conditional)) == len(m.conditional), "model.conditional", "a list of distinct attribute names"),
        (m.condition in CONDITIONINGS, "model.condition", f"one of {', '.join(CONDITIONINGS)}"),
        (not m.conditional or d.dataset != "folder", "model.conditional",
         "[] for data.dataset=folder (a plain folder has no labels to condition on; use CelebA with "
         "list_attr_celeba.txt or the synthetic faces)"),
        (t.epochs >= 1, "train.epochs", "at least 1"),
        (t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"one of {', '.join(LR_SCHEDULES)}"),
        (t.warmup_steps >= 0, "train.warmup_steps", "0 or more"),
        (0 <= t.ema_decay < 1, "train.ema_decay", "in [0, 1) (0 = off; e.g. 0.999)"),
        (t.batch_size >= 1, "train.batch_size", "at least 1"),
        (t.lr > 0, "train.lr", "greater than 0"),
        (0 < t.lr_gamma <= 1, "train.lr_gamma", "in (0, 1]"),
        (t.beta >= 0, "train.beta", "0 or more"),
        (t.unlabelled in UNLABELLED, "train.unlabelled", f"one of {', '.join(UNLABELLED)}"),
        (t.adversary >= 0 and (t.adversary == 0 or bool(m.conditional)), "train.adversary",
         "0, or more when model.conditional names labels (it keeps them out of the codes)"),
        (t.label_loss >= 0 and (t.label_loss == 0 or bool(m.conditional)), "train.label_loss",
         "0, or more when model.conditional names labels (it teaches the decoder to draw them)"),
        (t.recon_loss in RECON_LOSSES, "train.recon_loss", f"one of {', '.join(RECON_LOSSES)}"),
        (0 < t.sigma_min < 1, "train.sigma_min", "in (0, 1)"),
        (t.grad_clip >= 0, "train.grad_clip", "0 (off) or more"),
        (t.device in DEVICES, "train.device", f"one of {', '.join(DEVICES)}"),
        (t.bf16 in (True, False, "auto"), "train.bf16", 'true, false or "auto"'),
        (t.log_every >= 1, "train.log_every", "at least 1"),
        (t.threads == "auto" or (isinstance(t.threads, int) and t.threads >= 1), "train.threads",
         '"auto" or a count of at least 1'),
    ]
    for ok, key, allowed in checks:
        if not ok:
            value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1], "...")
            raise ConfigError(f"config key '{key}' must be {allowed}, got {json.dumps(value)}")
    # Each conv halves the image; the decoder mirrors the encoder, so the size must divide evenly.
    downsample = 2 ** len(m.hidden_dims)
    if d.image_size % downsample:
        raise ConfigError(
            f"config key 'data.image_size' = {d.image_size} does not fit model.hidden_dims "
            f"({len(m.hidden_dims)} stride-2 layers): it must be a multiple of {downsample}, "
            f"e.g. {downsample * max(1, round(d.image_size / downsample))}")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                base: Config | None = None) -> Config:
    """Validated config: `base` (or the defaults), then the file's values, then the overrides.

    Without a base, the file defaults to config/config.json; with one (e.g. the config stored in a
    checkpoint), a file is applied only when given.
    """
    cfg = copy.deepcopy(base) if base else Config()
    if path is not None or base is None:
        path = Path(path or DEFAULT_CONFIG)
        for section, values in _read_json(path).items():
            for key, value in values.items():
                _set_key(cfg, f"{section}.{key}", value, str(path))
    for text in overrides:
        key, value = parse_override(text)
        _set_key(cfg, key, value, "override")
    check_values(cfg)
    return cfg


def config_from_dict(raw: dict) -> Config:
    """Rebuild a Config saved in a checkpoint (keys that no longer exist are an error)."""
    cfg = Config()
    for section, values in raw.items():
        for key, value in values.items():
            _set_key(cfg, f"{section}.{key}", value, "checkpoint config")
    check_values(cfg)
    return cfg
