"""An adversary that keeps a conditional VAE's labels out of its codes (train.adversary > 0).

A conditional decoder learns to ignore y when the encoder already puts the attributes into z, and an
edit that changes y then fights the z that still says the opposite. As in Fader Networks (Lample et
al., 2017), a small classifier learns to read the labels from the posterior means, and the encoder
is trained to make it wrong: its loss gains train.adversary x the classifier's cross-entropy against
the flipped labels. The classifier has its own optimizer and is saved with the checkpoint.
"""

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 256
LR = 1e-3


class LatentAdversary(nn.Module):
    """Labels (logits, one per label) read from posterior means: an MLP with two hidden layers."""

    def __init__(self, latent_dim: int, labels: int, hidden: int = HIDDEN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, labels))

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        return self.net(mu.float())


def label_loss(adversary: LatentAdversary, mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the adversary's reading of mu against y, summed over labels, mean over images."""
    return F.binary_cross_entropy_with_logits(adversary(mu), y.float(), reduction="sum") / len(mu)


def fooling_loss(adversary: LatentAdversary, mu: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What the encoder minimises: the adversary's cross-entropy against the flipped labels."""
    return label_loss(adversary, mu, 1 - y)


def adversary_step(adversary: LatentAdversary, optimizer: torch.optim.Optimizer, mu: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """One step of the adversary on detached codes; its loss, left on the device."""
    optimizer.zero_grad(set_to_none=True)  # also drops what the encoder's fooling loss left in it
    loss = label_loss(adversary, mu.detach(), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_adversary(latent_dim: int, labels: int, device: torch.device
                   ) -> tuple[LatentAdversary, torch.optim.Optimizer]:
    adversary = LatentAdversary(latent_dim, labels).to(device)
    return adversary, torch.optim.Adam(adversary.parameters(), lr=LR)
