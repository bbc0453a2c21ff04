"""Export a trained checkpoint as a pretrained file that samples and edits without any dataset.

    python -m tools.export_model --checkpoint checkpoints/faces/best_vae.pth --out pretrained/celeba64.pt \
        data.root=/path/to/celeba

Reads the training data once to fit what the file carries (the GMM sampler, the attribute
directions and classifiers on the training images but the judge's held-out tenth, the latent
dimensions ranked by KL on test images: src/studio.py's fit, cached under data.cache_dir), writes
the file (src/pretrained.py) and records its SHA-256 in SHA256SUMS beside it. Prints its size.
"""

from pathlib import Path
from typing import Sequence

from src.cli import argument_parser, trained_model
from src.errors import UserError, run_cli
from src.pretrained import load_pretrained, pack, save_pretrained
from src.studio import fit


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--out", required=True, help="the file to write, e.g. pretrained/celeba64.pt")
    args = parser.parse_args(argv)
    model, cfg, state, checkpoint = trained_model(args)
    if model.conditions:
        raise UserError(f"{checkpoint} is a conditional model: exporting one is not supported yet (the file would "
                        "need its labeller too); export an unconditional checkpoint")
    fitted = fit(model, cfg, checkpoint)
    if fitted.attrs is None or fitted.gmm is None:
        raise UserError(f"cannot export without the training data and its labels: {' '.join(fitted.notes)}")
    history = state.get("history") or [{}]
    info = {"epoch": state.get("epoch"), "val_total": history[-1].get("val_total")}
    out = Path(args.out)
    digest = save_pretrained(pack(model.cpu(), cfg, fitted.gmm, fitted.attrs, fitted.dims, info), out)
    load_pretrained(out)  # what was written reads back, checked
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, SHA-256 {digest}) from {checkpoint} "
          f"(epoch {state.get('epoch')}); recorded in {out.parent / 'SHA256SUMS'}")


if __name__ == "__main__":
    run_cli(main)
