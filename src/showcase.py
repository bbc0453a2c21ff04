"""The figures inference.py writes: samples, reconstructions, morphs, edits (also of your photos), the
judged edit report and latent traversals. Each writer returns the paths it wrote.

Everything is deterministic: no z is sampled except the seeded prior or mixture samples.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from src.attributes import HeldOut, indicators
from src.config import Config
from src.dataset import ImageSplit, load_split
from src.editing import (
    LABEL,
    LABEL_STRENGTH,
    RELIABLE_ACCURACY,
    Edit,
    LatentAttributes,
    edited,
    lacks,
    score_edits,
    sweep,
)
from src.errors import DataError
from src.faces import Face, describe, model_input, open_photo, small_face_warning
from src.figures import labelled_grid, save_image_grid, sweep_gif
from src.files import atomic_json
from src.images import to_float
from src.judge import accuracy, trained_judge
from src.latent import TRAVERSE_RANGE, decode, dims_by_kl, encode, morph_rows, posterior_means, traversal_codes

RECON_IMAGES, RECON_ROW = 16, 8      # reconstructions.png: 2 blocks of 8
LABEL_STRENGTHS = (1.0, 2.0, 3.0)    # label edits judged: to the label's value, and past it
EDIT_JUDGE_IMAGES = 1000             # at most this many held-out images per attribute for edits.json
PHOTO_PANEL = 192                    # pixels per image in photo_edits.png


# --------------------------------------------------------------------------- images of a split

def evenly_spaced(n_available: int, k: int) -> np.ndarray:
    """k distinct indices spread over range(n_available), first and last included (k <= n_available)."""
    return np.linspace(0, n_available - 1, k).round().astype(int)


def split_images(split: ImageSplit, k: int) -> torch.Tensor:
    """k evenly spaced images of a split as floats in [0, 1] on the CPU."""
    return to_float(split.images[evenly_spaced(len(split), k)])


def write_samples(model, codes: torch.Tensor, out_dir: Path) -> tuple[torch.Tensor, Path]:
    """samples.png: the decoded codes, ceil(sqrt(n)) per row; also the images, for edits of samples."""
    samples = decode(model, codes)
    return samples, save_image_grid(samples, out_dir / "samples.png", nrow=math.ceil(math.sqrt(len(codes))))


def write_reconstructions(model, split: ImageSplit, out_dir: Path) -> Path:
    """reconstructions.png: blocks of RECON_ROW originals over their reconstructions (z = mu)."""
    k = min(RECON_IMAGES, len(split))
    k = k - k % RECON_ROW if k > RECON_ROW else k  # whole blocks only, so rows line up
    x = split_images(split, k)
    recon = decode(model, posterior_means(model, x))
    nrow = min(RECON_ROW, len(x))
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start:start + nrow], recon[start:start + nrow]]
    return save_image_grid(torch.cat(rows), out_dir / "reconstructions.png", nrow=nrow)


def morph_images(split: ImageSplit, pairs: int, split_name: str) -> torch.Tensor:
    """2 * pairs evenly spaced images of a split to morph (fewer pairs when it is small, said)."""
    if len(split) < 2:
        raise DataError(f"the {split_name} split has {len(split)} image(s); reconstructions and morphs need at "
                        "least 2 (choose another split or give two images of your own)")
    available = min(pairs, len(split) // 2)
    if available < pairs:
        print(f"the {split_name} split has {len(split)} images: morphing {available} pairs, not {pairs}")
    return split_images(split, 2 * available)


def write_morphs(model, x: torch.Tensor, steps: int, out_dir: Path) -> list[Path]:
    """morph.png (a linear and a spherical row per consecutive pair of x) and morph.gif (the first pair's
    spherical row); nothing for fewer than two images."""
    x = x[:len(x) - len(x) % 2]
    if len(x) < 2:
        print("one image given: no morph (it needs two)")
        return []
    rows = [morph_rows(model, x[i], x[i + 1], steps) for i in range(0, len(x), 2)]
    morph = torch.cat([torch.cat(pair) for pair in rows])
    slerp = rows[0][1]  # the first pair's spherical row: a, codes..., b
    return [save_image_grid(morph, out_dir / "morph.png", nrow=steps + 2),
            sweep_gif([torch.stack([slerp[0], image, slerp[-1]]) for image in slerp[1:-1]], out_dir / "morph.gif")]


# --------------------------------------------------------------------------- your photos

@dataclass
class Photos:
    """Your image files as the model's inputs, and each photo with the face found in it."""
    inputs: torch.Tensor                              # (N, 3, S, S) in [0, 1]
    photos: list[tuple[Image.Image, Face | None]]     # face None when not aligned


def read_photos(paths: Sequence[str], cfg: Config, align: bool, out_dir: Path) -> Photos:
    """Your images as the model's inputs: each face found and aligned like CelebA (or, unaligned, the
    picture's centre), and written to aligned/<name>.png so you see what the model saw."""
    size, crop = cfg.data.image_size, cfg.data.center_crop
    aligned_dir = out_dir / "aligned"
    aligned_dir.mkdir(exist_ok=True)
    inputs, photos, used = [], [], set()
    for path in paths:
        photo = open_photo(path)
        array, face = model_input(photo, path, size, crop, align)
        photos.append((photo, face))
        if face is not None:
            print(describe(face, path))
            warning = small_face_warning(face, path, size, crop)
            if warning:
                print(warning)
        stem = Path(path).stem
        name = stem if stem not in used else f"{stem}-{len(inputs)}"
        used.add(name)
        Image.fromarray(array.transpose(1, 2, 0)).save(aligned_dir / f"{name}.png")
        inputs.append(to_float(array))
    print(f"wrote the model's inputs to {aligned_dir}/ ({'aligned like CelebA' if align else 'not aligned'})")
    return Photos(torch.stack(inputs), photos)


def photo_panel(photo: Image.Image, face: Face | None, side: int) -> torch.Tensor:
    """The photo fitted into a white side x side square, its five landmarks marked: (3, side, side)."""
    scale = side / max(photo.size)
    shown = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.LANCZOS)
    panel = Image.new("RGB", (side, side), "white")
    offset = ((side - shown.width) // 2, (side - shown.height) // 2)
    panel.paste(shown, offset)
    if face is not None:
        draw, r = ImageDraw.Draw(panel), max(2, side // 90)
        for x, y in (face.landmarks + 0.5) * scale + offset:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 210, 0), outline=(0, 0, 0))
    return torch.from_numpy(np.asarray(panel).transpose(2, 0, 1).copy()).float() / 255


# --------------------------------------------------------------------------- edits

@dataclass
class EditPlan:
    """How the figures edit: a direction method, to a target probability or by +-strength, keeping the
    `keep` attributes (None: the other edited ones) when conditional."""
    method: str
    target: float
    strength: float | None = None
    keep: Sequence[str] | None = None
    labels: Sequence[str] = ()           # a conditional model's labels (its codes are [z | y])

    def kept(self, name: str, edited_names: Sequence[str]) -> tuple[str, ...]:
        """What a conditional edit of `name` keeps: --keep, else the other edited attributes."""
        return tuple(k for k in (self.keep if self.keep is not None else edited_names) if k != name)

    def edit(self, name: str, edited_names: Sequence[str]) -> Edit:
        """The edit the figures show for attribute `name`."""
        keep = self.kept(name, edited_names)
        if self.method == LABEL:
            return Edit(LABEL, strength=self.strength or LABEL_STRENGTH)
        if self.strength is not None:
            return Edit(self.method, strength=self.strength, keep=keep)
        return Edit(self.method, strength=None, target=self.target, keep=keep)

    def compared(self, name: str, edited_names: Sequence[str]) -> dict[str, Edit]:
        """The methods edits.json compares: mean difference at strength 1, the classifier's normal and the
        conditional direction to the target (and the figure's own edit, if it is none of those)."""
        shown = self.edit(name, edited_names)
        edits = {"mean, strength 1": Edit("mean", 1.0),
                 f"mean to p={self.target:g}": Edit("mean", None, self.target),
                 f"normal to p={self.target:g}": Edit("normal", None, self.target),
                 f"conditional to p={self.target:g}": Edit("conditional", None, self.target,
                                                           self.kept(name, edited_names))}
        if name in self.labels:  # a conditional model: its own label, at its value and past it
            edits |= {f"label to {s:g}": Edit(LABEL, s) for s in LABEL_STRENGTHS}
        if shown not in edits.values():
            edits[shown.describe()] = shown
        return edits


def write_edits(model, names: list[str], attrs: LatentAttributes, images: torch.Tensor, source: str,
                plan: EditPlan, steps: int, out_dir: Path) -> list[Path]:
    """edits.png (one block per attribute) and edits.gif (the first row of the first block)."""
    mu = posterior_means(model, images).double().numpy()
    recon = decode(model, torch.from_numpy(mu).float())
    blocks, strips = [], None
    for name in names:
        how = plan.edit(name, names)
        codes, columns = sweep(mu, attrs, name, how, steps)
        edited_images = decode(model, torch.from_numpy(codes).float())  # (rows, steps, 3, S, S)
        rows = torch.cat([images[:, None], recon[:, None], edited_images], dim=1)
        with_it, without = attrs.counts[attrs.index(name)]
        fitted = "" if how.method == LABEL else f"; fitted on {with_it} training images with it, {without} without"
        blocks.append((f"{name}: {how.describe()}  ({source}{fitted})", rows, []))
        if strips is None:
            strips = [torch.stack([images[0], edited_images[0, i]]) for i in range(edited_images.shape[1])]
    columns = ["original", "reconstruction", *columns]
    return [labelled_grid(blocks, columns, out_dir / "edits.png"), sweep_gif(strips, out_dir / "edits.gif")]


def write_photo_edits(model, photos: Photos, names: list[str], attrs: LatentAttributes, plan: EditPlan,
                      out_dir: Path) -> Path:
    """photo_edits.png: per photo, the photo with its landmarks, the model's input, its reconstruction,
    and each attribute added (or, where the face has it, removed) as the figures' edit does."""
    inputs = photos.inputs
    mu = posterior_means(model, inputs).double().numpy()
    columns, edits = [], []
    for name in names:
        add = lacks(mu, attrs, name, plan.method)
        edits.append(decode(model, torch.from_numpy(edited(mu, attrs, name, plan.edit(name, names), add)).float()))
        columns.append(f"{'+' if add.all() else '-' if not add.any() else '+/-'}{name}")
    side = PHOTO_PANEL
    grow = lambda x: F.interpolate(x, size=(side, side), mode="nearest")
    rows = [torch.stack([photo_panel(photo, face, side), grow(inputs[i:i + 1])[0],
                         grow(decode(model, torch.from_numpy(mu[i:i + 1]).float()))[0],
                         *[grow(e[i:i + 1])[0] for e in edits]]) for i, (photo, face) in enumerate(photos.photos)]
    how = plan.edit(names[0], names)
    to = f"to p = {how.target:g}" if how.target is not None else f"by {how.strength:g}"
    title = f"your photos: face found, aligned like CelebA, reconstructed, edited ({how.method} {to})"
    return labelled_grid([(title, torch.stack(rows), [])], ["photo", "model input", "reconstruction", *columns],
                         out_dir / "photo_edits.png", min_cell=side)


def write_edit_report(model, cfg: Config, checkpoint: Path, train: ImageSplit, held: HeldOut, split_name: str,
                      names: list[str], attrs: LatentAttributes, plan: EditPlan, out_dir: Path) -> Path:
    """edits.json and a printed table: per attribute and method, success, preservation and distance,
    scored by the independent judge (src/judge.py) on held-out images."""
    labels, all_names = indicators(train)
    judge = trained_judge(train.images, labels, all_names, train.data_id, cfg.data.cache_dir, model.device)
    pick = evenly_spaced(len(held.rows), min(EDIT_JUDGE_IMAGES, len(held.rows)))
    source = load_split(cfg, split_name) if held.on_split else train
    images, held_labels = np.asarray(source.images[held.rows[pick]]), held.labels[pick]
    mu = encode(model, images, cfg.train.batch_size, model.device, desc="encoding held-out images")[0]
    scores = accuracy(judge, images, held_labels, all_names)
    reliable, results = score_edits(model, judge, attrs, mu.astype(np.float64), held_labels, all_names, scores,
                                    {name: plan.compared(name, names) for name in names})
    report = {"checkpoint": str(checkpoint), "held_out": held.description,
              "preservation_attributes": reliable, "attributes": results}
    path = atomic_json(out_dir / "edits.json", report)
    print(f"\nedits judged on {held.description}: success = the judge's decision moves to the intended side "
          f"(add / remove); kept = decisions unchanged on the {len(reliable)} other attributes it reads with "
          f"accuracy >= {RELIABLE_ACCURACY}")
    print(format_edit_table(results))
    return path


def format_edit_table(results: dict) -> str:
    lines = [f"{'attribute':22s}{'method':34s}{'success':>8s}{'add':>7s}{'remove':>8s}{'kept':>7s}{'moved':>7s}"
             f"{'baseline':>9s}{'judge':>7s}"]
    for name, r in results.items():
        for label, m in r["methods"].items():
            lines.append(f"{name[:21]:22s}{label[:33]:34s}{m['success']:>8.3f}{m['success_add']:>7.3f}"
                         f"{m['success_remove']:>8.3f}{m['preservation']:>7.3f}{m['latent_distance']:>7.2f}"
                         f"{m['baseline']:>9.3f}{r['judge_balanced_accuracy']:>7.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- traversals

def ranked_dims(model, images: np.ndarray, batch_size: int, k: int) -> list[tuple[int, float]]:
    """The k latent dimensions of largest mean KL over the images, with their KL."""
    mu, logvar = encode(model, images, batch_size, model.device, desc="encoding for KL per dimension")
    return dims_by_kl(mu, logvar, min(k, mu.shape[1]))


def write_traversals(model, ranked: list[tuple[int, float]], start: torch.Tensor, start_name: str, steps: int,
                     out_dir: Path) -> list[Path]:
    """traversals.png and traversals.gif: each of the `ranked` dimensions set to -3 ... +3 around `start`."""
    values = torch.linspace(-TRAVERSE_RANGE, TRAVERSE_RANGE, steps)
    grid = decode(model, traversal_codes(start, [d for d, _ in ranked], values))  # (dims, values, 3, S, S)
    labels = [f"z[{d}]  KL {kl:.2f}" for d, kl in ranked]
    title = f"latent traversals around {start_name}: each row sets one dimension (largest mean KL first)"
    columns = [f"{v:+.1f}" if abs(v) > 1e-9 else "0" for v in values.tolist()]
    return [labelled_grid([(title, grid, labels)], columns, out_dir / "traversals.png"),
            sweep_gif([grid[:, i] for i in range(len(values))], out_dir / "traversals.gif")]
