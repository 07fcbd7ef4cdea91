"""Time genlab's Lightning Trainer against a hand-written PyTorch loop over the same module, step and data.

    python scripts/bench_train.py                                        # every family, the configs' batch size
    python scripts/bench_train.py --limit-images 1024 --threads 1 --clock cpu   # CPU-sized, on a busy machine
    python scripts/bench_train.py --device cuda --epochs 3 --target 0.9  # exit 1 unless every ratio >= 0.9
    python scripts/bench_train.py --families gan diffusion --overrides model.ema_decay=0

Trainer side, what users run: model and data module composed from configs/train.yaml (model=<family>, data=mnist:
offline the bundled digits), the model's `configure_callbacks()` (the EMA), the data module's `train_dataloader()`,
and the Trainer of configs/trainer/default.yaml without validation, checkpoints, logger, progress bar or summary.
Hand-written side, the floor: the data module's `train_set.images` (uint8) on the device once, a permutation per
epoch, index slices of batch_size scaled to [-1, 1] on the device, and the module's own step (`training_step`,
backward, optimizer step; the GAN's discriminator then generator steps; the GMM's E-step sums, M-step at epoch end),
the EMA updated after the same steps. No Lightning loop, strategy or hook machinery runs there.

Both run the same steps per epoch (the Trainer stops an epoch after as many batches: limit_train_batches) with the
same threads on the same device. Each measurement starts a fresh module (repeat r: seed r on both sides) and times
from the first epoch's start to the end of the last epoch's hooks; one-off costs (the Trainer's setup with the GMM's
initialising pass, shown as `setup s`; the EMA's copy) fall outside. Measurements alternate Trainer, hand-written,
... after an untimed warm-up step; each side keeps its best of `--repeats`. ratio = Trainer images/s / hand-written
images/s. The diffusion EMA starts at step 50 (ema_start): time more steps than that to include it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel

from genlab.models import GANModule, GenerativeModule, GMMModule
from genlab.train import CONFIG_DIR, data_shape_kwargs

SEED = 0
PRECISIONS = ("32-true", "32", "bf16-mixed")  # trainer.precision values the hand-written loop reproduces
Batch = tuple[Tensor, Tensor]


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2 (1 means a ratio below --target)."""
    print(f"bench_train.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def family_names() -> list[str]:
    """The model configs: configs/model/<family>.yaml."""
    return sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


@dataclass
class Plan:
    """What both sides run: `epochs` epochs of `steps` batches of `batch_size` images on `device`."""

    device: torch.device
    batch_size: int
    steps: int
    epochs: int
    cpu_clock: bool = False  # time.process_time: this process's CPU seconds, which other processes do not inflate
    bf16: bool = False  # trainer.precision=bf16-mixed: autocast to bfloat16 where Lightning's plugin autocasts

    @property
    def images_per_epoch(self) -> int:
        return self.steps * self.batch_size

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def now(self) -> float:
        """Seconds on the plan's clock, once the device's queued work is done."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.process_time() if self.cpu_clock else time.perf_counter()


class InMemory:
    """The first `n` images of the stored train split as one uint8 tensor on the device: no Dataset, no DataLoader."""

    def __init__(self, train_set: Any, n: int, device: torch.device) -> None:
        self.images = train_set.images[:n].to(device)  # (n, C, H, W) uint8
        self.labels = train_set.labels[:n].to(device).long()

    def batches(self, batch_size: int, steps: int, shuffle: bool = True) -> Iterator[Batch]:
        n = len(self.images)
        order = torch.randperm(n, device=self.images.device) if shuffle else torch.arange(n, device=self.images.device)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            yield to_model_range(self.images[idx]), self.labels[idx]


def to_model_range(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1], the scaling of genlab's ImageTensorDataset."""
    return images.float() / 127.5 - 1.0


def check_same_scaling(datamodule: Any) -> None:
    """Raise unless the data module's loader serves images scaled as `to_model_range` scales them."""
    x = next(iter(datamodule.train_dataloader()))[0].cpu()
    levels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if x.dtype != torch.float32 or not torch.allclose(x, to_model_range(levels), atol=1e-6):
        raise RuntimeError("train_dataloader() no longer serves uint8 / 127.5 - 1: update to_model_range to match")


# --- the hand-written side ---------------------------------------------------------------------------------------
def gan_step(module: GANModule, opt_g: Optimizer, opt_d: Optimizer, batch: Batch, i: int) -> int:
    """GANModule.training_step without Lightning: the same discriminator step (with the zero-weighted touch of the
    generator's parameters), then the generator step every n_critic batches. Returns the optimizer steps taken."""
    x, y = batch[0], batch[1] if module.num_classes else None
    with torch.no_grad():
        fake = module.generate(len(x), y)
    out = module.d_losses(x, y, fake)
    touch = sum(p.sum() for p in module.generator.parameters()) * 0.0
    opt_d.zero_grad()
    (out["d_loss"] + touch).backward()
    opt_d.step()
    if (i + 1) % module.hparams.n_critic:
        return 1
    g_loss = module.g_loss_fn(module.discriminator(module.generate(len(x), y), y))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return 2


def em_step(module: GMMModule, batch: Batch, i: int) -> int:
    """GMMModule.training_step without Lightning: the batch's E-step, added to the epoch's sums. One step: the
    Trainer steps a placeholder optimizer so that its global step counts batches."""
    module.accumulate(*batch).mean()
    return 1


def make_step(module: GenerativeModule, plan: Plan) -> Callable[[Batch, int], int]:
    """The module's own training step as plain torch: (batch, batch index) -> optimizer steps taken. Under bf16-mixed,
    autocast covers what Lightning's precision plugin covers: the whole step with manual optimization, the
    `training_step` alone (not the backward) with automatic optimization."""
    if isinstance(module, GMMModule):
        return lambda batch, i: em_step(module, batch, i)  # float64 throughout: autocast leaves it alone
    if isinstance(module, GANModule):
        opt_g, opt_d = module.configure_optimizers()

        def manual_step(batch: Batch, i: int) -> int:
            with plan.autocast():
                return gan_step(module, opt_g, opt_d, batch, i)

        return manual_step
    optimizer = module.configure_optimizers()
    if not module.automatic_optimization or not isinstance(optimizer, Optimizer):
        raise TypeError(f"no hand-written step for {type(module).__name__}: add one to scripts/bench_train.py")

    def step(batch: Batch, i: int) -> int:
        with plan.autocast():
            # Without a Trainer its self.log calls return at once, and the DVAE's temperature stays at its start value
            # (the same arithmetic either way).
            loss = module.training_step(batch, i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return 1

    return step


class PlainEMA:
    """An EMA callback of the model as plain torch: the AveragedModel its `setup` builds, from the callback's own
    averaging function and buffer setting, updated after the steps its `on_train_batch_end` updates after."""

    def __init__(self, callback: EMAWeightAveraging, module: GenerativeModule) -> None:
        self.average = AveragedModel(module, use_buffers=callback._use_buffers, **callback._kwargs)
        self.should_update = callback.should_update
        self.latest_step = 0

    def after_batch(self, module: GenerativeModule, global_step: int) -> None:
        if global_step > self.latest_step and self.should_update(step_idx=global_step - 1):
            self.average.update_parameters(module)
            self.latest_step = global_step


def plain_callbacks(module: GenerativeModule) -> list[PlainEMA]:
    """The model's `configure_callbacks()`, mirrored; one the loop cannot mirror would make the comparison unfair."""
    callbacks = module.configure_callbacks() or []
    unknown = [type(c).__name__ for c in callbacks if not isinstance(c, EMAWeightAveraging)]
    if unknown:
        raise TypeError(f"the hand-written loop does not mirror the callback(s) {unknown} of {type(module).__name__}")
    return [PlainEMA(c, module) for c in callbacks]


def end_epoch(module: GenerativeModule) -> None:
    """The module's epoch-end work: the GMM's M-step, the AE's latent density (the module's own hook)."""
    if isinstance(module, GMMModule):
        module.maximize()  # its on_train_epoch_end asks the Trainer whether the epoch was whole; here it always is
    else:
        module.on_train_epoch_end()


def hand_written_fit(module: GenerativeModule, data: InMemory, plan: Plan) -> float:
    """Seconds of `plan.epochs` epochs of the hand-written loop, from the first epoch's start to the last one's end."""
    module.to(plan.device).train()
    step, emas = make_step(module, plan), plain_callbacks(module)
    if isinstance(module, GMMModule):  # its on_train_start: one pass for the PCA basis and the initial mixture
        module.initialize(data.batches(plan.batch_size, len(data.images) // plan.batch_size, shuffle=False))
    global_step = 0
    start = plan.now()
    for _ in range(plan.epochs):
        for i, batch in enumerate(data.batches(plan.batch_size, plan.steps)):
            global_step += step(batch, i)
            for ema in emas:
                ema.after_batch(module, global_step)
        end_epoch(module)
    return plan.now() - start


# --- the Trainer side ----------------------------------------------------------------------------------------------
class EpochTimer(L.Callback):
    """Time on the plan's clock from the first training epoch's start (before the module's hook) to `on_train_end`,
    which runs after the last epoch's hooks (the module's `on_train_epoch_end` included), before the EMA's copy back."""

    def __init__(self, plan: Plan) -> None:
        self.plan, self.start, self.end = plan, None, None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is None:
            self.start = self.plan.now()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = self.plan.now()


def trainer_fit(cfg: DictConfig, datamodule: Any, module: GenerativeModule, plan: Plan) -> tuple[float, float]:
    """(seconds of the epochs, seconds of the whole `fit` call) with the configured Trainer, made quiet."""
    timer = EpochTimer(plan)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    budget = dict(max_epochs=plan.epochs, max_time=None, limit_train_batches=plan.steps, limit_val_batches=0)
    accelerator = "gpu" if plan.device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as root:
        trainer = instantiate(
            cfg.trainer, default_root_dir=root, accelerator=accelerator, devices=1, num_sanity_val_steps=0,
            callbacks=[timer], **quiet, **budget,
        )  # fmt: skip
        start = plan.now()
        trainer.fit(module, datamodule=datamodule)
        total = plan.now() - start
    if trainer.num_training_batches != plan.steps:
        raise RuntimeError(f"the Trainer ran {trainer.num_training_batches} batches per epoch, not {plan.steps}")
    return timer.end - timer.start, total


# --- one family ----------------------------------------------------------------------------------------------------
@dataclass
class Bench:
    """One family's composed config, its data module (set up) and the in-memory copy of the same images."""

    family: str
    cfg: DictConfig
    datamodule: Any
    data: InMemory
    plan: Plan

    def new_module(self, seed: int = SEED) -> GenerativeModule:
        torch.manual_seed(seed)  # the initial weights, the loader's shuffle (its seed is torch's) and the noise
        return instantiate(self.cfg.model, **data_shape_kwargs(self.cfg.model, self.datamodule), _convert_="all")


def prepare(family: str, args: argparse.Namespace, device: torch.device) -> Bench:
    overrides = [f"model={family}", *([f"data.batch_size={args.batch_size}"] if args.batch_size else [])]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, *args.overrides])
    GlobalHydra.instance().clear()
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        fail(f"trainer.precision={precision}: the hand-written loop mirrors {list(PRECISIONS)} only")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    available = len(datamodule.train_set.images)
    n = args.limit_images or available
    if n > available:
        fail(f"--limit-images {n} exceeds the {available} training images of {cfg.data._target_}")
    batch_size = datamodule.batch_size
    if n < batch_size:
        fail(f"{n} images make no batch of {batch_size}: raise --limit-images or lower --batch-size")
    check_same_scaling(datamodule)
    plan = Plan(device, batch_size, n // batch_size, args.epochs, args.clock == "cpu", precision == "bf16-mixed")
    return Bench(family, cfg, datamodule, InMemory(datamodule.train_set, n, device), plan)


def measure(bench: Bench, repeats: int) -> dict[str, float]:
    """Best seconds per epoch of each side (and the Trainer's setup), measured alternately."""
    threads = torch.get_num_threads()
    warm_up = dataclasses.replace(bench.plan, steps=1, epochs=1)
    hand_written_fit(bench.new_module(), bench.data, warm_up)
    trainer_s, setup_s, hand_s = [], [], []
    for r in range(repeats):
        # A new seed each repeat, the same for both sides: a cost that depends on the data's order (the AE's EM runs
        # to convergence at each epoch's end) is not one fixed draw per side.
        epochs_s, fit_s = trainer_fit(bench.cfg, bench.datamodule, bench.new_module(SEED + r), bench.plan)
        if torch.get_num_threads() != threads:
            raise RuntimeError(f"the Trainer changed torch's threads from {threads} to {torch.get_num_threads()}")
        trainer_s.append(epochs_s / bench.plan.epochs)
        setup_s.append(fit_s - epochs_s)
        hand_s.append(hand_written_fit(bench.new_module(SEED + r), bench.data, bench.plan) / bench.plan.epochs)
    return {"trainer": min(trainer_s), "hand": min(hand_s), "setup": min(setup_s)}


# --- the table -----------------------------------------------------------------------------------------------------
def header(target: float | None) -> str:
    cols = ["family", "batch", "steps/epoch", "Trainer s/epoch", "hand-written s/epoch", "Trainer img/s"]
    cols += ["hand-written img/s", "ratio", "Trainer setup s"] + ([f"ratio >= {target}"] if target else [])
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def row(bench: Bench, best: dict[str, float], target: float | None) -> tuple[str, float]:
    plan, images = bench.plan, bench.plan.images_per_epoch
    ratio = best["hand"] / best["trainer"]  # = (images / trainer s) / (images / hand-written s)
    cells = [bench.family, plan.batch_size, plan.steps, f"{best['trainer']:.3f}", f"{best['hand']:.3f}"]
    cells += [f"{images / best['trainer']:.0f}", f"{images / best['hand']:.0f}", f"{ratio:.2f}", f"{best['setup']:.2f}"]
    if target:
        cells.append("yes" if ratio >= target else "NO")
    return "| " + " | ".join(map(str, cells)) + " |", ratio


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    valid = family_names()
    parser.add_argument("--families", nargs="+", default=valid, help=f"model configs, of {', '.join(valid)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the data config's)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side; the best is kept")
    parser.add_argument("--limit-images", type=int, help="N // batch_size steps per epoch (hand-written: first N)")
    parser.add_argument("--target", type=float, help="exit 1 if a family's ratio is below this")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="cpu: this process's CPU seconds")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every family")
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in valid]
    if unknown:
        fail(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; valid: {valid}")
    for name in ("batch_size", "epochs", "repeats", "limit_images", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but torch sees no CUDA device")
    if args.device == "cuda" and args.clock == "cpu":
        fail("--clock cpu times the CPU alone: use it with --device cpu")
    return args


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info lines off, and the warnings that say nothing about speed; both restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)  # few workers, few batches per log interval
        warnings.filterwarnings("ignore", message=r".*self\.log\(\)` but the `self\.trainer` reference")  # hand-written
        warnings.filterwarnings("ignore", message=r".*returned `None`, this fit will run with no optimizer")  # GMM
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_table(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Print the table, a row as each family finishes; returns each family's ratio."""
    ratios = {}
    for k, family in enumerate(args.families):
        bench = prepare(family, args, device)
        if k == 0:
            data = f"{type(bench.datamodule).__name__}, {len(bench.datamodule.train_set.images)} training images"
            print(f"data: {data}, {len(bench.data.images)} used; {args.epochs} epoch(s) per measurement, best of "
                  f"{args.repeats}, Trainer and hand-written alternating\n")  # fmt: skip
            print(header(args.target), flush=True)
        line, ratios[family] = row(bench, measure(bench, args.repeats), args.target)
        print(line, flush=True)
    return ratios


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, lightning {L.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock")  # fmt: skip
    print(f"command: python {shlex.join(['scripts/bench_train.py', *argv])}")
    with quiet_lightning():
        ratios = run_table(args, device)
    missed = [f for f, r in ratios.items() if args.target and not (math.isfinite(r) and r >= args.target)]
    if missed:
        print(f"\nbelow the target ratio {args.target}: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
