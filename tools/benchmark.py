"""Training throughput: pure compute vs this project's data path vs a naive JPEG DataLoader.

    python -m tools.benchmark data.root=/path/to/celeba
    python -m tools.benchmark data.root=/data/celeba --batch-size 512 --steps 200 --device cuda

Same model, batch size and data for all three:
  (1) compute: training steps on one fixed batch already on the device (the ceiling);
  (2) project: one epoch of train.py over the train split (uint8 cache, the real loop), in a
      subprocess, whose peak RSS is the peak of a real training run;
  (3) naive:   a torchvision-style Dataset that opens, decodes, crops and resizes each JPEG with
      PIL, through a DataLoader with num_workers = CPU cores.
Prints images/s, the ratios (2)/(1) and (2)/(3), peak memory, and writes results/benchmark.json.
(1) runs before and after (2) and reports the mean: a shared machine's speed drifts by several
percent over minutes. The data paths alone (no training) are timed too: where compute dominates a
step, as on a small CPU, they show what the ratio (2)/(3) cannot. Thread counts: tools/thread_counts.py.
"""

import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from src.batches import Batches
from src.celeba import SPLITS, find_celeba, read_partition
from src.cli import argument_parser
from src.config import load_config
from src.dataset import load_split
from src.device import choose_bf16, pick_device, to_device
from src.errors import UserError, run_cli
from src.files import atomic_json, ensure_writable_dir
from src.images import preprocess
from src.model import build_model
from src.training import train_step

REPO = Path(__file__).resolve().parent.parent


class NaiveCelebA(Dataset):
    """What most VAE repos do: decode, crop and resize every JPEG on every epoch."""

    def __init__(self, root: Path, split: str, image_size: int, center_crop: int):
        source, partition_path, _ = find_celeba(root)
        if source.is_zip:
            raise UserError("the naive benchmark path needs extracted JPEGs, not img_align_celeba.zip")
        self.paths = [source.path / n for n, s in sorted(read_partition(partition_path).items()) if s == SPLITS[split]]
        self.image_size, self.center_crop = image_size, center_crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Decode, crop and resize (the project's own preprocess, so both paths see the same pixels)."""
        with Image.open(self.paths[i]) as img:
            return torch.tensor(preprocess(img, self.image_size, self.center_crop)).float().div_(255)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(batches, device: torch.device, steps: int, step=lambda x: None, warmup: int = 3) -> float:
    """Images/s of `step` (a training step, or nothing: the data path alone) over `steps` batches
    after `warmup` untimed ones."""
    iterator = iter(batches)
    images, start = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        x = to_device(next(iterator), device)
        step(x)
        images += len(x) if i >= warmup else 0
    sync(device)
    return images / (time.perf_counter() - start)


def endless(batches) -> Iterator[torch.Tensor]:
    """Batches of epoch after epoch (so tiny data never runs out of steps); Batches or a DataLoader."""
    for epoch in itertools.count():
        yield from batches.epoch(epoch) if isinstance(batches, Batches) else batches


def project_path(args, cfg, batch_size: int, device: torch.device) -> dict:
    """One epoch of the real train.py, in a subprocess (outputs in a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "train.py"), *(["--config", args.config] if args.config else []),
               *args.overrides, "train.epochs=1", f"train.batch_size={batch_size}", f"train.device={device.type}",
               f"paths.checkpoint_dir={tmp}", f"paths.results_dir={tmp}"]
        subprocess.run(cmd, check=True, cwd=Path.cwd(), stdout=subprocess.DEVNULL)
        epoch = json.loads((Path(tmp) / "history.json").read_text())[0]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    return {"images_per_second": epoch["images_per_second"], "epoch_seconds": epoch["epoch_seconds"],
            "peak_rss_gb": peak_rss_gb, "peak_gpu_memory_gb": epoch.get("peak_gpu_memory_gb")}


def update_report(path: Path, part: dict) -> Path:
    """Merge `part` into results/benchmark.json (the three-path figures and the thread figures share it)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {}
    report = (report if isinstance(report, dict) else {}) | part
    return atomic_json(path, report)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps for paths (1) and (3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: train.device)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    batch_size = args.batch_size or cfg.train.batch_size
    if cfg.data.dataset == "synthetic":
        raise UserError("the benchmark compares JPEG pipelines: use CelebA (data.dataset=celeba data.root=...)")
    device = pick_device(args.device or cfg.train.device)
    amp, amp_reason = choose_bf16(cfg.train.bf16, device)
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def training_step():
        """A fresh model's train.py step on a batch (made channels_last like train.py's batches)."""
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, cfg.data.image_size).to(device, memory_format=memory_format)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        return lambda x: train_step(model, optimizer, x.contiguous(memory_format=memory_format), cfg.train, amp)

    print(f"device {device}, batch {batch_size}, bf16 {amp} ({amp_reason}), channels_last {cfg.train.channels_last}, "
          f"{os.cpu_count()} CPU cores")
    fixed = torch.rand(batch_size, 3, cfg.data.image_size, cfg.data.image_size, device=device)
    fixed = fixed.contiguous(memory_format=memory_format)

    def pure_compute() -> float:
        return images_per_second(iter(lambda: fixed, None), device, args.steps, training_step())

    print("(1) pure compute ...")
    compute_runs = [pure_compute()]
    # (2) before (3): it builds the uint8 cache if needed, and its peak RSS is read before (3) forks workers.
    print("(2) project path: one epoch of train.py ...")
    project = project_path(args, cfg, batch_size, device)
    print("(1) pure compute, again ...")
    compute_runs.append(pure_compute())
    compute = sum(compute_runs) / len(compute_runs)

    print("(3) naive JPEG DataLoader ...")
    naive_set = NaiveCelebA(Path(cfg.data.root), "train", cfg.data.image_size, cfg.data.center_crop)
    loader = DataLoader(naive_set, batch_size=batch_size, shuffle=True, num_workers=os.cpu_count(),
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    naive = images_per_second(endless(loader), device, args.steps, training_step())

    print("data paths alone ...")
    project_batches = Batches(load_split(cfg, "train").images, batch_size, device, shuffle=True,
                              channels_last=cfg.train.channels_last)
    data_ips = {"project": images_per_second(endless(project_batches), device, len(project_batches)),
                "naive": images_per_second(endless(loader), device, args.steps)}

    report = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_cores": os.cpu_count(), "batch_size": batch_size, "bf16": amp, "channels_last": cfg.train.channels_last,
        "train_images": len(naive_set), "steps": args.steps, "torch": torch.__version__,
        "images_per_second": {"compute": compute, "project": project["images_per_second"], "naive": naive},
        "ratio_project_to_compute": project["images_per_second"] / compute,
        "ratio_project_to_naive": project["images_per_second"] / naive,
        "data_only_images_per_second": data_ips,
        "project_epoch_seconds": project["epoch_seconds"],
        "peak_rss_gb_training_run": project["peak_rss_gb"],
        "peak_rss_gb_benchmark": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_memory_gb_training_run": project["peak_gpu_memory_gb"],
    }
    out = update_report(results_dir / "benchmark.json", report)
    ips = report["images_per_second"]
    print(f"(1) pure compute     {ips['compute']:10.0f} images/s\n"
          f"(2) project path     {ips['project']:10.0f} images/s   (2)/(1) = {report['ratio_project_to_compute']:.2f}\n"
          f"(3) naive DataLoader {ips['naive']:10.0f} images/s   (2)/(3) = {report['ratio_project_to_naive']:.2f}\n"
          f"data path alone: project {data_ips['project']:.0f} images/s, naive {data_ips['naive']:.0f} images/s "
          f"({data_ips['project'] / data_ips['naive']:.0f}x)\n"
          f"(1) before / after (2): {compute_runs[0]:.0f} / {compute_runs[1]:.0f} images/s\n"
          f"peak RSS of a training run {project['peak_rss_gb']:.2f} GB"
          + (f", peak GPU memory {project['peak_gpu_memory_gb']:.2f} GB" if project["peak_gpu_memory_gb"] else "")
          + f"\nwrote {out}")


if __name__ == "__main__":
    run_cli(main)
