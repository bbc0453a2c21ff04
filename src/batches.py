"""Batches of a split's uint8 array as float images in [0, 1] on the device: seeded and shuffled for
training (`Batches`, also under DDP), in order for evaluation (`iterate_batches`)."""

import math
from typing import Iterator

import numpy as np
import torch

from src.device import to_device


class Batches:
    """Float batches in [0, 1] sliced from a split's uint8 array, in a seeded order per epoch.

    On CUDA the whole array moves to the GPU when it fits in a quarter of the free memory (full
    CelebA at 64x64 is 2.4 GB), so a batch is one index_select there; otherwise batches are
    gathered on the host and copied from pinned memory without blocking. Conversion to float and
    the optional horizontal flip run on the device. Under DDP each rank takes every
    world_size-th image of the epoch's order (the order is cut to a multiple of world_size when
    shuffling, so every rank runs the same number of steps). A shuffled (training) epoch never ends
    in a batch of one image, which BatchNorm cannot normalise at a 1x1 bottleneck: that image sits
    the epoch out.
    """

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, hflip: bool = False,
                 channels_last: bool = False, labels: np.ndarray | None = None):
        self.images, self.batch_size, self.device = images, batch_size, device
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.float32)  # (N, K): a CVAE's y
        self.shuffle, self.seed, self.rank, self.world_size, self.hflip = shuffle, seed, rank, world_size, hflip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.on_device = None
        if device.type == "cuda" and images.nbytes < torch.cuda.mem_get_info(device)[0] // 4:
            self.on_device = torch.empty(images.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(images), 8192):  # chunked: no second full copy in host memory
                chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + 8192]))
                self.on_device[start:start + len(chunk)].copy_(chunk)

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n)[self.rank::self.world_size]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        order = order[:n - n % self.world_size][self.rank::self.world_size]
        return order[:self._per_rank()]

    def _per_rank(self) -> int:
        n = len(self.images)
        if not self.shuffle:
            return len(range(self.rank, n, self.world_size))
        per_rank = (n - n % self.world_size) // self.world_size
        return per_rank - 1 if per_rank % self.batch_size == 1 and per_rank > 1 else per_rank

    def __len__(self) -> int:
        return math.ceil(self._per_rank() / self.batch_size)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, from step `start_step` on (to resume mid-epoch): images x, or (x, y)
        pairs when the batches carry labels."""
        order = self._order(epoch)
        if self.on_device is not None:
            order = order.to(self.device)
        for start in range(start_step * self.batch_size, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.on_device is not None:
                x = self.on_device.index_select(0, index)
            else:  # sorted reads are faster on a memory map; the order within a batch does not matter
                index = index.sort().values
                x = torch.from_numpy(self.images[index.numpy()])
                x = to_device(x.pin_memory() if self.device.type == "cuda" else x, self.device)
            x = x.float().div_(255)
            if self.hflip:
                flip = torch.rand(len(x), device=x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = x.contiguous(memory_format=self.memory_format)
            yield x if self.labels is None else (x, to_device(self.labels[index.cpu()], self.device))


def iterate_batches(images: np.ndarray, batch_size: int, device: torch.device,
                    uint8: bool = False) -> Iterator[torch.Tensor]:
    """The images in order, in batches on `device`: float in [0, 1], or uint8 as stored; for evaluation."""
    for start in range(0, len(images), batch_size):
        x = to_device(torch.from_numpy(np.array(images[start:start + batch_size])), device)  # a copy: memmaps are read-only
        yield x if uint8 else x.float().div_(255)


def iterate_labelled(images: np.ndarray, labels: np.ndarray | None, batch_size: int, device: torch.device
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """iterate_batches' float images, each batch with its rows of `labels` (a conditional VAE's y; None:
    an unconditional model, y is None)."""
    for start, x in zip(range(0, len(images), batch_size), iterate_batches(images, batch_size, device)):
        yield x, None if labels is None else to_device(torch.as_tensor(labels[start:start + batch_size],
                                                                        dtype=torch.float32), device)
