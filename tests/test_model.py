import math

import pytest
import torch

from src.model import ConvVAE, bits_per_dim, calibrated_log_sigma, gaussian_nll, vae_loss


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


def test_gaussian_loss_equals_a_hand_computation():
    """Two 1x1x2 'images' (4 values): errors 0.1, -0.1, 0.3, 0 -> SSE 0.02 and 0.09, MSE 0.0275.
    The calibrated sigma^2 is the batch MSE, and the NLL per image is 0.5 SSE / sigma^2 + 2 log sigma
    + log(2 pi) (two values per image)."""
    x = torch.tensor([[[[0.5, 0.5]]], [[[0.2, 0.6]]]])
    x_hat = x + torch.tensor([[[[0.1, -0.1]]], [[[0.3, 0.0]]]])
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)  # KL = 0
    total, recon, kl = vae_loss(x_hat, x, mu, logvar, beta=1.0, recon_loss="gaussian", sigma_min=1e-6)
    sigma2 = 0.0275
    expected = [0.5 * sse / sigma2 + math.log(sigma2) + math.log(2 * math.pi) for sse in (0.02, 0.09)]
    assert recon.item() == pytest.approx(sum(expected) / 2, rel=1e-5) and kl.item() == 0
    assert total.item() == pytest.approx(recon.item())
    # the floor: a tiny error does not give sigma below sigma_min (soft clamp, ~log 2 above it at most)
    sse = torch.full((4,), 1e-12)
    assert math.exp(calibrated_log_sigma(sse, 100, sigma_min=0.01).item()) >= 0.01


def test_the_calibrated_sigma_reaches_the_batch_mse_and_maximises_the_likelihood():
    sse = torch.tensor([3.0, 5.0, 4.0])
    log_sigma = calibrated_log_sigma(sse, pixels=100, sigma_min=1e-6)
    assert math.exp(2 * log_sigma.item()) == pytest.approx(4.0 / 100, rel=1e-4)  # softclip adds ~1e-5
    nll = lambda s: gaussian_nll(sse, 100, torch.tensor(s)).mean().item()
    best = nll(log_sigma.item())
    assert best < nll(log_sigma.item() + 0.05) and best < nll(log_sigma.item() - 0.05)


def test_bits_per_dim_is_the_8_bit_scale():
    assert bits_per_dim(0.0, 12288) == pytest.approx(8.0)  # density 1 on [0, 1] = 1/256 per 8-bit level
    assert bits_per_dim(12288 * math.log(2), 12288) == pytest.approx(9.0)


# --------------------------------------------------------------------------- the faces recipe's options

BASELINE_MODEL_DIGEST = "18fca054789934021579c1f8f8f1cad3870331d21c87dfaa99b3eb35a62d1d47"  # the baseline's original code, seed 0


def test_the_default_options_build_the_seeds_model_bit_for_bit():
    """New options default to the baseline's model: the same modules, names and initial weights. The digest
    was computed with the original src/model.py (before the options existed) under torch.manual_seed(0)."""
    import hashlib

    from src.config import ModelConfig
    from src.model import build_model
    torch.manual_seed(0)
    model = build_model(ModelConfig(), 64)
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    assert digest.hexdigest() == BASELINE_MODEL_DIGEST


@pytest.mark.parametrize("upsample, decoder_dims, res_blocks", [
    ("nearest", None, 0), ("bilinear", None, 1), ("transpose", [32, 32, 24, 16, 16], 0), ("nearest", [64, 32, 32, 32, 32], 2),
])
def test_decoder_options_keep_the_shapes(upsample, decoder_dims, res_blocks):
    model = ConvVAE(latent_dim=12, hidden_dims=[8, 16, 16, 32, 32], image_size=64, upsample=upsample,
                    decoder_dims=decoder_dims, res_blocks=res_blocks)
    x = torch.rand(2, 3, 64, 64)
    x_hat, mu, _ = model(x)
    assert x_hat.shape == x.shape and mu.shape == (2, 12)
    kinds = [type(m).__name__ for m in model.decoder.modules()]
    assert kinds.count("ConvTranspose2d") == (5 if upsample == "transpose" else 0)
    assert kinds.count("Upsample") == (0 if upsample == "transpose" else 5)
    assert kinds.count("ResBlock") == 5 * res_blocks
    if decoder_dims:
        assert model.decoder_input.out_features == decoder_dims[0] * 2 * 2


def test_a_residual_block_with_a_zero_body_passes_its_input_through_the_activation():
    from src.model import ResBlock
    block = ResBlock(4, batch_norm=False)
    torch.nn.init.zeros_(block.body[3].weight)
    torch.nn.init.zeros_(block.body[3].bias)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), torch.nn.functional.leaky_relu(x, 0.2))


def test_the_weights_moving_average_follows_its_update_rule():
    from src.training import make_ema
    layer = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(layer, 0.9)
    expected = None
    for n, v in enumerate([2.0, 4.0, -1.0, 3.0, 5.0, 0.5] + [1.0] * 200):
        layer.weight.data.fill_(v)
        ema.update_parameters(layer)
        d = min(0.9, (1 + n) / (10 + n))  # the n-th update after the first, which copies the weights
        expected = v if expected is None else d * expected + (1 - d) * v
        assert ema.module.weight.item() == pytest.approx(expected)
    assert int(ema.n_averaged) == 206 and ema.module.weight.item() == pytest.approx(1.0, abs=1e-6)
    assert make_ema(layer, 0.0) is None


def test_learning_rate_schedules():
    from src.config import TrainConfig
    from src.training import make_scheduler

    def lrs(steps_per_epoch=10, **keys) -> tuple[list[float], bool]:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler, per_step = make_scheduler(optimizer, TrainConfig(epochs=3, **keys), steps_per_epoch)
        seen = []
        for _ in range(30 if per_step else 3):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen, per_step

    seed, per_step = lrs()
    assert not per_step and seed == pytest.approx([1.0, 0.95, 0.95 ** 2])  # the baseline's, once per epoch
    cosine, per_step = lrs(lr_schedule="cosine", warmup_steps=5)
    assert per_step and cosine[:5] == pytest.approx([0.2 * (i + 1) * 0.5 * (1 + math.cos(math.pi * i / 30))
                                                     for i in range(5)])
    assert cosine[15] == pytest.approx(0.5) and cosine[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    warm, _ = lrs(warmup_steps=4)
    assert warm[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0]) and warm[10] == pytest.approx(0.95)


@pytest.mark.parametrize("condition, encoder", [("input", False), ("film", False), ("both", True)])
def test_a_conditional_model_takes_labels_where_it_is_told(condition, encoder):
    model = ConvVAE(latent_dim=6, hidden_dims=[8, 16], image_size=16, conditions=3, condition=condition,
                    condition_encoder=encoder).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([[0., 1., 0.]] * 4)
    x_hat, mu, _ = model(x, y)
    assert x_hat.shape == x.shape and mu.shape == (4, 6)
    assert model.decoder_input.in_features == 6 + (3 if condition in ("input", "both") else 0)
    assert model.fc_mu.in_features == 16 * 4 * 4 + (3 if encoder else 0)
    assert len(getattr(model, "films", {})) == (2 if condition in ("film", "both") else 0)
    for film in getattr(model, "films", {}).values():  # FiLM starts as the identity
        torch.nn.init.normal_(film.linear.weight)
    z = torch.randn(4, 6)
    with torch.no_grad():
        changed = model.decode(z, torch.tensor([[1., 1., 0.]] * 4)) - model.decode(z, y)
    assert changed.abs().amax(dim=(1, 2, 3)).min() > 0  # the labels reach every image
    with pytest.raises(ValueError, match=r"labels y of shape \(4, 3\), got None"):
        model.decode(z)


def test_film_starts_as_the_identity_and_conditions_add_no_parameters_when_empty():
    from src.model import FiLM
    h = torch.randn(2, 5, 3, 3)
    assert torch.equal(FiLM(4, 5)(h, torch.rand(2, 4)), h)
    plain, empty = ConvVAE(latent_dim=6, hidden_dims=[8, 16], image_size=16), \
        ConvVAE(latent_dim=6, hidden_dims=[8, 16], image_size=16, conditions=0, condition="both", condition_encoder=True)
    assert list(plain.state_dict()) == list(empty.state_dict())


def test_build_model_reads_the_conditional_keys():
    from src.config import ModelConfig
    from src.model import build_model
    model = build_model(ModelConfig(latent_dim=4, hidden_dims=[8, 16], conditional=["glasses", "hat"], condition="film"),
                        16)
    assert model.conditions == 2 and not model.condition_input and len(model.films) == 2
