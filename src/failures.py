"""What analyze_failures.py finds: which images a model reconstructs worst and best (galleries), and which
attributes are over-represented among the worst (lift), as PNGs and CSV tables."""

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from src.attributes import binarize
from src.fid import recon_batches
from src.figures import font

CELL = 128             # displayed image side in the galleries (pixels, upscaled with NEAREST)
PAIRS_PER_ROW = 4


# --------------------------------------------------------------------------- attribute lift

def attribute_lift(errors: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                   worst_fraction: float = 0.05) -> list[dict]:
    """For each (binarised) attribute: its rate among the worst images versus all, sorted by lift.

    Only images whose attribute is known count for it: the worst set is the worst
    `worst_fraction` (at least one image) of those images. Rows hold attribute, known (images with
    the attribute known), worst (size of the worst set), rate_worst, rate_all, lift = rate_worst /
    rate_all (NaN when nobody has it), error_with and error_without (mean error; NaN if no image).
    """
    errors = np.asarray(errors, dtype=np.float64)
    matrix, out_names = binarize(np.asarray(attributes, dtype=np.float64).reshape(len(errors), -1), names)
    rows = []
    for col, name in zip(matrix.T, out_names):
        known = ~np.isnan(col)
        e, a = errors[known], col[known]
        k = max(1, round(worst_fraction * len(e)))
        worst = np.argsort(-e, kind="stable")[:k]
        rate_all, rate_worst = a.mean(), a[worst].mean()
        rows.append({"attribute": name, "known": int(known.sum()), "worst": k,
                     "rate_worst": float(rate_worst), "rate_all": float(rate_all),
                     "lift": float(rate_worst / rate_all) if rate_all > 0 else float("nan"),
                     "error_with": float(e[a == 1].mean()) if (a == 1).any() else float("nan"),
                     "error_without": float(e[a == 0].mean()) if (a == 0).any() else float("nan")})
    rows.sort(key=lambda r: -r["lift"] if not math.isnan(r["lift"]) else math.inf)  # stable: NaN last
    return rows


def format_lift_table(rows: list[dict], limit: int | None = None) -> str:
    lines = [f"{'attribute':22s}{'known':>7s}{'worst':>7s}{'rate worst':>12s}{'rate all':>10s}"
             f"{'lift':>7s}{'err with':>11s}{'err without':>13s}"]
    for r in rows[:limit]:
        lines.append(f"{r['attribute'][:21]:22s}{r['known']:>7d}{r['worst']:>7d}{r['rate_worst']:>12.1%}"
                     f"{r['rate_all']:>10.1%}{r['lift']:>7.2f}{r['error_with']:>11.1f}{r['error_without']:>13.1f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- galleries

@torch.no_grad()
def reconstruct(model, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """decode(mu) of uint8 images (N, 3, H, W), as uint8 of the same shape."""
    return torch.cat(list(recon_batches(model, images, batch_size, device))).cpu().numpy()


def _short(name: str, width: int = 26) -> str:
    name = Path(name).name
    return name if len(name) <= width else "…" + name[-(width - 1):]


def write_galleries(model, split, errors: np.ndarray, top: int, dataset: str, split_name: str, batch_size: int,
                    out_dir: Path) -> list[Path]:
    """failure_gallery.png and best_gallery.png: the `top` worst and best images by error, each beside its
    reconstruction, labelled with its rank and file."""
    order = np.argsort(-errors, kind="stable")  # worst first
    n, k = len(errors), min(top, len(errors))
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(1, n + 1)
    written = []
    for which, idx in (("worst", order[:k]), ("best", order[::-1][:k])):
        sel = np.sort(idx)  # sorted reads are faster on a memory map
        originals = np.asarray(split.images[sel])[np.searchsorted(sel, idx)]
        recons = reconstruct(model, originals, batch_size, model.device)
        labels = [(f"#{rank[i]} of {n}   SSE {errors[i]:.1f}", _short(split.names[i])) for i in idx]
        title = (f"{which} {k} of {n} {dataset} {split_name} images by reconstruction error "
                 f"(SSE, z = mu)\nleft: original, right: its reconstruction")
        name = "failure_gallery.png" if which == "worst" else "best_gallery.png"
        written.append(draw_gallery(originals, recons, labels, title, out_dir / name))
    return written


def draw_gallery(originals: np.ndarray, recons: np.ndarray, labels: list[tuple[str, str]], title: str,
                 path: Path) -> Path:
    """Pairs (original | reconstruction) upscaled to CELL px, PAIRS_PER_ROW a row, two label lines each."""
    n = len(originals)
    small, big, pad, gap = font(14), font(17), 16, 4
    label_h, title_h = 40, 56
    pair_w, pair_h = 2 * CELL + gap, CELL + label_h
    cols = min(PAIRS_PER_ROW, n)
    rows = math.ceil(n / cols)
    title_w = max(big.getlength(line) for line in title.split("\n"))
    width = max(cols * (pair_w + pad) + pad, math.ceil(title_w) + 2 * pad)
    canvas = Image.new("RGB", (width, title_h + rows * (pair_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text((pad, 6), title, fill="black", font=big, spacing=6)
    for i in range(n):
        x0 = pad + (i % cols) * (pair_w + pad)
        y0 = title_h + (i // cols) * (pair_h + pad)
        for j, img in enumerate((originals[i], recons[i])):
            tile = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).resize((CELL, CELL), Image.NEAREST)
            canvas.paste(tile, (x0 + j * (CELL + gap), y0))
        draw.text((x0, y0 + CELL + 3), labels[i][0], fill="black", font=small)
        draw.text((x0, y0 + CELL + 21), labels[i][1], fill=(90, 90, 90), font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------- CSV

def _cell(value: float) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if value == round(value) else f"{value:.4g}"


def write_failures_csv(path: Path, order: np.ndarray, errors: np.ndarray, names: list[str],
                       attributes: np.ndarray | None, attribute_names: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "file", "error", *attribute_names])
        for rank, i in enumerate(order, start=1):
            attrs = [_cell(float(v)) for v in attributes[i]] if attributes is not None else []
            writer.writerow([rank, names[i], f"{errors[i]:.4f}", *attrs])
    return path


def write_lift_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else
                                 "" if isinstance(v, float) else v) for k, v in r.items()})
    return path
