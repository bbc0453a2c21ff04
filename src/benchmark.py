"""Training throughput: pure compute vs this project's data path vs a naive JPEG DataLoader; and with
--busy, CPU thread counts on an idle and a busy machine.

    python -m src.benchmark data.root=../shared/data/celeba_subset
    python -m src.benchmark data.root=/data/celeba --batch-size 512 --steps 200 --device cuda
    python -m src.benchmark --config config/quickstart.json --busy 1     # thread counts, no data needed
    python -m src.benchmark --busy 1 --work train inception decode        # and evaluate's / the editor's work

Same model, batch size and data for all three:
  (1) compute: training steps on one fixed batch already on the device (the ceiling);
  (2) project: one epoch of train.py over the train split (uint8 cache, the real loop), in a
      subprocess, whose peak RSS is the peak of a real training run;
  (3) naive:   a torchvision-style Dataset that opens, decodes, crops and resizes each JPEG with
      PIL, through a DataLoader with num_workers = CPU cores.
Prints images/s, the ratios (2)/(1) and (2)/(3), peak memory, and writes results/benchmark.json.
(1) runs before and after (2) and reports the mean: a shared machine's speed drifts by several
percent over minutes. The data paths alone (no training) are timed too: where compute dominates a
step, as on a small CPU, they show what the ratio (2)/(3) cannot.

--busy N: on the CPU, images/s of each --work (train: a training step on a fixed batch; inception:
evaluate's Inception batch; decode: one image, as the editor decodes per request) at every fixed
thread count 1 ... cores and under train.threads=auto, first idle, then with N busy programs of
our own running (tight Python loops at this process's priority, ended with the measurement). Each
measurement runs --seconds after a short untimed warm-up; auto starts afresh in each, as a new
run would, so its measuring is part of its figure. Prints auto / best fixed count, and writes the
"threads" part of results/benchmark.json.
"""

import contextlib
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from src.config import argument_parser, load_config
from src.dataset import SPLITS, Batches, find_celeba, load_split, preprocess, read_partition
from src.errors import UserError, run_cli
from src.model import build_model
from src.threads import ThreadTuner, available_cores, others_busy_check
from src.training import train_step
from src.utils import atomic_write, choose_bf16, ensure_writable_dir, pick_device, to_device

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


# --------------------------------------------------------------------------- thread counts (--busy)

# A busy program: a tight loop that ends by itself after argv[2] seconds, or as soon as its parent
# (the benchmark) is gone, even after a kill -9 that left no time to end it.
BUSY_LOOP = """
import os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(100_000):
        pass
"""
THREAD_WARMUP = 3  # untimed units before each measurement (allocations, oneDNN primitives)
WORK = ("train", "inception", "decode")


@contextlib.contextmanager
def busy_programs(n: int, limit_s: float) -> Iterator[list[subprocess.Popen]]:
    """n busy programs at this process's priority while the block runs; killed when it ends, however
    it ends (an error, Ctrl-C, SIGTERM through run_cli). Each also ends by itself after limit_s."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(os.getpid()), str(limit_s)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def thread_work(name: str, cfg, batch_size: int, amp: bool) -> tuple[int, Callable[[], object]]:
    """(images per unit, one unit of `name` on the CPU) with fixed inputs."""
    size = cfg.data.image_size
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, size).to(memory_format=memory_format)
    if name == "train":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        x = torch.rand(batch_size, 3, size, size).contiguous(memory_format=memory_format)
        return batch_size, lambda: train_step(model, optimizer, x, cfg.train, amp)
    if name == "inception":
        from src.fid import CPU_FEATURE_BATCH, InceptionFeatures  # loads the Inception weights: only when asked
        extractor = InceptionFeatures("cpu")
        x = torch.randint(0, 256, (CPU_FEATURE_BATCH, 3, size, size), dtype=torch.uint8)
        return CPU_FEATURE_BATCH, torch.inference_mode()(lambda: extractor(x))
    z = torch.randn(1, cfg.model.latent_dim)
    model.eval()
    return 1, torch.inference_mode()(lambda: model.decode(z))


def rate(images: int, unit: Callable[[], object], seconds: float, tuner: ThreadTuner | None = None) -> float:
    """Images/s of unit() called again and again for `seconds` (each call timed for the tuner, if any)."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with tuner.timed(images) if tuner else contextlib.nullcontext():
            unit()
        done += images
    return done / (time.perf_counter() - start)


def measure_threads(work: tuple[int, Callable[[], object]], cores: int, seconds: float, busy: int,
                    bar: tqdm, measure_alone: bool = False) -> dict:
    """Images/s at each fixed count and under auto, with `busy` busy programs running."""
    images, unit = work
    out = {}
    for setting in [*range(1, cores + 1), "auto"]:
        bar.set_postfix_str(f"{busy} busy, threads {setting}")
        with busy_programs(busy, limit_s=3 * seconds + 120):
            torch.set_num_threads(cores if setting == "auto" else setting)
            for _ in range(THREAD_WARMUP):
                unit()
            said = []
            tuner = ThreadTuner(cores, apply=torch.set_num_threads, say=said.append,
                                others_busy=others_busy_check(measure_alone)) \
                if setting == "auto" else None
            out[str(setting)] = rate(images, unit, seconds, tuner)
        bar.update()
    fixed = {k: v for k, v in out.items() if k != "auto"}
    best = max(fixed, key=fixed.get)
    return out | {"best_fixed": int(best), "auto_to_best_fixed": out["auto"] / fixed[best],
                  "auto_units": {str(n): tuner.units[n] for n in sorted(tuner.units)}, "auto_said": said}


def thread_comparison(args, cfg, batch_size: int, amp: bool) -> dict:
    """The --busy report: for each --work, idle and with args.busy busy programs."""
    cores = available_cores()
    loads = {"idle": 0, **({"busy": args.busy} if args.busy else {})}
    report = {"cpu": cpu_name(), "cores": cores, "busy_programs": args.busy, "seconds": args.seconds,
              "batch_size": batch_size, "bf16": amp, "torch": torch.__version__, "work": {}}
    before = torch.get_num_threads()
    try:
        with tqdm(total=len(args.work) * len(loads) * (cores + 1), desc="thread counts", unit="run") as bar:
            for name in args.work:
                work = thread_work(name, cfg, batch_size, amp)
                alone = name == "decode"  # as the editor measures: see configure_threads
                report["work"][name] = {load: measure_threads(work, cores, args.seconds, n, bar, alone)
                                        for load, n in loads.items()}
    finally:
        torch.set_num_threads(before)
    return report


def format_threads(report: dict) -> str:
    loads = list(next(iter(report["work"].values())))
    lines = [f"{report['cpu']}, {report['cores']} cores; {report['seconds']:g} s per figure; busy = "
             f"{report['busy_programs']} busy program(s) at the benchmark's priority",
             f"{'work':10s}{'threads':>8s}" + "".join(f"{load + ' img/s':>16s}" for load in loads)]
    for name, by_load in report["work"].items():
        for setting in [*map(str, range(1, report["cores"] + 1)), "auto"]:
            cells = [f"{by_load[load][setting]:16.1f}" if setting != "auto" else
                     f"{by_load[load][setting]:9.1f} ({by_load[load]['auto_to_best_fixed']:.2f})" for load in loads]
            lines.append(f"{name:10s}{setting:>8s}" + "".join(cells))
        for load in loads:
            units = ", ".join(f"{n}: {k}" for n, k in by_load[load]["auto_units"].items())
            lines.append(f"  auto {load}: units per count {units}; " + " / ".join(by_load[load]["auto_said"]))
    return "\n".join(lines + ["(auto): auto / the best fixed count"])


def update_report(path: Path, part: dict) -> Path:
    """Merge `part` into results/benchmark.json (the three-path figures and the thread figures share it)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {}
    report = (report if isinstance(report, dict) else {}) | part
    return atomic_write(path, lambda f: f.write(json.dumps(report, indent=2).encode()))


def threads_main(args, cfg, batch_size: int) -> None:
    """--busy: the thread-count comparison (on the CPU, whatever train.device says)."""
    if args.busy < 0 or args.seconds <= 0:
        raise UserError(f"--busy must be 0 or more and --seconds positive, got {args.busy} and {args.seconds:g}")
    amp, amp_reason = choose_bf16(cfg.train.bf16, torch.device("cpu"))
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    print(f"thread counts on the CPU: {', '.join(args.work)}; batch {batch_size}, bf16 {amp} ({amp_reason}), "
          f"{args.busy} busy program(s)")
    report = thread_comparison(args, cfg, batch_size, amp)
    out = update_report(results_dir / "benchmark.json", {"threads": report})
    print(format_threads(report) + f"\nwrote {out}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps for paths (1) and (3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: train.device)")
    parser.add_argument("--busy", type=int, default=None, metavar="N",
                        help="instead: CPU thread counts and train.threads=auto, idle and with N busy programs")
    parser.add_argument("--work", nargs="+", choices=WORK, default=["train"], help="--busy: what to time")
    parser.add_argument("--seconds", type=float, default=30, help="--busy: seconds per figure")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    batch_size = args.batch_size or cfg.train.batch_size
    if args.busy is not None:
        threads_main(args, cfg, batch_size)
        return
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
