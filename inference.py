"""Generate faces, reconstruct and morph images, and steer the latent space of a trained VAE.

    python inference.py                                  # checkpoints/best_vae.pth, test split
    python inference.py --n 100 --temperature 0.7 --seed 1
    python inference.py --sampler gmm                    # sample where the training codes are
    python inference.py --pairs 6 --steps 12 --split val
    python inference.py --images me.jpg friend.png       # morph images of your own
    python inference.py --edit Smiling Eyeglasses        # attribute edits (+ edits.json: do they work?)
    python inference.py --edit glasses --images me.jpg   # edit your own photo
    python inference.py --edit hat --traverse --from-prior   # edit and traverse generated faces only

Writes to {paths.results_dir}/inference_test_set/:

- samples.png          --n faces decoded from --sampler codes: z ~ N(0, temperature^2 I) (prior), or
                       a Gaussian mixture fitted to the training set's codes (gmm); ceil(sqrt(n))
                       per row; a fixed --seed gives the same grid every time.
- reconstructions.png  16 evenly spaced images of --split in two blocks of 8: a row of originals,
                       the row of their reconstructions (z = mu) below it, then the next 8 the same way.
- morph.png            two rows per pair of images (--pairs pairs of evenly spaced --split images):
                       the first row interpolates the mu codes linearly, the second spherically
                       (slerp). In each row the first and last column are the two real images and
                       the --steps columns between them are decoded codes from image A's (t = 0,
                       its reconstruction) to image B's (t = 1).
- morph.gif            the slerp morph of the first pair, forth and back, shown between the two images.
- edits.png            with --edit: a block per attribute whose rows are images (--edit-rows evenly
                       spaced --split images, your --images, or --from-prior samples) and whose columns
                       are the original, its reconstruction, and mu + s * direction for --edit-steps
                       strengths s from -S to +S (--strength S). An attribute's direction is the mean
                       posterior mean of training images with it minus that of images without it.
- edits.gif            the first row of edits.png, swept from -S to +S and back, next to the original.
- edits.json           does each edit work? An independent CNN judge (trained once per data set on the
                       labelled training images, cached) scores held-out images edited at strength 1:
                       its accuracy, the edit success and the number of images, per attribute.
- traversals.png       with --traverse: the --dims latent dimensions of largest mean KL, one row each,
                       set to -3 ... +3 around a start code (the first image's mu, or 0 with --from-prior).
- traversals.gif       the traversal, all rows at once.

With --images A [B ...] the images are your files (read with PIL, cropped and resized like the
training data: data.center_crop assumes an aligned CelebA-like frame, data.center_crop=0 keeps the
largest centred square): the morph runs between consecutive pairs (it needs two), reconstructions.png
is skipped, and no dataset is read unless edits, traversals or the gmm sampler need the training set.
Everything is deterministic: no z is sampled except the seeded prior or mixture samples.
"""

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from src.attributes import attribute_directions, held_out, indicators, resolve
from src.checkpoint import load_trained
from src.config import Config, argument_parser
from src.dataset import ImageSplit, load_split, preprocess
from src.errors import DataError, UserError, run_cli
from src.judge import accuracy, edit_success, trained_judge
from src.latent import (SAMPLERS, dims_by_kl, edited_codes, encode, latent_codes, training_gmm, traversal_codes)
from src.utils import atomic_write, ensure_writable_dir, labelled_grid, save_image_grid, sweep_gif

OUT_DIR = "inference_test_set"
RECON_IMAGES, RECON_ROW = 16, 8      # reconstructions.png: 2 blocks of 8
EDIT_JUDGE_IMAGES = 1000             # at most this many held-out images per attribute for edits.json
TRAVERSE_RANGE = 3.0                 # traversals run from -3 to +3 prior standard deviations


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """`steps` codes from z0 to z1 (both included) as a (steps, D) tensor, for 1-D codes z0, z1 of size D.

    Linear: (1 - t) z0 + t z1. Spherical (slerp, Shoemake 1985; White 2016 for VAEs):
    sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1 with w the angle between z0 and z1, which keeps
    the norm of codes of equal norm (a linear midpoint of two orthogonal unit codes has norm 0.71,
    in a region the prior rarely samples). When sin(w) is ~0 (parallel or opposite codes) or a code
    is ~0, the angle is undefined or the formula unstable, and slerp falls back to the linear path.
    """
    if z0.dim() != 1 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must be 1-D codes of the same size, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (both endpoints), got {steps}")
    a, b = z0.double(), z1.double()  # float64: the angle of nearly parallel codes needs the precision
    t = torch.linspace(0, 1, steps, dtype=torch.float64, device=z0.device)[:, None]
    path = (1 - t) * a + t * b
    if spherical:
        norms = a.norm() * b.norm()
        if norms > 1e-12:
            omega = torch.arccos(((a @ b) / norms).clamp(-1, 1))
            sin_omega = torch.sin(omega)
            if sin_omega > 1e-6:
                path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    path[0], path[-1] = a, b  # exact endpoints, whatever the rounding
    return path.to(z0.dtype)


def read_image(path: str, image_size: int, center_crop: int) -> torch.Tensor:
    """A user's image file as a (3, S, S) float tensor in [0, 1], preprocessed like the training data."""
    try:
        with Image.open(path) as img:
            img.load()
            array = preprocess(img, image_size, center_crop)
    except FileNotFoundError:
        raise UserError(f"image '{path}' not found; pass existing image files to --images") from None
    except Exception as e:  # not an image, truncated, a directory, unreadable ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read image '{path}' ({reason}); pass a JPEG, PNG or WebP file") from None
    return torch.tensor(array).float() / 255  # a copy: PIL's array is read-only


def evenly_spaced(n_available: int, k: int) -> np.ndarray:
    """k distinct indices spread over range(n_available), first and last included (k <= n_available)."""
    return np.linspace(0, n_available - 1, k).round().astype(int)


def split_images(split: ImageSplit, k: int) -> torch.Tensor:
    """k evenly spaced images of a split as floats in [0, 1] on the CPU."""
    return torch.from_numpy(np.array(split.images[evenly_spaced(len(split), k)])).float() / 255


def decode(model, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images decoded from codes of any leading shape (..., D), on the CPU, shape (..., 3, S, S)."""
    device = model.fc_mu.weight.device
    flat = z.reshape(-1, z.shape[-1])
    images = torch.cat([model.decode(flat[i:i + batch_size].to(device)).cpu() for i in range(0, len(flat), batch_size)])
    return images.reshape(*z.shape[:-1], *images.shape[1:])


def posterior_means(model, x: torch.Tensor) -> torch.Tensor:
    """mu of images in [0, 1] (N, 3, S, S), on the CPU."""
    return model.encode(x.to(model.fc_mu.weight.device))[0].cpu()


def reconstruction_grid(model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Originals and reconstructions interleaved by rows of RECON_ROW: (images, nrow)."""
    recon = decode(model, posterior_means(model, x))
    nrow = min(RECON_ROW, len(x))
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start:start + nrow], recon[start:start + nrow]]
    return torch.cat(rows), nrow


def morph_rows(model, a: torch.Tensor, b: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear row, slerp row) for one pair; each is (steps + 2, 3, S, S): a, decoded codes, b."""
    device = model.fc_mu.weight.device
    mu = model.encode(torch.stack([a, b]).to(device))[0].cpu()  # interpolate on the CPU: MPS has no float64
    rows = []
    for spherical in (False, True):
        decoded = model.decode(interpolate(mu[0], mu[1], steps, spherical).to(device)).cpu()
        rows.append(torch.cat([a[None], decoded, b[None]]))
    return rows[0], rows[1]


def strength_label(s: float) -> str:
    return "s = 0" if abs(s) < 1e-9 else f"{s:+.2f}"


# --------------------------------------------------------------------------- edits and traversals

def write_edits(args, model, names: list[str], directions: dict, counts: dict, images: torch.Tensor,
                source: str, out_dir: Path) -> list[Path]:
    """edits.png (one block per attribute) and edits.gif (the first row of the first block)."""
    strengths = torch.linspace(-args.strength, args.strength, args.edit_steps)
    mu = posterior_means(model, images)
    recon = decode(model, mu)
    blocks, strips = [], None
    for name in names:
        edited = decode(model, edited_codes(mu, directions[name], strengths))  # (rows, steps, 3, S, S)
        rows = torch.cat([images[:, None], recon[:, None], edited], dim=1)
        with_it, without = counts[name]
        blocks.append((f"{name}: mu + s * direction  ({source}; direction from {with_it} training images with it, "
                       f"{without} without)", rows, []))
        if strips is None:
            strips = [torch.stack([images[0], edited[0, i]]) for i in range(len(strengths))]
    columns = ["original", "reconstruction", *map(strength_label, strengths.tolist())]
    return [labelled_grid(blocks, columns, out_dir / "edits.png"), sweep_gif(strips, out_dir / "edits.gif")]


def judge_edits(args, model, cfg: Config, checkpoint: Path, train: ImageSplit, names: list[str], directions: dict,
                out_dir: Path) -> Path:
    """edits.json: per attribute, the judge's held-out accuracy and the edit success at strength 1."""
    device = model.fc_mu.weight.device
    labels, all_names = indicators(train)
    judge = trained_judge(train.images, labels, all_names, train.data_id, cfg.data.cache_dir, device)
    split = load_split(cfg, args.split)
    held = held_out(args.split, split, train)
    pick = evenly_spaced(len(held.rows), min(EDIT_JUDGE_IMAGES, len(held.rows)))
    source = split if held.on_split else train
    images, held_labels, where = np.asarray(source.images[held.rows[pick]]), held.labels[pick], held.description
    mu = torch.from_numpy(encode(model, images, cfg.train.batch_size, device, desc="encoding held-out images")[0])
    scores = accuracy(judge, images, held_labels, all_names)
    results = {}
    for name in names:
        a = all_names.index(name)
        results[name] = {"judge_accuracy": scores[name]["accuracy"],
                         "judge_balanced_accuracy": scores[name]["balanced_accuracy"],
                         **edit_success(model, judge, a, mu, held_labels[:, a], directions[name])}
    report = {"checkpoint": str(checkpoint), "held_out": where, "strength": 1.0, "attributes": results}
    path = atomic_write(out_dir / "edits.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"\nedits judged on {where}, strength 1 (success: the judge's decision moves to the intended side)")
    print(f"{'attribute':24s}{'judge acc':>10s}{'balanced':>10s}{'success':>9s}{'add':>7s}{'remove':>8s}"
          f"{'baseline':>10s}{'images':>8s}")
    for name, r in results.items():
        print(f"{name[:23]:24s}{r['judge_accuracy']:>10.3f}{r['judge_balanced_accuracy']:>10.3f}{r['success']:>9.3f}"
              f"{r['success_add']:>7.3f}{r['success_remove']:>8.3f}{r['baseline']:>10.3f}{r['images']:>8d}")
    return path


def write_traversals(args, model, images: np.ndarray, batch_size: int, start: torch.Tensor,
                     start_name: str, out_dir: Path) -> list[Path]:
    """traversals.png and traversals.gif: the --dims dimensions of largest mean KL, -3 ... +3."""
    device = model.fc_mu.weight.device
    mu, logvar = encode(model, images, batch_size, device, desc="encoding for KL per dimension")
    dims = dims_by_kl(mu, logvar, min(args.dims, mu.shape[1]))
    values = torch.linspace(-TRAVERSE_RANGE, TRAVERSE_RANGE, args.traverse_steps)
    grid = decode(model, traversal_codes(start, [d for d, _ in dims], values))  # (dims, values, 3, S, S)
    labels = [f"z[{d}]  KL {kl:.2f}" for d, kl in dims]
    title = f"latent traversals around {start_name}: each row sets one dimension (largest mean KL first)"
    columns = [f"{v:+.1f}" if abs(v) > 1e-9 else "0" for v in values.tolist()]
    return [labelled_grid([(title, grid, labels)], columns, out_dir / "traversals.png"),
            sweep_gif([grid[:, i] for i in range(len(values))], out_dir / "traversals.gif")]


# --------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None):
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64, an 8x8 grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="scale of the samples' spread, > 0 (default 1.0; lower = smoother, less varied faces)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="prior",
                        help="prior: z ~ N(0, T^2 I); gmm: a 10-component Gaussian mixture fitted to the training "
                             "set's posterior means (fitted once per checkpoint, cached under data.cache_dir)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="images to reconstruct, morph and edit (default test)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs of images to morph (default 4)")
    parser.add_argument("--steps", type=int, default=10,
                        help="decoded codes per morph, both endpoints included (default 10)")
    parser.add_argument("--images", nargs="+", metavar="FILE", default=None,
                        help="your own image files: morphed in consecutive pairs, edited, traversed")
    parser.add_argument("--edit", nargs="+", metavar="ATTR", default=None,
                        help="attributes to add and remove (names as the data labels them, e.g. Smiling, glasses)")
    parser.add_argument("--strength", type=float, default=1.5, help="edits run from -S to +S directions (default 1.5)")
    parser.add_argument("--edit-steps", type=int, default=7, help="odd number of edit strengths (default 7)")
    parser.add_argument("--edit-rows", type=int, default=4, help="--split images per edited attribute (default 4)")
    parser.add_argument("--traverse", action="store_true", help="write latent traversals")
    parser.add_argument("--dims", type=int, default=10, help="dimensions to traverse, largest KL first (default 10)")
    parser.add_argument("--traverse-steps", type=int, default=7, help="values from -3 to +3 (default 7)")
    parser.add_argument("--from-prior", action="store_true",
                        help="edit --sampler samples and traverse around z = 0: the figures hold no dataset pixels")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a number > 0, got {args.temperature}")
    if not (math.isfinite(args.strength) and args.strength > 0):
        raise UserError(f"--strength must be a number > 0, got {args.strength}")
    for name, value, least in (("--n", args.n, 1), ("--pairs", args.pairs, 1), ("--steps", args.steps, 2),
                               ("--edit-steps", args.edit_steps, 3), ("--edit-rows", args.edit_rows, 1),
                               ("--dims", args.dims, 1), ("--traverse-steps", args.traverse_steps, 2)):
        if value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    if args.edit_steps % 2 == 0:
        raise UserError(f"--edit-steps must be odd (so that s = 0 is shown), got {args.edit_steps}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    model, cfg, state, checkpoint = load_trained(args)
    size, crop = cfg.data.image_size, cfg.data.center_crop
    user_images = torch.stack([read_image(p, size, crop) for p in args.images]) if args.images else None
    out_dir = ensure_writable_dir(Path(cfg.paths.results_dir) / OUT_DIR, "paths.results_dir")
    device = next(model.parameters()).device
    bs = cfg.train.batch_size
    print(f"{checkpoint} (epoch {state.get('epoch')}), {size}x{size} images, latent {model.latent_dim}")
    needs_train = args.sampler == "gmm" or args.edit
    train = load_split(cfg, "train") if needs_train else None
    if args.edit:  # unknown names and unlabelled data fail here, before anything is written
        names = resolve(args.edit, indicators(train)[1])
    written = []
    with torch.no_grad():
        gmm = training_gmm(model, checkpoint, train.images, train.data_id, cfg.data.cache_dir, bs, device) \
            if args.sampler == "gmm" else None
        samples = decode(model, latent_codes(args.sampler, args.n, model.latent_dim, args.seed, gmm, args.temperature))
        written.append(save_image_grid(samples, out_dir / "samples.png", nrow=math.ceil(math.sqrt(args.n))))

        split = None
        if user_images is None:
            split = load_split(cfg, args.split)
            if len(split) < 2:
                raise DataError(f"the {args.split} split has {len(split)} image(s); reconstructions and "
                                "morphs need at least 2 (choose another --split or use --images A B)")
            k = min(RECON_IMAGES, len(split))
            k = k - k % RECON_ROW if k > RECON_ROW else k  # whole blocks only, so rows line up
            grid, nrow = reconstruction_grid(model, split_images(split, k))
            written.append(save_image_grid(grid, out_dir / "reconstructions.png", nrow=nrow))
            pairs = min(args.pairs, len(split) // 2)
            if pairs < args.pairs:
                print(f"the {args.split} split has {len(split)} images: morphing {pairs} pairs, not {args.pairs}")
            x = split_images(split, 2 * pairs)
        else:
            x = user_images[:len(user_images) - len(user_images) % 2]
        if len(x) >= 2:
            rows = [morph_rows(model, x[i], x[i + 1], args.steps) for i in range(0, len(x), 2)]
            morph = torch.cat([torch.cat(pair) for pair in rows])
            written.append(save_image_grid(morph, out_dir / "morph.png", nrow=args.steps + 2))
            slerp = rows[0][1]  # the first pair's spherical row: a, codes..., b
            written.append(sweep_gif([torch.stack([slerp[0], image, slerp[-1]]) for image in slerp[1:-1]],
                                     out_dir / "morph.gif"))
        else:
            print("one image given: no morph (it needs two)")

        if args.edit or args.traverse:
            if args.from_prior:
                sources, source = samples[:args.edit_rows], f"{args.sampler} samples"
            elif user_images is not None:
                sources, source = user_images, "your images"
            else:
                sources, source = split_images(split, min(args.edit_rows, len(split))), f"{args.split} images"
        if args.edit:
            directions, counts = attribute_directions(model, checkpoint, train, cfg.data.cache_dir, bs, device)
            names = resolve(names, list(directions))  # an attribute without both sides has no direction
            written += write_edits(args, model, names, directions, counts, sources, source, out_dir)
            written.append(judge_edits(args, model, cfg, checkpoint, train, names, directions, out_dir))
        if args.traverse:
            ranking = split if split is not None else load_split(cfg, args.split)
            start = torch.zeros(model.latent_dim) if args.from_prior else posterior_means(model, sources[:1])[0]
            start_name = "z = 0" if args.from_prior else f"the first of the {source}"
            written += write_traversals(args, model, ranking.images, bs, start, start_name, out_dir)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
