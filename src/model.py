"""Convolutional VAE for square RGB images, and its loss.

Encoder: one Conv2d(kernel 3, stride 2, padding 1) block per entry of `hidden_dims`, so five
blocks take 64x64 to a 2x2 bottleneck; then linear heads for mu and log sigma^2. The decoder
mirrors it with ConvTranspose2d blocks and ends in a Sigmoid, so outputs are pixels in [0, 1].
"""

import torch
import torch.nn.functional as F
from torch import nn


def _block(conv: nn.Module, channels: int, batch_norm: bool) -> nn.Sequential:
    norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
    return nn.Sequential(conv, norm, nn.LeakyReLU(0.2))


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 128, hidden_dims: list[int] | None = None,
                 image_size: int = 64, in_channels: int = 3, batch_norm: bool = True):
        super().__init__()
        hidden_dims = list(hidden_dims or [32, 64, 128, 256, 512])
        self.latent_dim = latent_dim
        self.bottleneck = image_size // 2 ** len(hidden_dims)
        assert self.bottleneck >= 1 and self.bottleneck * 2 ** len(hidden_dims) == image_size, \
            f"image_size {image_size} must be a multiple of 2**{len(hidden_dims)}"

        encoder, channels = [], in_channels
        for h in hidden_dims:
            encoder.append(_block(nn.Conv2d(channels, h, 3, stride=2, padding=1), h, batch_norm))
            channels = h
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        flat = hidden_dims[-1] * self.bottleneck ** 2
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)

        self.decoder_input = nn.Linear(latent_dim, flat)
        reversed_dims = hidden_dims[::-1]
        decoder = []
        # Each transposed conv doubles the size; the last one keeps its channels and a plain
        # conv then maps them to RGB, so the final upsampling has room to shape details.
        for c_in, c_out in zip(reversed_dims, reversed_dims[1:] + reversed_dims[-1:]):
            up = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
            decoder.append(_block(up, c_out, batch_norm))
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(reversed_dims[-1], in_channels, 3, padding=1),
                                     nn.Sigmoid())
        self._unflatten = nn.Unflatten(1, (hidden_dims[-1], self.bottleneck, self.bottleneck))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._unflatten(self.decoder_input(z)))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images decoded from z ~ N(0, temperature^2 I).

        z is drawn on the CPU (with `generator`, a CPU generator, if given), so a seed gives the
        same faces on every device.
        """
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature
        return self.decode(z.to(self.fc_mu.weight.device))


def vae_loss(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, recon, kl), each averaged over the batch.

    recon: squared error summed over pixels and channels; kl: KL(q(z|x) || N(0, I)) summed over
    latent dims; total = recon + beta * kl. Computed in float32 even under autocast.
    """
    batch = x.shape[0]
    recon = F.mse_loss(x_hat.float(), x.float(), reduction="sum") / batch
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
    return recon + beta * kl, recon, kl


def build_model(model_cfg, image_size: int) -> ConvVAE:
    """The model a config describes (train.py and every script that loads a checkpoint)."""
    return ConvVAE(latent_dim=model_cfg.latent_dim, hidden_dims=model_cfg.hidden_dims,
                   image_size=image_size, batch_norm=model_cfg.batch_norm)
