"""An independent judge of latent edits: a small CNN that reads attributes from pixels.

Whether "add glasses" worked must not be judged by the VAE itself, so a separate classifier (four
conv layers and a logistic output per attribute indicator, sharing the conv features) is trained
once per data set on its labelled training images and cached. Every tenth labelled image is held
out of its training. The loss weighs each attribute's positives by its negatives/positives ratio,
so the 0.5 decision is a balanced one even for rare attributes (Eyeglasses: 7% of CelebA).
src/editing.py uses it to score edits: success and preservation.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src.attributes import held_out_mask
from src.batches import iterate_batches
from src.cache import cached
from src.device import to_device
from src.threads import timed

JUDGE_EPOCHS = 12
JUDGE_BATCH = 128
JUDGE_LR = 2e-3
JUDGE_VERSION = 3            # part of the cache key: bump when the network or its training changes
ROLES = {"judge": ("edit judge", 0),           # role -> (name, seed). The labeller, a second network of the
         "labeller": ("attribute labeller", 1)}  # same kind, gives a conditional VAE the labels of new images


class Judge(nn.Module):
    """Images in [0, 1] -> one logit per attribute indicator."""

    def __init__(self, outputs: int, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, and for half the batches a Gaussian blur of random width (sigma 0.2 to
    1 px at 64 px): decoded faces are blurrier than photos, and the judge must read attributes, not
    sharpness (wider blurs erase thin glasses frames and only teach it to guess)."""
    from torchvision.transforms.functional import gaussian_blur  # a second to import: only when training a judge
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)
    if torch.rand(1, generator=generator).item() < 0.5:
        sigma = (0.2 + 0.8 * torch.rand(1, generator=generator).item()) * x.shape[-1] / 64
        x = gaussian_blur(x, kernel_size=2 * math.ceil(2 * sigma) + 1, sigma=sigma)
    return x


@torch.enable_grad()  # callers may run under no_grad (inference.py does)
def fit_judge(images: np.ndarray, labels: np.ndarray, device: torch.device, seed: int = 0,
              name: str = "edit judge") -> Judge:
    """Train a Judge on uint8 images (N, 3, H, W) and 0/1/NaN labels (N, A); NaN labels add no loss."""
    torch.manual_seed(seed)
    judge = Judge(labels.shape[1]).to(device)
    steps_per_epoch = math.ceil(len(images) / JUDGE_BATCH)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=JUDGE_LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, JUDGE_LR, total_steps=JUDGE_EPOCHS * steps_per_epoch)
    known = ~np.isnan(labels)
    positives = np.nansum(labels, axis=0)
    pos_weight = to_device(torch.tensor((known.sum(0) - positives) / np.maximum(positives, 1),
                                        dtype=torch.float32), device)
    targets = torch.from_numpy(np.nan_to_num(labels)).float()
    mask = torch.from_numpy(known).float()
    generator = torch.Generator().manual_seed(seed)
    judge.train()
    for _ in tqdm(range(JUDGE_EPOCHS), desc=f"training the {name}", unit="epoch"):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), JUDGE_BATCH):
            index = order[start:start + JUDGE_BATCH].sort().values.numpy()
            x = augment(to_device(torch.from_numpy(images[index]), device).float().div_(255), generator)
            with timed(len(index), "judge step"):
                loss = F.binary_cross_entropy_with_logits(judge(x), to_device(targets[index], device),
                                                          reduction="none", pos_weight=pos_weight)
                loss = (loss * to_device(mask[index], device)).sum() / mask[index].sum().clamp_min(1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            schedule.step()
    return judge.eval()


@torch.no_grad()
def judge_probabilities(judge: Judge, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """(N, A) probabilities, CPU, of float images in [0, 1] (a tensor) or uint8 images (an array)."""
    device = next(judge.parameters()).device
    if isinstance(images, np.ndarray):
        batches = iterate_batches(images, batch_size, device)
    else:
        batches = (to_device(images[i:i + batch_size], device) for i in range(0, len(images), batch_size))
    return torch.cat([torch.sigmoid(judge(x)).cpu() for x in batches])


def accuracy(judge: Judge, images: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, dict]:
    """Per attribute, on the images whose label is known: accuracy, balanced accuracy, images."""
    decided = (judge_probabilities(judge, images) > 0.5).numpy()
    out = {}
    for a, name in enumerate(names):
        known = ~np.isnan(labels[:, a])
        truth, guess = labels[known, a] == 1, decided[known, a]
        rates = [np.mean(guess[truth == side] == side) for side in (True, False) if (truth == side).any()]
        out[name] = {"accuracy": float(np.mean(guess == truth)) if known.any() else math.nan,
                     "balanced_accuracy": float(np.mean(rates)) if rates else math.nan, "images": int(known.sum())}
    return out


def trained_judge(train_images: np.ndarray, labels: np.ndarray, names: list[str], data_id: str,
                  cache_dir: str | Path, device: torch.device, role: str = "judge") -> Judge:
    """The judge (or, role "labeller", the labeller) of this data set: read from cache_dir when it was
    trained on the same data and attributes, else trained (on the labelled training images but the
    held-out ones) and cached."""
    name, seed = ROLES[role]
    key = json.dumps({"data": data_id, "names": names, "version": JUDGE_VERSION, "epochs": JUDGE_EPOCHS,
                      **({"role": role} if role != "judge" else {})})  # the judge's caches stay valid
    path = Path(cache_dir) / f"{role}-{data_id[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.pt"

    def train() -> dict[str, torch.Tensor]:
        rows = ~held_out_mask(labels) & ~np.isnan(labels).all(axis=1)
        print(f"training the {name} on {rows.sum()} labelled training images ({len(names)} attributes) ...")
        judge = fit_judge(np.asarray(train_images)[rows], labels[rows], device, seed, name)
        return {k: v.cpu() for k, v in judge.state_dict().items()}

    def read(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["key"], saved["model"]

    state = cached(path, key, train, read, lambda f, key_text, weights: torch.save({"key": key_text, "model": weights},
                                                                                     f), redo="retraining")
    judge = Judge(len(names))
    judge.load_state_dict(state)
    return judge.to(device).eval()
