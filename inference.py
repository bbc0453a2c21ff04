"""Generate faces, reconstruct and morph images, and steer the latent space of a trained VAE.

    python inference.py                                  # checkpoints/best_vae.pth, test split
    python inference.py --n 100 --temperature 0.7 --seed 1
    python inference.py --sampler gmm                    # sample where the training codes are
    python inference.py --pairs 6 --steps 12 --split val
    python inference.py --images me.jpg friend.png       # your photos: faces aligned like CelebA, morphed
    python inference.py --images me.jpg --edit Smiling Eyeglasses   # edit your own photo
    python inference.py --edit Smiling --judge           # + edits.json: do the edits work, what do they keep?
    python inference.py --edit hat --traverse --from-prior   # edit and traverse generated faces only
    python inference.py --serve                          # the face editor in the browser: http://127.0.0.1:7860

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
- aligned/NAME.png     with --images: what the model saw of each file (the face found and aligned like
                       CelebA's images, or with --align off the picture's centre), image_size pixels.
- photo_edits.png      with --images and --edit: per photo, the photo with the five landmarks found,
                       the model's input, its reconstruction, and each attribute added (or removed,
                       where the face has it) as edits.png does.
- edits.png            with --edit: a block per attribute whose rows are images (--edit-rows evenly
                       spaced --split images, your --images, or --from-prior samples) and whose columns
                       are the original, its reconstruction, and --edit-steps edits: each face moved along
                       the attribute's --method direction until the latent classifier gives
                       probabilities from 1 - P to P (--target P), or by -S ... +S (--strength S).
                       Directions and classifiers are fitted once per checkpoint (src/editing.py).
- edits.gif            the first row of edits.png, swept from one end to the other and back.
- edits.json           with --judge: does each edit work, and what does it keep? An independent CNN judge
                       (trained once per data set on the labelled training images, cached) scores
                       held-out images edited by each method: success (adding / removing), preservation
                       of the other attributes it reads reliably, latent distance moved, baseline.
- traversals.png       with --traverse: the --dims latent dimensions of largest mean KL, one row each,
                       set to -3 ... +3 around a start code (the first image's mu, or 0 with --from-prior).
- traversals.gif       the traversal, all rows at once.

With --images A [B ...] the images are your files (EXIF orientation applied; with --align the face is
found and aligned like CelebA, src/faces.py, then cropped and resized like the training data): the
morph runs between consecutive pairs (it needs two), reconstructions.png is skipped, and no dataset
is read unless edits, traversals or the gmm sampler need it.
Everything is deterministic: no z is sampled except the seeded prior or mixture samples.

With --serve nothing is written: the face editor (src/editor.py) serves a page on --host:--port
(127.0.0.1:7860) where photos are uploaded and edited with sliders, samples drawn, faces morphed and
dimensions traversed; --align, --method and --target apply to it as to the figures.
"""

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from src.attributes import HeldOut, held_out, indicators, resolve
from src.checkpoint import load_trained
from src.config import Config, argument_parser
from src.dataset import ImageSplit, load_split
from src.editing import (DEFAULT_METHOD, DEFAULT_TARGET, METHODS, RELIABLE_ACCURACY, Edit, LatentAttributes, edited,
                         judge_methods, latent_attributes, sweep)
from src.errors import DataError, UserError, run_cli
from src.faces import Face, describe, model_input, open_photo, small_face_warning, trained_on_aligned_faces
from src.judge import accuracy, trained_judge
from src.latent import (SAMPLERS, TRAVERSE_RANGE, decode, dims_by_kl, encode, latent_codes, morph_rows, posterior_means,
                        training_gmm, traversal_codes)
from src.threads import configure_threads
from src.utils import atomic_write, ensure_writable_dir, labelled_grid, save_image_grid, sweep_gif

OUT_DIR = "inference_test_set"
RECON_IMAGES, RECON_ROW = 16, 8      # reconstructions.png: 2 blocks of 8
EDIT_JUDGE_IMAGES = 1000             # at most this many held-out images per attribute for edits.json
PHOTO_PANEL = 192                    # pixels per image in photo_edits.png


def evenly_spaced(n_available: int, k: int) -> np.ndarray:
    """k distinct indices spread over range(n_available), first and last included (k <= n_available)."""
    return np.linspace(0, n_available - 1, k).round().astype(int)


def split_images(split: ImageSplit, k: int) -> torch.Tensor:
    """k evenly spaced images of a split as floats in [0, 1] on the CPU."""
    return torch.from_numpy(np.array(split.images[evenly_spaced(len(split), k)])).float() / 255


def reconstruction_grid(model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Originals and reconstructions interleaved by rows of RECON_ROW: (images, nrow)."""
    recon = decode(model, posterior_means(model, x))
    nrow = min(RECON_ROW, len(x))
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start:start + nrow], recon[start:start + nrow]]
    return torch.cat(rows), nrow


# --------------------------------------------------------------------------- your photos

def read_photos(paths: Sequence[str], cfg: Config, align: bool, out_dir: Path
                ) -> tuple[torch.Tensor, list[tuple[Image.Image, Face | None]]]:
    """Your images as the model's inputs (N, 3, S, S) in [0, 1]: each face found and aligned like
    CelebA (or, unaligned, the picture's centre), and written to aligned/<name>.png so you see
    what the model saw. Also each photo and the face found in it (None when not aligned)."""
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
        inputs.append(torch.from_numpy(array.copy()).float() / 255)
    print(f"wrote the model's inputs to {aligned_dir}/ ({'aligned like CelebA' if align else 'not aligned'})")
    return torch.stack(inputs), photos


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


def write_photo_edits(args, model, photos: list, inputs: torch.Tensor, names: list[str], attrs: LatentAttributes,
                      out_dir: Path) -> Path:
    """photo_edits.png: per photo, the photo with its landmarks, the model's input, its reconstruction,
    and each --edit attribute added (or, where the face has it, removed) as the figures' edit does."""
    mu = posterior_means(model, inputs).double().numpy()
    columns, edits = [], []
    for name in names:
        add = attrs.logits(name, mu) < 0  # the latent classifier says the face lacks it
        edits.append(decode(model, torch.from_numpy(edited(mu, attrs, name, edit_for(args, name, names), add)).float()))
        columns.append(f"{'+' if add.all() else '-' if not add.any() else '+/-'}{name}")
    side = PHOTO_PANEL
    grow = lambda x: F.interpolate(x, size=(side, side), mode="nearest")
    rows = [torch.stack([photo_panel(photo, face, side), grow(inputs[i:i + 1])[0],
                         grow(decode(model, torch.from_numpy(mu[i:i + 1]).float()))[0],
                         *[grow(e[i:i + 1])[0] for e in edits]]) for i, (photo, face) in enumerate(photos)]
    how = edit_for(args, names[0], names)
    to = f"to p = {how.target:g}" if how.target is not None else f"by {how.strength:g}"
    title = f"your photos: face found, aligned like CelebA, reconstructed, edited ({how.method} {to})"
    return labelled_grid([(title, torch.stack(rows), [])], ["photo", "model input", "reconstruction", *columns],
                         out_dir / "photo_edits.png", min_cell=side)


def aligns(args, cfg: Config) -> bool:
    """--align on/off, or auto: as the model's training data was (src/faces.py, trained_on_aligned_faces)."""
    return trained_on_aligned_faces(cfg.data) if args.align == "auto" else args.align == "on"


# --------------------------------------------------------------------------- edits and traversals

def edit_for(args, name: str, edited_names: Sequence[str]) -> Edit:
    """The edit the figures show for attribute `name`: --method, to --target or by +-strength, keeping
    --keep (by default the other edited attributes) when conditional."""
    keep = tuple(k for k in (args.keep if args.keep is not None else edited_names) if k != name)
    if args.strength is not None:
        return Edit(args.method, strength=args.strength, keep=keep)
    return Edit(args.method, strength=None, target=args.target, keep=keep)


def judged_edits(args, name: str, edited_names: Sequence[str]) -> dict[str, Edit]:
    """The methods edits.json compares: mean difference at strength 1, the classifier's normal and the
    conditional direction to the target (and the figure's own edit, if it is none of those)."""
    keep = edit_for(args, name, edited_names).keep
    edits = {"mean, strength 1": Edit("mean", 1.0),
             f"mean to p={args.target:g}": Edit("mean", None, args.target),
             f"normal to p={args.target:g}": Edit("normal", None, args.target),
             f"conditional to p={args.target:g}": Edit("conditional", None, args.target, keep)}
    shown = edit_for(args, name, edited_names)
    if shown not in edits.values():
        edits[shown.describe()] = shown
    return edits


def write_edits(args, model, names: list[str], attrs: LatentAttributes, images: torch.Tensor,
                source: str, out_dir: Path) -> list[Path]:
    """edits.png (one block per attribute) and edits.gif (the first row of the first block)."""
    mu = posterior_means(model, images).double().numpy()
    recon = decode(model, torch.from_numpy(mu).float())
    blocks, strips = [], None
    for name in names:
        how = edit_for(args, name, names)
        codes, columns = sweep(mu, attrs, name, how, args.edit_steps)
        edited = decode(model, torch.from_numpy(codes).float())  # (rows, steps, 3, S, S)
        rows = torch.cat([images[:, None], recon[:, None], edited], dim=1)
        with_it, without = attrs.counts[attrs.index(name)]
        blocks.append((f"{name}: {how.describe()}  ({source}; fitted on {with_it} training images with it, "
                       f"{without} without)", rows, []))
        if strips is None:
            strips = [torch.stack([images[0], edited[0, i]]) for i in range(edited.shape[1])]
    columns = ["original", "reconstruction", *columns]
    return [labelled_grid(blocks, columns, out_dir / "edits.png"), sweep_gif(strips, out_dir / "edits.gif")]


def judge_edits(args, model, cfg: Config, checkpoint: Path, train: ImageSplit, held: HeldOut, names: list[str],
                attrs: LatentAttributes, out_dir: Path) -> Path:
    """edits.json and a printed table: per attribute and method, success, preservation and distance."""
    device = model.fc_mu.weight.device
    labels, all_names = indicators(train)
    judge = trained_judge(train.images, labels, all_names, train.data_id, cfg.data.cache_dir, device)
    pick = evenly_spaced(len(held.rows), min(EDIT_JUDGE_IMAGES, len(held.rows)))
    source = load_split(cfg, args.split) if held.on_split else train
    images, held_labels = np.asarray(source.images[held.rows[pick]]), held.labels[pick]
    mu = encode(model, images, cfg.train.batch_size, device, desc="encoding held-out images")[0].astype(np.float64)
    scores = accuracy(judge, images, held_labels, all_names)
    reliable, results = judge_methods(model, judge, attrs, mu, held_labels, all_names, scores,
                                      {name: judged_edits(args, name, names) for name in names})
    report = {"checkpoint": str(checkpoint), "held_out": held.description,
              "preservation_attributes": reliable, "attributes": results}
    path = atomic_write(out_dir / "edits.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"\nedits judged on {held.description}: success = the judge's decision moves to the intended side "
          f"(add / remove); kept = decisions unchanged on the {len(reliable)} other attributes it reads with "
          f"accuracy >= {RELIABLE_ACCURACY}")
    print(f"{'attribute':22s}{'method':34s}{'success':>8s}{'add':>7s}{'remove':>8s}{'kept':>7s}{'moved':>7s}"
          f"{'baseline':>9s}{'judge':>7s}")
    for name, r in results.items():
        for label, m in r["methods"].items():
            print(f"{name[:21]:22s}{label[:33]:34s}{m['success']:>8.3f}{m['success_add']:>7.3f}"
                  f"{m['success_remove']:>8.3f}{m['preservation']:>7.3f}{m['latent_distance']:>7.2f}"
                  f"{m['baseline']:>9.3f}{r['judge_balanced_accuracy']:>7.3f}")
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
    parser.add_argument("--align", choices=("auto", "on", "off"), default="auto",
                        help="find the face in each --images file and align it like CelebA (auto: when the model "
                             "was trained on aligned photos, i.e. CelebA or a folder with data.align)")
    parser.add_argument("--edit", nargs="+", metavar="ATTR", default=None,
                        help="attributes to add and remove (names as the data labels them, e.g. Smiling, glasses)")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help="edit direction: mean difference, the latent classifier's normal, or that normal with "
                             f"the --keep attributes' normals projected out (default {DEFAULT_METHOD})")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET,
                        help="move each face until the latent classifier gives this probability of the attribute "
                             f"(1 - P to remove it; default {DEFAULT_TARGET}); the figure runs from 1 - P to P")
    parser.add_argument("--strength", type=float, default=None,
                        help="instead of --target: fixed steps, the figure running from -S to +S directions")
    parser.add_argument("--keep", nargs="*", metavar="ATTR", default=None,
                        help="attributes a conditional edit leaves unchanged (default: the other --edit attributes)")
    parser.add_argument("--judge", action="store_true",
                        help="score the edits with the independent judge (trained once per data set, ~10 min on "
                             "2 cores): edits.json and a table of success and preservation per method")
    parser.add_argument("--edit-steps", type=int, default=7, help="odd number of edit strengths (default 7)")
    parser.add_argument("--edit-rows", type=int, default=4, help="--split images per edited attribute (default 4)")
    parser.add_argument("--traverse", action="store_true", help="write latent traversals")
    parser.add_argument("--dims", type=int, default=10, help="dimensions to traverse, largest KL first (default 10)")
    parser.add_argument("--traverse-steps", type=int, default=7, help="values from -3 to +3 (default 7)")
    parser.add_argument("--from-prior", action="store_true",
                        help="edit --sampler samples and traverse around z = 0: the figures hold no dataset pixels")
    parser.add_argument("--serve", action="store_true",
                        help="serve the face editor in the browser instead of writing figures (src/editor.py)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="--serve: address to listen on (default 127.0.0.1: this machine only; any other "
                             "lets anyone on the network use it)")
    parser.add_argument("--port", type=int, default=7860, help="--serve: port (default 7860; 0: any free one)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a number > 0, got {args.temperature}")
    if args.strength is not None and not (math.isfinite(args.strength) and args.strength > 0):
        raise UserError(f"--strength must be a number > 0, got {args.strength}")
    if not 0.5 < args.target < 1:
        raise UserError(f"--target must be a probability between 0.5 and 1 (e.g. 0.9), got {args.target}")
    for name, value, least in (("--n", args.n, 1), ("--pairs", args.pairs, 1), ("--steps", args.steps, 2),
                               ("--edit-steps", args.edit_steps, 3), ("--edit-rows", args.edit_rows, 1),
                               ("--dims", args.dims, 1), ("--traverse-steps", args.traverse_steps, 2)):
        if value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")
    if args.edit_steps % 2 == 0:
        raise UserError(f"--edit-steps must be odd (so that s = 0 is shown), got {args.edit_steps}")
    if args.judge and not args.edit:
        raise UserError("--judge scores edits: name the attributes with --edit")
    if not 0 <= args.port < 2**16:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    return args


def serve_editor(args) -> None:
    """--serve: the face editor on --host:--port until Ctrl-C."""
    from src.editor import create_app, listen, serve  # fastapi and uvicorn: only when serving
    sock = listen(args.host, args.port)
    model, cfg, state, checkpoint = load_trained(args)
    configure_threads(cfg.train.threads, next(model.parameters()).device, measure_alone=True)  # tunes on decodes
    print(f"{checkpoint} (epoch {state.get('epoch')}), {cfg.data.image_size}x{cfg.data.image_size} images, "
          f"latent {model.latent_dim}; photos {'aligned like CelebA' if aligns(args, cfg) else 'not aligned'}")
    app = create_app(model, cfg, checkpoint, aligns(args, cfg), host=args.host, method=args.method,
                     target=args.target)
    serve(app, sock, args.host)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        return serve_editor(args)
    model, cfg, state, checkpoint = load_trained(args)
    size = cfg.data.image_size
    out_dir = ensure_writable_dir(Path(cfg.paths.results_dir) / OUT_DIR, "paths.results_dir")
    user_images, photos = read_photos(args.images, cfg, aligns(args, cfg), out_dir) if args.images else (None, [])
    device = next(model.parameters()).device
    bs = cfg.train.batch_size
    configure_threads(cfg.train.threads, device)  # "auto" tunes on the encoder and edit-judge batches
    print(f"{checkpoint} (epoch {state.get('epoch')}), {size}x{size} images, latent {model.latent_dim}")
    needs_train = args.sampler == "gmm" or args.edit
    train = load_split(cfg, "train") if needs_train else None
    if args.edit:  # unknown names and unlabelled data fail here, before anything is written
        names = resolve(args.edit, indicators(train)[1])
        resolve(args.keep or [], indicators(train)[1])
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
            held = held_out(args.split, split if split is not None else load_split(cfg, args.split), train)
            attrs = latent_attributes(model, checkpoint, train, held.fit_rows, cfg.data.cache_dir, bs, device)
            names = resolve(names, attrs.names)  # an attribute without both sides has no direction
            written += write_edits(args, model, names, attrs, sources, source, out_dir)
            if photos:
                written.append(write_photo_edits(args, model, photos, user_images, names, attrs, out_dir))
            if args.judge:
                written.append(judge_edits(args, model, cfg, checkpoint, train, held, names, attrs, out_dir))
        if args.traverse:
            ranking = split if split is not None else load_split(cfg, args.split)
            start = torch.zeros(model.latent_dim) if args.from_prior else posterior_means(model, sources[:1])[0]
            start_name = "z = 0" if args.from_prior else f"the first of the {source}"
            written += write_traversals(args, model, ranking.images, bs, start, start_name, out_dir)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
