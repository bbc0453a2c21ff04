"""Generate faces, reconstruct test images and morph between faces with a trained VAE.

    python inference.py                                  # checkpoints/best_vae.pth, test split
    python inference.py --n 100 --temperature 0.7 --seed 1
    python inference.py --sampler gmm                    # sample where the training codes are
    python inference.py --pairs 6 --steps 12 --split val
    python inference.py --images me.jpg friend.png       # morph two images of your own

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
- morph.gif            the slerp morph of the first pair, forth and back, shown between the two real
                       images, upscaled to at least 128 px; the bar under it shows t.

With --images A B the morph is between those two files (read with PIL, cropped and resized like the
training data: data.center_crop assumes an aligned CelebA-like frame, data.center_crop=0 keeps the
largest centred square) and no dataset is read: reconstructions.png is skipped, samples.png is
still written.
Everything is deterministic: no z is sampled except the seeded prior samples.
"""

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from src.config import argument_parser
from src.dataset import load_split, preprocess
from src.errors import DataError, UserError, run_cli
from src.latent import SAMPLERS, latent_codes, training_gmm
from src.checkpoint import load_trained
from src.utils import ensure_writable_dir, save_image_grid, to_uint8

OUT_DIR = "inference_test_set"
RECON_IMAGES, RECON_ROW = 16, 8      # reconstructions.png: 2 blocks of 8
GIF_MIN_SIZE = 128                   # each GIF panel is upscaled to at least this many pixels
GIF_GAP, GIF_BAR = 4, 4              # white gap between panels; height of the progress bar
GIF_FRAME_MS, GIF_END_MS = 120, 700  # frame duration; the two end frames are held longer


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
        raise UserError(f"image '{path}' not found; pass two existing image files to --images") from None
    except Exception as e:  # not an image, truncated, a directory, unreadable ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read image '{path}' ({reason}); pass a JPEG, PNG or WebP file") from None
    return torch.tensor(array).float() / 255  # a copy: PIL's array is read-only


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255


def evenly_spaced(n_available: int, k: int) -> np.ndarray:
    """k distinct indices spread over range(n_available), first and last included (k <= n_available)."""
    return np.linspace(0, n_available - 1, k).round().astype(int)


def reconstruction_grid(model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Originals and reconstructions interleaved by rows of RECON_ROW: (images, nrow)."""
    device = model.fc_mu.weight.device
    recon = model.decode(model.encode(x.to(device))[0]).cpu()
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


def gif_frames(row: torch.Tensor) -> tuple[list[Image.Image], list[int]]:
    """Ping-pong frames of one morph row (a, decoded..., b): each shows a | morph | b and a t bar."""
    a, morph, b = row[0], row[1:-1], row[-1]
    steps, size = len(morph), row.shape[-1]
    scale = max(1, math.ceil(GIF_MIN_SIZE / size))
    panel = size * scale

    def to_pil(image: torch.Tensor) -> Image.Image:
        array = to_uint8(image).permute(1, 2, 0).numpy()
        return Image.fromarray(array).resize((panel, panel), Image.NEAREST)

    width = 3 * panel + 4 * GIF_GAP
    height = panel + 3 * GIF_GAP + GIF_BAR
    base = Image.new("RGB", (width, height), "white")
    base.paste(to_pil(a), (GIF_GAP, GIF_GAP))
    base.paste(to_pil(b), (3 * GIF_GAP + 2 * panel, GIF_GAP))
    frames = []
    for i, image in enumerate(morph):
        frame = base.copy()
        x0 = 2 * GIF_GAP + panel
        frame.paste(to_pil(image), (x0, GIF_GAP))
        bar_y = 2 * GIF_GAP + panel
        frame.paste((200, 200, 200), (x0, bar_y, x0 + panel, bar_y + GIF_BAR))
        filled = round(panel * i / (steps - 1))
        if filled:
            frame.paste((60, 60, 60), (x0, bar_y, x0 + filled, bar_y + GIF_BAR))
        frames.append(frame)
    order = list(range(steps)) + list(range(steps - 2, 0, -1))  # forth and back, ends not repeated
    durations = [GIF_END_MS if i in (0, steps - 1) else GIF_FRAME_MS for i in order]
    return [frames[i] for i in order], durations


def save_gif(frames: list[Image.Image], durations: list[int], path: Path) -> Path:
    # GIF merges a frame identical to the one before it; the t bar keeps neighbouring frames distinct.
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--n", type=int, default=64, help="number of prior samples (default 64, an 8x8 grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="scale of the samples' spread, > 0 (default 1.0; lower = smoother, less varied faces)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="prior",
                        help="prior: z ~ N(0, T^2 I); gmm: a 10-component Gaussian mixture fitted to the training "
                             "set's posterior means (fitted once per checkpoint, cached under data.cache_dir)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="images to reconstruct and morph (default test)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs of images to morph (default 4)")
    parser.add_argument("--steps", type=int, default=10,
                        help="decoded codes per morph, both endpoints included (default 10)")
    parser.add_argument("--images", nargs=2, metavar=("A", "B"), default=None,
                        help="morph these two image files instead of pairs from --split (reads no dataset)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be a number > 0, got {args.temperature}")
    for name, value, least in (("--n", args.n, 1), ("--pairs", args.pairs, 1), ("--steps", args.steps, 2)):
        if value < least:
            raise UserError(f"{name} must be at least {least}, got {value}")

    model, cfg, state, checkpoint = load_trained(args)
    size, crop = cfg.data.image_size, cfg.data.center_crop
    user_pair = [read_image(p, size, crop) for p in args.images] if args.images else None
    out_dir = ensure_writable_dir(Path(cfg.paths.results_dir) / OUT_DIR, "paths.results_dir")
    device = next(model.parameters()).device
    print(f"{checkpoint} (epoch {state.get('epoch')}), {size}x{size} images, latent {model.latent_dim}")
    written = []
    with torch.no_grad():
        gmm = None
        if args.sampler == "gmm":
            train = load_split(cfg, "train")
            gmm = training_gmm(model, checkpoint, train.images, train.data_id, cfg.data.cache_dir,
                               cfg.train.batch_size, device)
        z = latent_codes(args.sampler, args.n, model.latent_dim, args.seed, gmm, args.temperature)
        samples = model.decode(z.to(device))
        written.append(save_image_grid(samples, out_dir / "samples.png", nrow=math.ceil(math.sqrt(args.n))))

        if user_pair is None:
            split = load_split(cfg, args.split)
            if len(split) < 2:
                raise DataError(f"the {args.split} split has {len(split)} image(s); reconstructions and "
                                "morphs need at least 2 (choose another --split or use --images A B)")
            k = min(RECON_IMAGES, len(split))
            k = k - k % RECON_ROW if k > RECON_ROW else k  # whole blocks only, so rows line up
            grid, nrow = reconstruction_grid(model, to_float(split.images[evenly_spaced(len(split), k)]))
            written.append(save_image_grid(grid, out_dir / "reconstructions.png", nrow=nrow))
            pairs = min(args.pairs, len(split) // 2)
            if pairs < args.pairs:
                print(f"the {args.split} split has {len(split)} images: morphing {pairs} pairs, not {args.pairs}")
            x = to_float(split.images[evenly_spaced(len(split), 2 * pairs)])
            pair_images = [(x[2 * i], x[2 * i + 1]) for i in range(pairs)]
        else:
            pair_images = [tuple(user_pair)]

        rows = [morph_rows(model, a, b, args.steps) for a, b in pair_images]
        morph = torch.cat([torch.cat(pair) for pair in rows])
        written.append(save_image_grid(morph, out_dir / "morph.png", nrow=args.steps + 2))
        frames, durations = gif_frames(rows[0][1])  # the slerp row of the first pair
        written.append(save_gif(frames, durations, out_dir / "morph.gif"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
