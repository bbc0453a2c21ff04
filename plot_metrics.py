"""Plot training curves from results/history.json into results/training_curves.png.

    python plot_metrics.py                       # uses paths.results_dir of config/config.json
    python plot_metrics.py --history other/history.json --out curves.png

Works while training is still running: it plots the epochs finished so far.
"""

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from src.config import argument_parser, load_config
from src.errors import UserError, run_cli

PANELS = [("total", "total loss (recon + β·KL)"), ("recon", "reconstruction (SSE per image)"),
          ("kl", "KL divergence (nats)")]


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"no training history at '{path}' yet; run train.py first (it writes history.json "
                        "after each epoch) or pass --history PATH")
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}); re-run train.py to rewrite it") from None
    if not isinstance(history, list) or not history:
        raise UserError(f"{path} holds no finished epoch yet; wait for the first epoch to end")
    return history


def plot_history(history: list[dict], out: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, PANELS):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label="val")
        ax.set(title=title, xlabel="epoch", ylabel=key)
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes.flat[3]
    ax.plot(epochs, [h["grad_norm"] for h in history], "o-", color="tab:red", label="mean pre-clip norm")
    ax.set(title="gradient norm (before clipping)", xlabel="epoch", ylabel="L2 norm")
    ax.legend()
    ax.grid(alpha=0.3)
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    last = history[-1]
    fig.suptitle(f"{len(history)} epochs; last: val total {last['val_total']:.1f}, "
                 f"recon {last['val_recon']:.1f}, KL {last['val_kl']:.1f}", fontsize=13)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--history", default=None, help="history.json (default: in paths.results_dir)")
    parser.add_argument("--out", default=None, help="PNG to write (default: training_curves.png beside it)")
    args = parser.parse_args(argv)
    results_dir = Path(load_config(args.config, args.overrides).paths.results_dir)
    history_path = Path(args.history) if args.history else results_dir / "history.json"
    out = Path(args.out) if args.out else history_path.parent / "training_curves.png"
    history = read_history(history_path)
    plot_history(history, out)
    print(f"plotted {len(history)} epochs from {history_path} -> {out}")


if __name__ == "__main__":
    run_cli(main)
