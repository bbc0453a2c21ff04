import pytest
import torch

from src.model import ConvVAE, vae_loss


@pytest.mark.parametrize("hidden_dims, image_size, batch_norm", [
    ([32, 64, 128, 256, 512], 64, True),   # the default: 64x64 -> 2x2 bottleneck
    ([8, 16, 32, 64], 64, False),          # four layers -> 4x4 bottleneck
    ([8, 16], 16, True),
    ([8, 16, 32], 32, True),
])
def test_shapes(hidden_dims, image_size, batch_norm):
    model = ConvVAE(latent_dim=12, hidden_dims=hidden_dims, image_size=image_size, batch_norm=batch_norm)
    assert model.bottleneck == image_size // 2 ** len(hidden_dims)
    x = torch.rand(3, 3, image_size, image_size)
    x_hat, mu, logvar = model(x)
    assert x_hat.shape == x.shape
    assert mu.shape == logvar.shape == (3, 12)
    assert model.encode(x)[0].shape == (3, 12)
    assert model.decode(torch.zeros(5, 12)).shape == (5, 3, image_size, image_size)
    samples = model.eval().sample(4)
    assert samples.shape == (4, 3, image_size, image_size)
    assert 0 <= samples.min() and samples.max() <= 1  # sigmoid output


def test_default_bottleneck_is_2x2():
    model = ConvVAE()
    h = model.encoder[:-1](torch.rand(1, 3, 64, 64))  # all conv blocks, before Flatten
    assert h.shape == (1, 512, 2, 2)


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    x, x_hat = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    mu, logvar = torch.randn(2, 5), torch.randn(2, 5)
    total, recon, kl = vae_loss(x_hat, x, mu, logvar, beta=1.2)

    hand_recon = sum(((x_hat[i] - x[i]) ** 2).sum() for i in range(2)) / 2
    hand_kl = sum(0.5 * (mu[i] ** 2 + logvar[i].exp() - 1 - logvar[i]).sum() for i in range(2)) / 2
    assert torch.allclose(recon, hand_recon)
    assert torch.allclose(kl, hand_kl)
    assert torch.allclose(total, hand_recon + 1.2 * hand_kl)


def test_kl_is_zero_at_the_prior_and_recon_zero_at_identity():
    x = torch.rand(4, 3, 8, 8)
    total, recon, kl = vae_loss(x, x, torch.zeros(4, 7), torch.zeros(4, 7), beta=3.0)
    assert recon.item() == 0 and kl.item() == 0 and total.item() == 0


def test_reparameterize_uses_the_variance():
    torch.manual_seed(0)
    mu, logvar = torch.full((20000, 1), 2.0), torch.full((20000, 1), 2 * torch.log(torch.tensor(3.0)))
    z = ConvVAE.reparameterize(mu, logvar)
    assert abs(z.mean().item() - 2.0) < 0.1 and abs(z.std().item() - 3.0) < 0.1
