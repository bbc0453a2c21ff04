"""Train the convolutional VAE, on one device or many.

    python train.py                                   # CelebA, config/config.json
    python train.py --config config/quickstart.json   # synthetic faces, no download
    python train.py train.epochs=3 data.root=/data/celeba
    python train.py --resume                          # continue from checkpoints/last_vae.pth
    torchrun --standalone --nproc_per_node=4 train.py # DDP; train.batch_size is per GPU

Writes checkpoints/best_vae.pth (best validation loss), checkpoints/last_vae.pth (every epoch, and
on Ctrl-C/SIGTERM), results/history.json (per-epoch losses and speed) and results/train_samples.png.

The run itself is src/trainer.py's (set-up, epochs, saving); resume rules are src/resume.py's.
"""

import os
import sys
from typing import Sequence

import torch.distributed as dist

from src.cli import argument_parser
from src.config import load_config
from src.errors import run_cli
from src.interrupts import Interrupts
from src.resume import ResumeRefused
from src.trainer import describe, run_epoch, start_run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--resume", action="store_true", help="continue from last_vae.pth in paths.checkpoint_dir")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    try:
        run = start_run(cfg, resume=args.resume)
    except ResumeRefused as e:
        raise ResumeRefused(f"{e} without --resume") from None
    if run.saved and run.master:
        print(f"resuming from {run.last_path}: epoch {run.start_epoch + 1}, step {run.start_step}")
    if run.start_epoch >= cfg.train.epochs:
        print(f"already trained {run.start_epoch} epochs; raise train.epochs to train longer")
        return
    if run.master:
        print(describe(run))
    with Interrupts() as interrupts:
        for epoch in range(run.start_epoch, cfg.train.epochs):
            stop = run_epoch(run, epoch, interrupts)
            if stop:
                if run.master:
                    print(f"saved {run.last_path} {stop.where}; resume with: {resume_command(argv, run.world_size)}")
                sys.exit(128 + stop.signum)
    if run.master:
        print(f"done: best val loss {run.best_val:.2f}; checkpoints in {run.last_path.parent}/, "
              f"history in {run.results_dir}/")


def resume_command(argv: Sequence[str] | None, world_size: int) -> str:
    """The command that continues this run, launched the way this one was."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--resume"]
    launcher = "python"
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        nodes = world_size // per_node
        launcher = f"torchrun --standalone --nproc_per_node={per_node}" if nodes == 1 else \
            f"torchrun --nnodes={nodes} --nproc_per_node={per_node} <your rendezvous options>"
    return " ".join([launcher, "train.py", *args, "--resume"])


if __name__ == "__main__":
    try:
        run_cli(main)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
