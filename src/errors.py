"""Errors a user can fix, and the wrapper that prints them as one line instead of a traceback."""

import signal
import sys
import traceback
from typing import Callable, Sequence


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, paths); the message says what to do."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class CheckpointError(UserError):
    pass


class CheckpointNotFound(CheckpointError):
    pass


class NumericalError(UserError):
    """Training produced a non-finite loss or gradient (the message says where and what to try)."""


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt("SIGTERM")


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a script's main(); a UserError becomes `error: ...` on stderr and exit status 2.

    Ctrl-C and SIGTERM stop it at once (cleanup in `finally` blocks runs: temporary files go, worker
    processes end) with one line and exit status 128 + signal; train.py's loop handles them itself.
    `--debug` anywhere on the command line shows the full traceback instead.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        main(args)
    except UserError as e:
        if "--debug" in args:
            traceback.print_exc()
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        if "--debug" in args:
            traceback.print_exc()
        signum = signal.SIGTERM if str(e) == "SIGTERM" else signal.SIGINT
        print(f"\ninterrupted ({signum.name}); stopped", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
