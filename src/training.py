"""The pieces of training that a run (src/trainer.py) and the benchmark share: one optimisation step,
the learning-rate schedule, the weights' moving average and the validation losses."""

import math

import torch
from tqdm import tqdm

from src.adversary import adversary_step, fooling_loss
from src.batches import Batches
from src.config import TrainConfig
from src.distributed import all_reduce
from src.label_loss import swapped_label_loss
from src.model import ConvVAE, vae_loss


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, t: TrainConfig,
               amp: bool, y: torch.Tensor | None = None, adversary: tuple | None = None,
               labeller: tuple | None = None) -> tuple[torch.Tensor, ...]:
    """One optimisation step (y: the labels of a conditional model; adversary: its (LatentAdversary,
    optimizer), src/adversary.py; labeller: (frozen labeller, label columns), src/label_loss.py);
    (total, recon, kl, gradient norm before clipping), left on the device. total is the VAE's loss,
    without the adversary's and the labeller's terms."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        x_hat, mu, logvar = model(x) if y is None else model(x, y)
        swapped = None if labeller is None else swapped_label_loss(model, *labeller, mu, y)
    total, recon, kl = vae_loss(x_hat, x, mu, logvar, t.beta, t.recon_loss, t.sigma_min)
    loss = total if adversary is None else total + t.adversary * fooling_loss(adversary[0], mu, y)
    if swapped is not None:
        loss = loss + t.label_loss * swapped
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
    optimizer.step()
    if adversary is not None:
        adversary_step(*adversary, mu, y)
    return total.detach(), recon.detach(), kl.detach(), grad_norm.detach()


def make_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig, steps_per_epoch: int
                   ) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """(scheduler, stepped after every optimizer step?). The baseline's schedule is ExponentialLR stepped
    once per epoch; a warm-up or the cosine schedule make it a per-step LambdaLR: a linear warm-up over
    train.warmup_steps, then x lr_gamma per epoch, or a cosine from lr to 0 over the whole run
    (Loshchilov & Hutter 2017)."""
    if t.lr_schedule == "exponential" and t.warmup_steps == 0:
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=t.lr_gamma), False
    total = t.epochs * steps_per_epoch

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
        if t.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return warm * t.lr_gamma ** (step // steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights and BatchNorm statistics (None when decay is 0):
    the first update copies the weights, the n-th after it sets ema = d * ema + (1 - d) * weights with
    d = min(decay, (1 + n) / (10 + n)). The warm-up (TensorFlow's ExponentialMovingAverage with
    num_updates) keeps the average from holding on to the random initial weights: with a fixed
    0.995 a third of them would still be in it after 200 steps."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, num_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


@torch.no_grad()
def validation_losses(model: ConvVAE, batches: Batches, t: TrainConfig, amp: bool) -> dict:
    """Mean total/recon/KL per image over the split (all ranks), with z sampled as in training."""
    model.eval()
    sums = torch.zeros(4, device=batches.device)  # total, recon, kl (summed over images), count
    for batch in tqdm(batches.epoch(), total=len(batches), desc="  val", leave=False, disable=batches.rank != 0):
        x, y = batch if batches.labels is not None else (batch, None)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            x_hat, mu, logvar = model(x) if y is None else model(x, y)
        total, recon, kl = vae_loss(x_hat, x, mu, logvar, t.beta, t.recon_loss, t.sigma_min)
        sums += torch.stack([total, recon, kl, torch.ones_like(total)]) * len(x)  # no host->device copy
    total, recon, kl, count = all_reduce(sums).tolist()
    return {"total": total / count, "recon": recon / count, "kl": kl / count}
