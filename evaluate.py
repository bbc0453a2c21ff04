"""Test-set metrics of a trained VAE: reconstruction, KL, negative ELBO, MSE and PSNR.

    python evaluate.py                          # test split, checkpoints/best_vae.pth
    python evaluate.py --split val --checkpoint checkpoints/last_vae.pth
    python evaluate.py data.root=/data/celeba   # other data, same model

Prints a table and writes results/metrics.json. Numbers are deterministic (seeded z samples).
"""

import json
from pathlib import Path
from typing import Sequence

from src.config import argument_parser
from src.dataset import load_split
from src.errors import run_cli
from src.metrics import per_image_stats, summarize
from src.utils import ensure_writable_dir, load_trained

ROWS = [("recon", "reconstruction (SSE per image)"), ("kl", "KL"), ("total", "total = recon + KL (-ELBO)"),
        ("beta_loss", "training loss (recon + beta*KL)"), ("mse", "MSE per pixel"), ("psnr", "PSNR (dB)")]


def format_table(summary: dict) -> str:
    lines = [f"{'metric':34s}{'z sampled':>12s}{'z = mu':>12s}"]
    for key, label in ROWS:
        fmt = ".5f" if key == "mse" else ".2f"
        lines.append(f"{label:34s}{summary['sampled'][key]:>12{fmt}}{summary['mean'][key]:>12{fmt}}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled z (default 0)")
    args = parser.parse_args(argv)
    model, cfg, state, checkpoint = load_trained(args)
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    split = load_split(cfg, args.split)
    device = next(model.parameters()).device

    stats = per_image_stats(model, split.images, cfg.train.batch_size, device, seed=args.seed)
    summary = summarize(stats, pixels_per_image=split.images[0].size, beta=cfg.train.beta)
    metrics = {"checkpoint": str(checkpoint), "epoch": state.get("epoch"), "dataset": cfg.data.dataset,
               "data_root": cfg.data.root if cfg.data.dataset != "synthetic" else None,
               "split": args.split, "num_images": len(split), "beta": cfg.train.beta, "seed": args.seed,
               "z_sampled": summary["sampled"], "z_mean": summary["mean"]}
    out = Path(results_dir) / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2))
    print(f"{checkpoint} (epoch {state.get('epoch')}) on {cfg.data.dataset} {args.split}, {len(split)} images")
    print(format_table(summary))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
