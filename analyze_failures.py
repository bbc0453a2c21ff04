"""Failure gallery: rank a split by reconstruction error, show the worst and best, find what they share.

    python analyze_failures.py                          # test split, checkpoints/best_vae.pth
    python analyze_failures.py --split train --top 32   # CelebA's attribute list may cover train only
    python analyze_failures.py data.root=/data/celeba   # other data, same model

Error = summed squared error per image with z = mu (deterministic). Writes to
{paths.results_dir}/failure_gallery/: failure_gallery.png and best_gallery.png (original left,
reconstruction right), failures.csv (every image, worst first, with its attributes) and, when the
data has attributes, attribute_lift.csv: how much more often each attribute occurs among the worst
5% than in the whole split (lift), with the mean error of images with and without it.
"""

from pathlib import Path
from typing import Sequence

import numpy as np

from src.cli import argument_parser, trained_model
from src.dataset import load_split
from src.errors import UserError, run_cli
from src.failures import attribute_lift, format_lift_table, write_failures_csv, write_galleries, write_lift_csv
from src.files import ensure_writable_dir
from src.metrics import per_image_stats


def parse_args(argv: Sequence[str] | None):
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test")
    parser.add_argument("--top", type=int, default=16, help="images in each gallery (default 16)")
    parser.add_argument("--worst-fraction", type=float, default=0.05,
                        help="share of images that counts as 'worst' in the attribute table (default 0.05)")
    args = parser.parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    if not 0 < args.worst_fraction <= 1:
        raise UserError(f"--worst-fraction must be in (0, 1], got {args.worst_fraction}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    model, cfg, state, checkpoint = trained_model(args)
    out_dir = ensure_writable_dir(Path(cfg.paths.results_dir) / "failure_gallery", "paths.results_dir")
    split = load_split(cfg, args.split)
    bs = cfg.train.batch_size

    errors = per_image_stats(model, split.images, bs, model.device)["sse_mean"].numpy().astype(np.float64)
    order = np.argsort(-errors, kind="stable")  # worst first
    written = write_galleries(model, split, errors, args.top, cfg.data.dataset, args.split, bs, out_dir)
    has_attributes = split.attributes is not None and len(split.attribute_names) > 0
    written.append(write_failures_csv(out_dir / "failures.csv", order, errors, split.names,
                                      split.attributes if has_attributes else None, split.attribute_names))
    rows = attribute_lift(errors, split.attributes, split.attribute_names, args.worst_fraction) \
        if has_attributes else []
    lift_path = out_dir / "attribute_lift.csv"
    if rows:
        written.append(write_lift_csv(lift_path, rows))
    else:
        lift_path.unlink(missing_ok=True)  # a table from an earlier run would not describe this one

    print(f"{checkpoint} (epoch {state.get('epoch')}) on {cfg.data.dataset} {args.split}, {len(errors)} images")
    print(f"reconstruction error (SSE per image, z = mu): best {errors[order[-1]]:.1f}, "
          f"median {np.median(errors):.1f}, worst {errors[order[0]]:.1f}")
    for path in written:
        print(f"wrote {path}")
    if not has_attributes:
        print(f"no attributes for {cfg.data.dataset} data: wrote the galleries and failures.csv only")
    elif not rows:
        print(f"the attribute list covers no {args.split} image (all unknown); try --split train")
    else:
        print(f"\nattributes among the worst {args.worst_fraction:.0%} of images (whose attribute is known), "
              f"by lift = rate worst / rate all; top {min(10, len(rows))} of {len(rows)}:")
        print(format_lift_table(rows, limit=10))


if __name__ == "__main__":
    run_cli(main)
