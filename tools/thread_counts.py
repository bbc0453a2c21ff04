"""CPU thread counts on an idle and a busy machine: images/s of each kind of work at every fixed
count and under train.threads=auto.

    python -m tools.thread_counts --config config/quickstart.json --busy 1            # no data needed
    python -m tools.thread_counts --busy 1 --work train inception decode               # and evaluate's / the editor's work

--busy N: on the CPU, images/s of each --work (train: a training step on a fixed batch; inception:
evaluate's Inception batch; decode: one image, as the editor decodes per request) at every fixed
thread count 1 ... cores and under train.threads=auto, first idle, then with N busy programs of
our own running (tight Python loops at this process's priority, ended with the measurement). Each
measurement runs --seconds after a short untimed warm-up; auto starts afresh in each, as a new
run would, so its measuring is part of its figure. Prints auto / best fixed count, and writes the
"threads" part of results/benchmark.json.
"""

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from src.cli import argument_parser
from src.config import load_config
from src.device import choose_bf16
from src.errors import UserError, run_cli
from src.files import ensure_writable_dir
from src.model import build_model
from src.threads import ThreadTuner, available_cores, others_busy_check
from src.training import train_step
from tools.benchmark import update_report

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, metavar="N", help="busy programs beside the work (default 1)")
    parser.add_argument("--work", nargs="+", choices=WORK, default=["train"], help="what to time (default train)")
    parser.add_argument("--seconds", type=float, default=30, help="seconds per figure (default 30)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    batch_size = args.batch_size or cfg.train.batch_size
    # on the CPU, whatever train.device says
    if args.busy < 0 or args.seconds <= 0:
        raise UserError(f"--busy must be 0 or more and --seconds positive, got {args.busy} and {args.seconds:g}")
    amp, amp_reason = choose_bf16(cfg.train.bf16, torch.device("cpu"))
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    print(f"thread counts on the CPU: {', '.join(args.work)}; batch {batch_size}, bf16 {amp} ({amp_reason}), "
          f"{args.busy} busy program(s)")
    report = thread_comparison(args, cfg, batch_size, amp)
    out = update_report(results_dir / "benchmark.json", {"threads": report})
    print(format_threads(report) + f"\nwrote {out}")




if __name__ == "__main__":
    run_cli(main)
