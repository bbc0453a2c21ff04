"""Teach a conditional decoder to draw its labels (train.label_loss > 0).

A conditional decoder can reconstruct well while ignoring y, because the encoder already puts the
attributes into z; an edit that changes y then changes little. As in AttGAN (He et al., 2019), each
step also decodes every image's code with the labels of another image of the batch (a permutation,
so every label row is a real combination), and the labeller must read those labels from the faces
drawn: the loss gains train.label_loss x its cross-entropy, summed over the labels and averaged over
the images. The labeller is src/judge.py's network trained with another seed on the labelled training
images outside the judge's held-out tenth, frozen; the judge that scores edits is a different network.
The labeller reads the faces blurred (sigma BLUR_SIGMA pixels at 64 px): a fixed classifier is easily
fooled by fine pixel patterns that show no attribute, and a blur takes those away but not a hat.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.judge import Judge

BLUR_SIGMA = 1.0


def frozen(labeller: Judge, image_size: int = 64) -> nn.Module:
    """The labeller as a fixed function of images that blurs them first: evaluation mode (its BatchNorm
    statistics), no gradients of its own."""
    from torchvision.transforms import GaussianBlur  # a second to import: only when training with it
    sigma = BLUR_SIGMA * image_size / 64
    blur = GaussianBlur(kernel_size=2 * math.ceil(2 * sigma) + 1, sigma=sigma)
    return nn.Sequential(blur, labeller).eval().requires_grad_(False)


def swapped_label_loss(model: nn.Module, reader: nn.Module, columns: list[int], mu: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of reader (frozen()) against the labels y[perm] of faces decoded from
    (mu, y[perm]); `columns`: where the model's labels sit among the labeller's outputs."""
    target = y[torch.randperm(len(y), device=y.device)]
    logits = reader(model.decode(mu, target).float())[:, columns]
    return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum") / len(mu)
