"""The command line the scripts share: options and overrides, the trained model, and advice about flags.

Library functions raise errors about their arguments; this is where a script turns the ones a
flag can fix into advice about that flag.
"""

import argparse
import re
import sys
from pathlib import Path

from src import pretrained
from src.checkpoint import Trained, load_trained
from src.config import load_config
from src.errors import CheckpointNotFound

OVERRIDE = re.compile(r"^[A-Za-z_]+\.[A-Za-z_]+=")  # section.key=value


class _ArgumentParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        """Options may stand between the overrides, and an override may follow a many-valued option
        (--edit Smiling data.root=...): overrides are recognised by their form and passed after '--'."""
        args = list(sys.argv[1:] if args is None else args)
        overrides = [a for a in args if OVERRIDE.match(a)]
        rest = [a for a in args if not OVERRIDE.match(a)]
        return self.parse_intermixed_args(rest + (["--", *overrides] if overrides else []), namespace)


def argument_parser(description: str, checkpoint: bool = False) -> argparse.ArgumentParser:
    """The options every script shares: --config, dotted overrides, --debug (and --checkpoint)."""
    parser = _ArgumentParser(description=description)
    if checkpoint:
        parser.add_argument("--checkpoint", default=None,
                            help="trained model: a checkpoint, or 'pretrained' for the shipped model (default: "
                                 "best_vae.pth in paths.checkpoint_dir, else the shipped model)")
    parser.add_argument("--config", default=None, help="JSON config (default config/config.json, or for "
                        "scripts that load a checkpoint, the config stored in it)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. train.epochs=3 data.root=/data/celeba")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def trained_model(args: argparse.Namespace) -> Trained:
    """load_trained() for a script's --checkpoint, --config and overrides; says when the shipped model
    stands in for a checkpoint that has not been trained."""
    try:
        trained = load_trained(args.checkpoint, args.config, args.overrides)
    except CheckpointNotFound as e:
        raise CheckpointNotFound(f"{e}, or pass --checkpoint PATH") from None
    if not args.checkpoint and trained.path == pretrained.SHIPPED:
        default = Path(load_config(args.config, args.overrides).paths.checkpoint_dir) / "best_vae.pth"
        print(f"no trained model at {default}: using the shipped model {trained.path.parent.name}/"
              f"{trained.path.name} (docs/model-card.md); --checkpoint PATH uses another")
    return trained
