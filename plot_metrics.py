"""Plot training curves from results/history.json into results/training_curves.png, or summarise a sweep.

    python plot_metrics.py                       # uses paths.results_dir of config/config.json
    python plot_metrics.py --history other/history.json --out curves.png
    python plot_metrics.py --history runs/a/history.json runs/b/history.json   # runs compared -> runs.png
    python plot_metrics.py --sweep results/sweep # every metrics.json below it -> table + beta_sweep.png

Works while training is still running: it plots the epochs finished so far. With several --history files it
draws their validation losses and learning rates on shared axes, each labelled by its folder. With --sweep it groups
the evaluate.py results of many runs by (train.recon_loss, train.beta), prints and writes a table of
mean +- std over the runs (seeds) of each group, and plots MIG and reconstruction error against beta.
"""

from pathlib import Path
from typing import Sequence

from src.cli import argument_parser
from src.config import load_config
from src.curves import plot_history, plot_runs, plot_sweep, read_history, read_sweep, sweep_summary, sweep_table
from src.errors import UserError, run_cli
from src.files import MissingFile


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--history", nargs="+", default=None, help="history.json (default: in paths.results_dir); "
                        "several: compare the runs")
    parser.add_argument("--out", default=None, help="PNG to write (default: training_curves.png beside it, runs.png "
                        "beside the first of several, or beta_sweep.png in the --sweep directory)")
    parser.add_argument("--sweep", default=None, metavar="DIR", help="summarise the evaluate.py runs below DIR")
    args = parser.parse_args(argv)
    if args.sweep:
        directory = Path(args.sweep)
        summary = sweep_summary(read_sweep(directory))
        table = sweep_table(summary)
        (directory / "beta_sweep.md").write_text(table + "\n")
        out = plot_sweep(summary, Path(args.out) if args.out else directory / "beta_sweep.png")
        print(table)
        print(f"wrote {directory / 'beta_sweep.md'} and {out}")
        return
    if args.history and len(args.history) > 1:
        compare_runs([Path(p) for p in args.history], args.out)
        return
    results_dir = Path(load_config(args.config, args.overrides).paths.results_dir)
    history_path = Path(args.history[0]) if args.history else results_dir / "history.json"
    out = Path(args.out) if args.out else history_path.parent / "training_curves.png"
    try:
        history = read_history(history_path)
    except MissingFile as e:
        raise MissingFile(f"{e}, or pass --history PATH") from None
    plot_history(history, out)
    print(f"plotted {len(history)} epochs from {history_path} -> {out}")


def compare_runs(paths: list[Path], out: str | None) -> None:
    labels = [run_label(path) for path in paths]
    if len(set(labels)) < len(labels):
        raise UserError(f"--history files {', '.join(map(str, paths))} share folder names; give each run its own folder")
    histories = {label: read_history(path) for label, path in zip(labels, paths)}
    written = plot_runs(histories, Path(out) if out else paths[0].parent / "runs.png")
    print(f"compared {len(paths)} runs ({', '.join(labels)}) -> {written}")


def run_label(history_path: Path) -> str:
    """A run's name: its folder, or the folder above a results/ folder (checkpoints and results side by side)."""
    folder = history_path.resolve().parent
    return folder.parent.name if folder.name == "results" else folder.name


if __name__ == "__main__":
    run_cli(main)
