"""Ctrl-C and SIGTERM during training: finish the step, save, and stop with the right exit status."""

import signal

import torch
import torch.distributed as dist
from tqdm import tqdm

from src.distributed import all_reduce


class Interrupts:
    """Ctrl-C or SIGTERM during training: finish the current step, save last_vae.pth, exit 128 + signal.

    Active only around the training loop (before it, e.g. during a cache build, an interrupt stops at
    once). A second Ctrl-C stops at once. Under DDP a signal may reach one rank only, so ranks agree
    on it (agreed) at the same steps, and then all take the same save path.
    """

    def __init__(self):
        self.signum = 0

    def __enter__(self) -> "Interrupts":
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum
        tqdm.write(f"\n{signal.Signals(signum).name}: finishing this step, then saving last_vae.pth ...")

    def agreed(self, world_size: int, device: torch.device) -> int:
        """The signal every rank stops for (0: none). Under DDP every rank must call this at the same step."""
        if world_size == 1:
            return self.signum
        signum = torch.tensor(self.signum, device=device)
        self.signum = int(all_reduce(signum, dist.ReduceOp.MAX).item())
        return self.signum
