"""A training run, from its config to its checkpoints: set up, then one epoch at a time.

    run = start_run(cfg, resume=False)     # data, model, optimizer, schedule, average, resume state
    with Interrupts() as interrupts:
        for epoch in range(run.start_epoch, cfg.train.epochs):
            stop = run_epoch(run, epoch, interrupts)   # train, validate, save; a Stop when interrupted

Each epoch writes last_vae.pth, best_vae.pth (best validation loss), history.json and a sample grid
(rank 0). Each epoch's randomness depends only on (seed, epoch, rank), so a resumed run is the run
that was never interrupted (src/resume.py). Steps whose loss or gradient is not finite stop the
run before anything is saved.
"""

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.adversary import make_adversary
from src.attributes import indicators
from src.batches import Batches
from src.checkpoint import load_checkpoint, save_checkpoint
from src.conditioning import condition_names, image_labels, labelled_sets
from src.config import ALL_LABELS, Config
from src.dataset import ImageSplit, load_split
from src.device import choose_bf16
from src.distributed import all_reduce, local_rank_zero_first, setup_distributed
from src.errors import ConfigError, NumericalError
from src.figures import save_image_grid
from src.files import atomic_json, ensure_writable_dir
from src.interrupts import Interrupts
from src.judge import trained_judge
from src.label_loss import frozen
from src.model import ConvVAE, bits_per_dim, build_model
from src.resume import ResumeRefused, check_resumable, checkpoint_state, restore
from src.rng import seed_everything
from src.threads import ThreadTuner, boundary, configure_threads, timed
from src.training import make_ema, make_scheduler, train_step, validation_losses

# --------------------------------------------------------------------------- setting up

@dataclass
class Run:
    """Everything a training run holds between epochs."""
    cfg: Config
    rank: int
    world_size: int
    device: torch.device
    amp: bool
    amp_reason: str
    train_set: ImageSplit
    val_set: ImageSplit
    train_batches: Batches
    val_batches: Batches
    raw_model: ConvVAE                   # the weights being trained
    model: torch.nn.Module               # the same, compiled and/or wrapped for DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step: bool                       # the schedule steps after every optimizer step (else every epoch)
    ema: torch.optim.swa_utils.AveragedModel | None
    tuner: ThreadTuner | None
    last_path: Path
    best_path: Path
    results_dir: Path
    saved: dict | None = None            # the checkpoint resumed from
    start_epoch: int = 0
    start_step: int = 0
    history: list = field(default_factory=list)
    best_val: float = math.inf
    sample_z: torch.Tensor | None = None  # the codes of the sample grid drawn after every epoch
    sample_y: torch.Tensor | None = None  # and a conditional model's labels for it (the first training images')
    conditioning: str = ""               # a conditional model: its labels and images, in words
    adversary: tuple | None = None       # (LatentAdversary, its optimizer) with train.adversary > 0
    labeller: tuple | None = None        # (frozen labeller, the labels' columns) with train.label_loss > 0

    @property
    def master(self) -> bool:
        """Only rank 0 writes files and shows progress bars."""
        return self.rank == 0

    @property
    def evaluated(self) -> ConvVAE:
        """What is validated, sampled and kept as the best: the weights' average where training keeps one."""
        return self.ema.module if self.ema is not None else self.raw_model


def start_run(cfg: Config, resume: bool = False) -> Run:
    """Set a run up from its config (and last_vae.pth of paths.checkpoint_dir when resuming)."""
    t = cfg.train
    checkpoint_dir = ensure_writable_dir(cfg.paths.checkpoint_dir, "paths.checkpoint_dir")
    results_dir = ensure_writable_dir(cfg.paths.results_dir, "paths.results_dir")
    last_path, best_path = checkpoint_dir / "last_vae.pth", checkpoint_dir / "best_vae.pth"
    rank, local_rank, world_size, device = setup_distributed(t.device)
    amp, amp_reason = choose_bf16(t.bf16, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    saved = load_checkpoint(last_path) if resume else None  # on the CPU; fail before any data work
    if saved and cfg.model.conditional != [ALL_LABELS]:
        check_resumable(saved, cfg, world_size, last_path)
    with local_rank_zero_first(local_rank):
        train_set, val_set = load_split(cfg, "train"), load_split(cfg, "val")
    train_y, val_y, conditioning, labeller = None, None, "", None
    if cfg.model.conditional:  # a conditional VAE: its labelled images, the names saved with the model
        cfg.model.conditional = condition_names(cfg.model.conditional, train_set, cfg.data.root)
        if saved:
            check_resumable(saved, cfg, world_size, last_path)
        predicted = image_labels(train_set.images, cfg.model.conditional, train_set, cfg.data.cache_dir, device) \
            if t.unlabelled == "labeller" else None
        if t.label_loss > 0:
            labeller = swapped_label_reader(cfg, train_set, device, world_size)
        labelled, validation = labelled_sets(cfg.model.conditional, train_set, val_set, predicted)
        train_set = replace(train_set, images=labelled.images, names=[], attributes=None)
        val_set = replace(val_set, images=validation.images, names=[], attributes=None)
        train_y, val_y = labelled.labels, validation.labels
        conditioning = (f"conditional on {len(cfg.model.conditional)} labels ({cfg.model.condition}"
                        f"{', encoder too' if cfg.model.condition_encoder else ''}"
                        f"{f', adversary {t.adversary}' if t.adversary else ''}"
                        f"{f', label loss {t.label_loss}' if t.label_loss else ''}): trains on {labelled.description}, "
                        f"validates on {validation.description}")
    if saved and saved.get("data_id") and saved["data_id"] != train_set.data_id:
        raise ResumeRefused(f"{last_path} was trained on other images (different files or preprocessing); "
                            "resume with the same data, or start afresh")
    train_batches = Batches(train_set.images, t.batch_size, device, shuffle=True, seed=t.seed, rank=rank,
                            world_size=world_size, hflip=cfg.data.hflip, channels_last=t.channels_last,
                            labels=train_y)
    val_batches = Batches(val_set.images, t.batch_size, device, rank=rank, world_size=world_size,
                          channels_last=t.channels_last, labels=val_y)
    seed_everything(t.seed)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    raw_model = build_model(cfg.model, cfg.data.image_size).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=t.lr)
    scheduler, per_step = make_scheduler(optimizer, t, len(train_batches))
    run = Run(cfg, rank, world_size, device, amp, amp_reason, train_set, val_set, train_batches, val_batches,
              raw_model, raw_model, optimizer, scheduler, per_step, make_ema(raw_model, t.ema_decay), None,
              last_path, best_path, results_dir, saved, conditioning=conditioning, labeller=labeller)
    if t.adversary > 0:
        if world_size > 1:
            raise ConfigError("train.adversary is not supported with several processes yet; train on one, or set "
                              "train.adversary=0")
        run.adversary = make_adversary(cfg.model.latent_dim, len(cfg.model.conditional), device)
    if saved:
        restore(saved, raw_model, optimizer, scheduler, rank, device, run.ema, run.adversary)
        run.start_epoch, run.start_step = saved["epoch"], saved["step"]
        run.history, run.best_val = saved["history"], saved["best_val"]
    if run.start_epoch < t.epochs:
        _finish_setup(run)
    return run


def swapped_label_reader(cfg: Config, train_set: ImageSplit, device: torch.device, world_size: int) -> tuple:
    """train.label_loss's labeller, frozen, and where the model's labels sit among its outputs."""
    if world_size > 1:
        raise ConfigError("train.label_loss is not supported with several processes yet; train on one, or set "
                          "train.label_loss=0")
    labels, names = indicators(train_set)
    labeller = trained_judge(train_set.images, labels, names, train_set.data_id, cfg.data.cache_dir, device,
                             role="labeller")
    return frozen(labeller, cfg.data.image_size), [names.index(name) for name in cfg.model.conditional]


def _finish_setup(run: Run) -> None:
    """Compile and wrap the model, start the thread tuner, and draw the sample grid's codes."""
    t = run.cfg.train
    run.model = torch.compile(run.raw_model) if t.compile else run.raw_model
    if run.world_size > 1:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device] if run.device.type == "cuda" else None)
    run.tuner = configure_threads(t.threads, run.device, say=tqdm.write if run.master else lambda line: None)
    run.sample_z = torch.randn(64, run.cfg.model.latent_dim, generator=torch.Generator().manual_seed(0)).to(run.device)
    labels = run.train_batches.labels
    if labels is not None:
        run.sample_y = labels[torch.arange(64) % len(labels)].to(run.device)


def describe(run: Run) -> str:
    """Two lines about the data, the hardware and the model (printed by rank 0 at the start)."""
    cfg, t, m = run.cfg, run.cfg.train, run.cfg.model
    return (f"{cfg.data.dataset}: {len(run.train_set)} train / {len(run.val_set)} val images of "
            f"{cfg.data.image_size}px; {run.world_size} x {run.device}, batch {t.batch_size}/rank, bf16 {run.amp} "
            f"({run.amp_reason}), channels_last {t.channels_last}, compile {t.compile}\n"
            f"ConvVAE: {sum(p.numel() for p in run.raw_model.parameters()) / 1e6:.2f} M parameters, "
            f"latent {m.latent_dim}, hidden {m.hidden_dims}, decoder {m.decoder_dims or 'mirrored'} "
            f"({m.upsample} upsampling, {m.res_blocks} residual blocks per stage); learning rate {t.lr_schedule}"
            f"{f' after {t.warmup_steps} warm-up steps' if t.warmup_steps else ''}, "
            f"{f'EMA {t.ema_decay} of the weights evaluated' if t.ema_decay else 'no EMA'}"
            + (f"\n{run.conditioning}" if run.conditioning else ""))


# --------------------------------------------------------------------------- one epoch

@dataclass
class Stop:
    """A run stopped by a signal: which, and where (last_vae.pth holds the state there)."""
    signum: int
    where: str


def run_epoch(run: Run, epoch: int, interrupts: Interrupts) -> Stop | None:
    """Train one epoch (from run.start_step), validate, record and save it; a Stop when a signal came."""
    t, device, start_step = run.cfg.train, run.device, run.start_step
    if start_step == 0:  # each epoch's randomness depends only on (seed, epoch, rank): exact resumes
        seed_everything(int(np.random.SeedSequence([t.seed, epoch, run.rank]).generate_state(1)[0]))
    last_good = f"{run.last_path} (epoch {run.history[-1]['epoch'] if run.history else run.start_epoch})" \
        if run.last_path.exists() else "none yet"
    # Running sums on the device: (total, recon, kl) x images, grad norm, images. A resumed epoch
    # starts from the saved sums of all ranks, held by rank 0 alone so they count once.
    sums = torch.zeros(5, device=device)
    if start_step and run.saved.get("partial") is not None and run.master:
        sums += run.saved["partial"].to(device)
    finite = FiniteCheck(device)
    if run.tuner:
        run.tuner.units.clear()
    lr, start = run.optimizer.param_groups[0]["lr"], time.perf_counter()
    steps, images = train_epoch(run, epoch, sums, interrupts, finite, last_good)
    train_seconds = time.perf_counter() - start
    finite.raise_if_bad(epoch, last_good)  # nothing non-finite is ever saved
    signum = interrupts.agreed(run.world_size, device)  # a signal after the last agreed step counts too
    if signum and steps < len(run.train_batches):  # interrupted mid-epoch: save the position
        checkpoint = _state(run, epoch, steps, sums)
        if run.master:
            save_checkpoint(checkpoint, run.last_path)
        return Stop(signum, f"at epoch {epoch + 1}, step {steps}/{len(run.train_batches)}")

    all_reduce(sums)
    val = validation_losses(run.evaluated, run.val_batches, t, run.amp)
    if not run.per_step:
        run.scheduler.step()
    record = epoch_record(epoch, sums, steps, val, lr, time.perf_counter() - start, train_seconds, images,
                          run.world_size, device)
    if device.type == "cpu":
        record["threads"] = threads_used(run.tuner, steps - start_step)
    _check_finite(record, epoch, val)
    if t.recon_loss == "gaussian":  # losses in nats: also as bits per dimension (-ELBO, 8-bit scale)
        pixels = 3 * run.cfg.data.image_size ** 2
        record |= {f"{s}_bpd": bits_per_dim(record[f"{s}_recon"] + record[f"{s}_kl"], pixels)
                   for s in ("train", "val")}
    run.history.append(record)
    is_best = val["total"] < run.best_val
    run.best_val = min(run.best_val, val["total"])
    run.start_step = 0
    checkpoint = _state(run, epoch + 1)
    if run.master:
        end_of_epoch(run, checkpoint, is_best)
    if interrupts.agreed(run.world_size, device):  # the signal came during validation: all is saved
        return Stop(interrupts.signum, f"after epoch {epoch + 1}")
    return None


def _after_step(run: Run) -> None:
    """A per-step schedule and the weights' average follow every optimizer step."""
    if run.per_step:
        run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.raw_model)


def _state(run: Run, epoch: int, step: int = 0, sums: torch.Tensor | None = None) -> dict:
    return checkpoint_state(run.raw_model, run.optimizer, run.scheduler, run.cfg, run.history, run.best_val, epoch,
                            run.train_set.data_id, run.world_size, run.device, step, sums, run.ema, run.adversary)


def _check_finite(record: dict, epoch: int, val: dict) -> None:
    if not all(math.isfinite(record[k]) for k in ("train_total", "val_total", "val_recon", "val_kl")):
        raise NumericalError(f"non-finite validation loss after epoch {epoch + 1} ({val}); nothing saved; "
                             "try a lower train.lr or train.bf16=false")


# --------------------------------------------------------------------------- the steps of an epoch

class FiniteCheck:
    """Remembers the first step whose loss or gradient was not finite, on the device (no sync per step)."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.tensor(-1, device=device)

    def update(self, step: int, total: torch.Tensor, grad_norm: torch.Tensor) -> None:
        bad = ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def raise_if_bad(self, epoch: int, last_good: str) -> None:
        """Syncs with the device; call it before every save, and per step where that is cheap (CPU)."""
        if self.first_bad.item() >= 0:
            raise NumericalError(f"non-finite loss or gradient in epoch {epoch + 1}, step {self.first_bad.item() + 1}; "
                                 f"training stopped, nothing saved. Last good checkpoint: {last_good}; try a lower "
                                 "train.lr or train.bf16=false")


def checks_every_step(device: torch.device) -> bool:
    """Check for non-finite values after every step where that is cheap; on CUDA .item() waits for the
    GPU, so there only every train.log_every steps (and before every save)."""
    return device.type != "cuda"


def train_epoch(run: Run, epoch: int, sums: torch.Tensor, interrupts: Interrupts, finite: FiniteCheck,
                last_good: str) -> tuple[int, int]:
    """Train one epoch from run.start_step, adding (total, recon, kl) x images, grad norm and images to
    `sums` on the device. Returns (steps done, fewer than the epoch's when interrupted; images this
    rank saw)."""
    t, batches, device, master = run.cfg.train, run.train_batches, run.device, run.master
    run.model.train()
    steps, images = run.start_step, 0
    bar = tqdm(batches.epoch(epoch, run.start_step), total=len(batches), initial=run.start_step,
               desc=f"epoch {epoch + 1}/{t.epochs}", disable=not master)
    boundary()  # validation and saving happened since the last step: the thread tuner re-warms
    for batch in bar:
        x, y = batch if batches.labels is not None else (batch, None)
        n = len(x)  # a Python int: torch.tensor(n, device=cuda) would be a blocking copy each step
        with timed(n, "train step"):  # on the CPU a step is done when train_step returns
            total, recon, kl, grad_norm = train_step(run.model, run.optimizer, x, t, run.amp, y, run.adversary,
                                                       run.labeller)
            _after_step(run)
        sums += torch.stack([total * n, recon * n, kl * n, grad_norm, torch.ones_like(total) * n])
        finite.update(steps, total, grad_norm)
        steps, images = steps + 1, images + n
        at_log_step = steps % t.log_every == 0
        if at_log_step or checks_every_step(device):
            finite.raise_if_bad(epoch, last_good)
        if master and at_log_step:
            total_sum, recon_sum, kl_sum, norm_sum, count = sums.tolist()
            bar.set_postfix(loss=f"{total_sum / count:.1f}", recon=f"{recon_sum / count:.1f}",
                            kl=f"{kl_sum / count:.1f}", grad_norm=f"{norm_sum / steps:.1f}")
        if (batches.world_size == 1 or at_log_step) and interrupts.agreed(batches.world_size, device):
            break
    bar.close()
    return steps, images


def epoch_record(epoch: int, sums: torch.Tensor, steps: int, val: dict, lr: float, seconds: float,
                 train_seconds: float, images_seen: int, world_size: int, device: torch.device) -> dict:
    """One history.json entry from the epoch's (all-reduced) training sums and validation losses."""
    total, recon, kl, grad_norm, count = sums.tolist()
    return {"epoch": epoch + 1, "train_total": total / count, "train_recon": recon / count, "train_kl": kl / count,
            **{f"val_{k}": v for k, v in val.items()}, "lr": lr, "grad_norm": grad_norm / world_size / steps,
            "epoch_seconds": seconds, "images_per_second": images_seen * world_size / train_seconds,
            **({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {})}


def threads_used(tuner: ThreadTuner | None, steps: int) -> dict[str, int]:
    """Training steps this epoch at each CPU thread count (under "auto", as the tuner chose them)."""
    units = tuner.units if tuner else {torch.get_num_threads(): steps}
    return {str(n): units[n] for n in sorted(units)}


def end_of_epoch(run: Run, checkpoint: dict, is_best: bool) -> None:
    """Rank 0: write the checkpoints, history.json and the sample grid, and print the epoch's line."""
    save_checkpoint(checkpoint, run.last_path)
    if is_best:
        save_checkpoint(checkpoint, run.best_path)
    history = checkpoint["history"]
    atomic_json(run.results_dir / "history.json", history)
    model = run.evaluated
    model.eval()
    with torch.no_grad():
        save_image_grid(model.decode(run.sample_z, run.sample_y), run.results_dir / "train_samples.png")
    h = history[-1]
    tqdm.write(f"epoch {h['epoch']}/{run.cfg.train.epochs}  train {h['train_total']:.2f} (recon {h['train_recon']:.2f}, "
               f"kl {h['train_kl']:.2f})  val {h['val_total']:.2f} (recon {h['val_recon']:.2f}, kl "
               f"{h['val_kl']:.2f})  {h['epoch_seconds']:.1f} s, {h['images_per_second']:.0f} img/s"
               f"{'  *best*' if is_best else ''}")
