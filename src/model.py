"""Convolutional VAE for square RGB images, and its loss.

Encoder: one Conv2d(kernel 3, stride 2, padding 1) block per entry of `hidden_dims`, so five
blocks take 64x64 to a 2x2 bottleneck; then linear heads for mu and log sigma^2. The decoder
mirrors it with ConvTranspose2d blocks and ends in a Sigmoid, so outputs are pixels in [0, 1].

Options (all off by default, which is the baseline's model): the decoder may upsample by nearest or
bilinear interpolation followed by a 3x3 convolution instead of the transposed convolution (which
tends to draw checkerboard patterns, Odena et al. 2016), have widths of its own (`decoder_dims`),
and add residual blocks after each upsampling stage (`res_blocks`).

Conditional (`conditions` > 0 labels y in [0, 1], a conditional VAE: p(x | z, y)): y enters the
decoder concatenated to z ("input"), as a per-channel scale and shift of every decoder stage
("film"), or both; with `condition_encoder` the encoder's heads see y too, q(z | x, y). Without
conditions the model, its parameters and its outputs are the unconditional model's, bit for bit.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLES = ("transpose", "nearest", "bilinear")
CONDITIONINGS = ("input", "film", "both")   # where the labels enter the decoder


def _block(conv: nn.Module, channels: int, batch_norm: bool) -> nn.Sequential:
    norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
    return nn.Sequential(conv, norm, nn.LeakyReLU(0.2))


def _upsample(c_in: int, c_out: int, mode: str) -> nn.Module:
    """Double the size: a stride-2 transposed conv, or interpolation and a 3x3 conv (same output size)."""
    if mode == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(c_in, c_out, 3, padding=1))


class ResBlock(nn.Module):
    """x + conv(act(norm(conv(x)))) at constant size and width, then the activation (He et al. 2016)."""

    def __init__(self, channels: int, batch_norm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(channels)) if batch_norm else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), norm(), nn.LeakyReLU(0.2),
                                  nn.Conv2d(channels, channels, 3, padding=1), norm())
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class FiLM(nn.Module):
    """A per-channel scale and shift of a feature map computed from the labels (Perez et al. 2018):
    h * (1 + gamma(y)) + beta(y). Starts as the identity, so y begins by changing nothing."""

    def __init__(self, conditions: int, channels: int):
        super().__init__()
        self.linear = nn.Linear(conditions, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(y).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + gamma) + beta


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 128, hidden_dims: list[int] | None = None,
                 image_size: int = 64, in_channels: int = 3, batch_norm: bool = True,
                 upsample: str = "transpose", decoder_dims: list[int] | None = None, res_blocks: int = 0,
                 conditions: int = 0, condition: str = "both", condition_encoder: bool = False):
        super().__init__()
        hidden_dims = list(hidden_dims or [32, 64, 128, 256, 512])
        self.latent_dim, self.conditions = latent_dim, conditions
        self.condition_input = conditions > 0 and condition in ("input", "both")
        self.condition_encoder = conditions > 0 and condition_encoder
        self.bottleneck = image_size // 2 ** len(hidden_dims)
        assert self.bottleneck >= 1 and self.bottleneck * 2 ** len(hidden_dims) == image_size, \
            f"image_size {image_size} must be a multiple of 2**{len(hidden_dims)}"

        encoder, channels = [], in_channels
        for h in hidden_dims:
            encoder.append(_block(nn.Conv2d(channels, h, 3, stride=2, padding=1), h, batch_norm))
            channels = h
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        flat = hidden_dims[-1] * self.bottleneck ** 2 + (conditions if self.condition_encoder else 0)
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)

        # The decoder's widths, from the bottleneck up: the encoder's mirrored, or its own.
        widths = list(decoder_dims) if decoder_dims else hidden_dims[::-1]
        assert len(widths) == len(hidden_dims), "decoder_dims needs one width per encoder stage"
        self.decoder_input = nn.Linear(latent_dim + (conditions if self.condition_input else 0),
                                       widths[0] * self.bottleneck ** 2)
        decoder, stage_ends = [], []
        # Each upsampling doubles the size; the last one keeps its channels and a plain
        # conv then maps them to RGB, so the final upsampling has room to shape details.
        for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):
            decoder.append(_block(_upsample(c_in, c_out, upsample), c_out, batch_norm))
            decoder += [ResBlock(c_out, batch_norm) for _ in range(res_blocks)]
            stage_ends.append(len(decoder) - 1)
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(widths[-1], in_channels, 3, padding=1), nn.Sigmoid())
        self._unflatten = nn.Unflatten(1, (widths[0], self.bottleneck, self.bottleneck))
        if conditions > 0 and condition in ("film", "both"):  # after each stage: index in decoder -> FiLM
            self.films = nn.ModuleDict({str(i): FiLM(conditions, channels)
                                        for i, channels in zip(stage_ends, widths[1:] + widths[-1:])})

    @property
    def device(self) -> torch.device:
        """Where the weights are (and so where inputs must go)."""
        return self.fc_mu.weight.device

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        if self.condition_encoder:
            h = torch.cat([h, self._labels(y, h)], dim=1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if not self.conditions:
            return self.decoder(self._unflatten(self.decoder_input(z)))
        y = self._labels(y, z)
        h = self._unflatten(self.decoder_input(torch.cat([z, y], dim=1) if self.condition_input else z))
        films = getattr(self, "films", {})
        for i, module in enumerate(self.decoder):
            h = module(h)
            if str(i) in films:
                h = films[str(i)](h, y)
        return h

    def _labels(self, y: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if y is None or y.shape != (like.shape[0], self.conditions):
            got = None if y is None else tuple(y.shape)
            raise ValueError(f"this conditional model needs labels y of shape ({like.shape[0]}, {self.conditions}), "
                             f"got {got}")
        return y.to(like.dtype)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        return self.decode(self.reparameterize(mu, logvar), y), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: torch.Tensor | None = None) -> torch.Tensor:
        """n images decoded from z ~ N(0, temperature^2 I) (and, for a conditional model, labels y).

        z is drawn on the CPU (with `generator`, a CPU generator, if given), so a seed gives the
        same faces on every device.
        """
        z = torch.randn(n, self.latent_dim, generator=generator) * temperature
        return self.decode(z.to(self.device), None if y is None else y.to(self.device))


SIGMA_MIN = 0.0025  # soft floor on the calibrated sigma of [0, 1] pixels (sigma-VAE's is exp(-6) = 0.00248)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x) || N(0, 1)) of each latent dimension of each image, shaped like mu: summed over the
    dimensions it is the KL term of the ELBO."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def calibrated_log_sigma(sse: torch.Tensor, pixels: int, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """log sigma of the one shared sigma that maximises the Gaussian likelihood of these errors,
    sigma^2 = mean squared error (Rybkin et al. 2021, "optimal sigma"), soft-clamped from below.

    sse: summed squared error of each image; pixels: values per image.
    """
    log_sigma = 0.5 * torch.log(sse.mean() / pixels)
    floor = math.log(sigma_min)
    return floor + F.softplus(log_sigma - floor)  # softclip: ~log_sigma above the floor, never below it


def gaussian_nll(sse: torch.Tensor, pixels: int, log_sigma: torch.Tensor) -> torch.Tensor:
    """-log N(x | x_hat, sigma^2 I) in nats per image, from its summed squared error."""
    return 0.5 * sse * torch.exp(-2 * log_sigma) + pixels * (log_sigma + 0.5 * math.log(2 * math.pi))


def vae_loss(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0,
             recon_loss: str = "mse_sum", sigma_min: float = SIGMA_MIN) -> tuple[torch.Tensor, ...]:
    """(total, recon, kl), each averaged over the batch; computed in float32 even under autocast.

    kl: KL(q(z|x) || N(0, I)) summed over latent dims; total = recon + beta * kl. recon:
    - "mse_sum" (the baseline's loss): squared error summed over pixels and channels, i.e. a Gaussian
      decoder with a fixed variance, up to constants;
    - "gaussian": the negative log-likelihood in nats of a Gaussian decoder whose one shared sigma is
      calibrated to the batch's error (calibrated_log_sigma); total is then a true negative ELBO.
    """
    batch = x.shape[0]
    if recon_loss == "gaussian":
        sse = (x_hat.float() - x.float()).pow(2).flatten(1).sum(1)
        pixels = x[0].numel()
        recon = gaussian_nll(sse, pixels, calibrated_log_sigma(sse, pixels, sigma_min)).mean()
    else:
        recon = F.mse_loss(x_hat.float(), x.float(), reduction="sum") / batch
    mu, logvar = mu.float(), logvar.float()
    kl = kl_divergence(mu, logvar).sum() / batch
    return recon + beta * kl, recon, kl


def bits_per_dim(nats_per_image: float, pixels: int) -> float:
    """A negative log-likelihood of [0, 1] pixels in bits per dimension on the 8-bit scale
    ([0, 256) pixels: + log2(256) = 8 bits), the convention of likelihood papers."""
    return nats_per_image / (pixels * math.log(2)) + 8


def build_model(model_cfg, image_size: int) -> ConvVAE:
    """The model a config describes (train.py and every script that loads a checkpoint)."""
    return ConvVAE(latent_dim=model_cfg.latent_dim, hidden_dims=model_cfg.hidden_dims,
                   image_size=image_size, batch_norm=model_cfg.batch_norm, upsample=model_cfg.upsample,
                   decoder_dims=model_cfg.decoder_dims, res_blocks=model_cfg.res_blocks,
                   conditions=len(model_cfg.conditional), condition=model_cfg.condition,
                   condition_encoder=model_cfg.condition_encoder)
