"""The same faces edited by label and along a direction: a conditional model's docs figure.

    python -m tools.label_vs_direction --checkpoint checkpoints/conditional/best_vae.pth \
        --edit Smiling Eyeglasses Male Wearing_Hat Blond_Hair --images astronaut.png data.root=/path/to/celeba

The faces are --n GMM samples (codes and labels drawn together, --seed) and any --images (aligned like
inference.py's). Each face gets a block of two rows: every --edit attribute added (removed where the
face's label says it has it) by setting its label to --strength S (1 - S to remove), and by the
conditional direction to --target P on the same code. Writes {paths.results_dir}/label_vs_direction.png.
"""

from typing import Sequence

import numpy as np
import torch

from src.attributes import held_out, resolve
from src.cli import argument_parser, trained_model
from src.conditioning import code_attributes, labelled_codes
from src.dataset import load_split
from src.editing import DEFAULT_TARGET, LABEL, Edit, edited, lacks
from src.errors import UserError, run_cli
from src.faces import trained_on_aligned_faces
from src.figures import labelled_grid
from src.files import ensure_writable_dir
from src.latent import decode, latent_codes, posterior_means, training_gmm
from src.showcase import read_photos


def parse_args(argv: Sequence[str] | None):
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--edit", nargs="+", metavar="ATTR", required=True, help="the labels to edit")
    parser.add_argument("--n", type=int, default=3, help="GMM samples to edit (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    parser.add_argument("--images", nargs="*", metavar="FILE", default=[], help="photos to edit too")
    parser.add_argument("--strength", type=float, default=1.0, help="the label's value when added (default 1)")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET,
                        help=f"the direction's target probability (default {DEFAULT_TARGET})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    model, cfg, state, checkpoint = trained_model(args)
    if not model.conditions:
        raise UserError(f"{checkpoint} is not a conditional model (model.conditional): it has no labels to edit")
    train = load_split(cfg, "train")
    model = labelled_codes(model, cfg.model.conditional, train, cfg.data.cache_dir)
    names = resolve(args.edit, cfg.model.conditional)
    bs, out_dir = cfg.train.batch_size, ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    with torch.no_grad():
        gmm = training_gmm(model, checkpoint, train.images, train.data_id, cfg.data.cache_dir, bs, model.device)
        codes = latent_codes("gmm", args.n, model.latent_dim, args.seed, gmm).double().numpy()
        if args.images:
            photos = read_photos(args.images, cfg, trained_on_aligned_faces(cfg.data), out_dir)
            codes = np.concatenate([codes, posterior_means(model, photos.inputs).double().numpy()])
        held = held_out("test", load_split(cfg, "test"), train)
        attrs = code_attributes(model, checkpoint, train, held.fit_rows, cfg.data.cache_dir, bs)
        by_label, by_direction = [], []
        for name in names:
            add = lacks(codes, attrs, name, LABEL)
            keep = tuple(n for n in names if n != name)
            by_label.append(edited(codes, attrs, name, Edit(LABEL, args.strength), add))
            by_direction.append(edited(codes, attrs, name, Edit("conditional", None, args.target, keep), add))
        faces = decode(model, torch.from_numpy(codes).float())
        label_faces = decode(model, torch.from_numpy(np.stack(by_label, 1).reshape(-1, codes.shape[1])).float())
        direction_faces = decode(model, torch.from_numpy(np.stack(by_direction, 1).reshape(-1, codes.shape[1])).float())
    shape = (len(codes), len(names), *faces.shape[1:])
    rows = torch.stack([torch.cat([faces[:, None], label_faces.reshape(shape)], 1),
                        torch.cat([faces[:, None], direction_faces.reshape(shape)], 1)], 1)
    has = [codes[:, attrs.label_column(name)] >= 0.5 for name in names]
    blocks = [(f"face {i + 1}: " + ", ".join(f"{'-' if h[i] else '+'}{n}" for n, h in zip(names, has)), rows[i],
               [f"label to {args.strength:g}", f"direction p={args.target:g}"]) for i in range(len(codes))]
    path = labelled_grid(blocks, ["face", *names], out_dir / "label_vs_direction.png")
    print(f"wrote {path} ({checkpoint}, epoch {state.get('epoch')}: {args.n} GMM samples"
          f"{f' and {len(args.images)} photos' if args.images else ''})")


if __name__ == "__main__":
    run_cli(main)
