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

import math
from pathlib import Path
from typing import Sequence

import torch

from src.attributes import held_out, indicators, resolve
from src.cli import argument_parser, trained_model
from src.conditioning import LabelledCodes, code_attributes, drawn_labels, labelled_codes
from src.config import Config
from src.dataset import ImageSplit, load_split
from src.editing import DEFAULT_METHOD, DEFAULT_TARGET, LABEL, LABEL_STRENGTH, METHODS
from src.errors import DataError, UserError, run_cli
from src.faces import NoFaceFound, trained_on_aligned_faces
from src.files import ensure_writable_dir
from src.latent import SAMPLERS, latent_codes, posterior_means, training_gmm
from src.pretrained import Pretrained, shipped_parts
from src.showcase import (
    EditPlan,
    Photos,
    morph_images,
    ranked_dims,
    read_photos,
    split_images,
    write_edit_report,
    write_edits,
    write_morphs,
    write_photo_edits,
    write_reconstructions,
    write_samples,
    write_traversals,
)
from src.threads import configure_threads

OUT_DIR = "inference_test_set"


def parse_args(argv: Sequence[str] | None):
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--n", type=int, default=64, help="number of samples (default 64, an 8x8 grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="scale of the samples' spread, > 0 (default 1.0; lower = smoother, less varied faces)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="prior",
                        help="prior: z ~ N(0, T^2 I); gmm: a 10-component Gaussian mixture fitted to the training "
                             "set's posterior means (fitted once per checkpoint, cached under data.cache_dir)")
    parser.add_argument("--with", dest="present", nargs="+", metavar="ATTR", default=[],
                        help="a conditional model's samples have these attributes (their other labels drawn from "
                             "the training images that have them)")
    parser.add_argument("--without", dest="absent", nargs="+", metavar="ATTR", default=[],
                        help="... and lack these")
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
    parser.add_argument("--method", choices=(*METHODS, LABEL), default=DEFAULT_METHOD,
                        help="edit direction: mean difference, the latent classifier's normal, or that normal with "
                             f"the --keep attributes' normals projected out (default {DEFAULT_METHOD}); label: a "
                             f"conditional model's label, set to --strength S (default {LABEL_STRENGTH:g}) or 1 - S")
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


def aligns(args, cfg: Config) -> bool:
    """--align on/off, or auto: as the model's training data was (src/faces.py, trained_on_aligned_faces)."""
    return trained_on_aligned_faces(cfg.data) if args.align == "auto" else args.align == "on"


def your_photos(args, cfg: Config, out_dir: Path) -> Photos:
    """--images read (and aligned); a photo without a face gets the --align advice."""
    try:
        return read_photos(args.images, cfg, aligns(args, cfg), out_dir)
    except NoFaceFound as e:
        raise NoFaceFound(f"{e}, or pass --align off to use the picture's centre as it is") from None


def serve_editor(args) -> None:
    """--serve: the face editor on --host:--port until Ctrl-C."""
    from src.editor import PortUnavailable, create_app, is_loopback, listen, serve  # fastapi: only when serving
    try:
        sock = listen(args.host, args.port)
    except PortUnavailable as e:
        raise PortUnavailable(f"{e}; pass another --port or --host") from None
    model, cfg, state, checkpoint = trained_model(args)
    if model.conditions:  # seen through its codes [z | y], with the labeller's labels of every image
        model = labelled_codes(model, cfg.model.conditional, load_split(cfg, "train"), cfg.data.cache_dir)
    configure_threads(cfg.train.threads, model.device, measure_alone=True)  # tunes on decodes
    print(f"{checkpoint} (epoch {state.get('epoch')}), {cfg.data.image_size}x{cfg.data.image_size} images, "
          f"latent {model.latent_dim}; photos {'aligned like CelebA' if aligns(args, cfg) else 'not aligned'}")
    app = create_app(model, cfg, checkpoint, aligns(args, cfg), host=args.host, method=args.method,
                     target=args.target)
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} is not a loopback address: anyone who can reach this machine on the "
              "network can use the editor (it has no login)")
    serve(app, sock, args.host)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        return serve_editor(args)
    model, cfg, state, checkpoint = trained_model(args)
    shipped = shipped_parts(checkpoint)  # a pretrained file carries its GMM, directions and dimensions
    out_dir = ensure_writable_dir(Path(cfg.paths.results_dir) / OUT_DIR, "paths.results_dir")
    photos = your_photos(args, cfg, out_dir) if args.images else None
    configure_threads(cfg.train.threads, model.device)  # "auto" tunes on the encoder and edit-judge batches
    print(f"{checkpoint} (epoch {state.get('epoch')}), {cfg.data.image_size}x{cfg.data.image_size} images, "
          f"latent {model.latent_dim}")
    needs_train = (args.sampler == "gmm" or args.edit or model.conditions) and (shipped is None or args.judge)
    train = load_split(cfg, "train") if needs_train else None
    if model.conditions:  # seen through its codes [z | y], with the labeller's labels of every image
        model = labelled_codes(model, cfg.model.conditional, train, cfg.data.cache_dir)
    if args.edit:  # unknown names and unlabelled data fail here, before anything is written
        resolve(args.edit + (args.keep or []), shipped.attrs.names if shipped else indicators(train)[1])
    bs, written = cfg.train.batch_size, []
    with torch.no_grad():
        gmm = (shipped.gmm if shipped else training_gmm(model, checkpoint, train.images, train.data_id,
                                                         cfg.data.cache_dir, bs, model.device)) \
            if args.sampler == "gmm" else None
        samples, path = write_samples(model, sampled_codes(args, model, cfg, train, gmm), out_dir)
        written.append(path)
        split = None if photos is not None else images_of(cfg, args.split, optional=shipped is not None)
        if photos is not None:
            morphed = photos.inputs
        elif split is not None:
            morphed = morph_images(split, args.pairs, args.split)  # checks the split has two images first
            written.append(write_reconstructions(model, split, out_dir))
        else:  # a pretrained model without images: generated faces
            morphed = samples[:2 * args.pairs]
        written += write_morphs(model, morphed, args.steps, out_dir)
        sources, source = edit_sources(args, samples, photos, split)
        if args.edit:
            written += write_edit_figures(args, model, cfg, checkpoint, train, split, sources, source, photos,
                                          shipped, out_dir)
        if args.traverse:
            ranked = shipped.dims[:args.dims] if shipped else \
                ranked_dims(model, (split or load_split(cfg, args.split)).images, bs, args.dims)
            start = torch.zeros(model.latent_dim) if args.from_prior else posterior_means(model, sources[:1])[0]
            start_name = "z = 0" if args.from_prior else f"the first of the {source}"
            written += write_traversals(model, ranked, start, start_name, args.traverse_steps, out_dir)
    for path in written:
        print(f"wrote {path}")


def images_of(cfg: Config, split_name: str, optional: bool) -> ImageSplit | None:
    """The split to reconstruct, morph and edit; None (said) when it is optional and cannot be read."""
    try:
        return load_split(cfg, split_name)
    except DataError as e:
        if not optional:
            raise
        print(f"no {split_name} images to reconstruct (data.root {cfg.data.root}: {type(e).__name__}): the "
              "figures use generated faces")
        return None


def edit_sources(args, samples: torch.Tensor, photos: Photos | None, split) -> tuple[torch.Tensor, str]:
    """The faces edits and traversals start from, and what they are: --from-prior samples (or samples
    when there are no images), your images, or --edit-rows images of --split."""
    if args.from_prior or (photos is None and split is None):
        return samples[:args.edit_rows], f"{args.sampler} samples"
    if photos is not None:
        return photos.inputs, "your images"
    return split_images(split, min(args.edit_rows, len(split))), f"{args.split} images"


def write_edit_figures(args, model, cfg: Config, checkpoint: Path, train, split, sources: torch.Tensor, source: str,
                       photos: Photos | None, shipped: Pretrained | None, out_dir: Path) -> list[Path]:
    """edits.png/.gif, photo_edits.png for --images and, with --judge, edits.json. A pretrained file's
    directions need no data; the judge always does."""
    labels = cfg.model.conditional
    plan = EditPlan(args.method, args.target, args.strength, args.keep, labels)
    held = None
    if shipped is None or args.judge:
        held = held_out(args.split, split if split is not None else load_split(cfg, args.split), train)
    attrs = shipped.attrs if shipped else code_attributes(model, checkpoint, train, held.fit_rows, cfg.data.cache_dir,
                                                          cfg.train.batch_size)
    names = resolve(args.edit, attrs.names)  # an attribute without both sides has no direction
    written = write_edits(model, names, attrs, sources, source, plan, args.edit_steps, out_dir)
    if photos is not None:
        written.append(write_photo_edits(model, photos, names, attrs, plan, out_dir))
    if args.judge:
        written.append(write_edit_report(model, cfg, checkpoint, train, held, args.split, names, attrs, plan, out_dir))
    return written


def sampled_codes(args, model, cfg: Config, train, gmm: dict | None) -> torch.Tensor:
    """--n codes of --sampler; a conditional model's prior samples, and any asked --with or --without
    attributes, take label rows drawn from the training labels (the GMM, fitted to the codes [z | y],
    draws both)."""
    codes = latent_codes(args.sampler, args.n, model.latent_dim, args.seed, gmm, args.temperature)
    if not isinstance(model, LabelledCodes):
        if args.present or args.absent:
            raise UserError("--with and --without need a conditional model (model.conditional), which this is not")
        return codes
    if args.sampler == "prior" or args.present or args.absent:
        codes[:, model.vae.latent_dim:] = torch.from_numpy(drawn_labels(model.names, train, args.n, args.seed,
                                                                        args.present, args.absent))
    return codes


if __name__ == "__main__":
    run_cli(main)
