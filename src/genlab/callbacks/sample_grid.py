"""Save a PNG grid of samples (and of reconstructions, where the model has `reconstruct`) every N epochs.

The same noise (a fixed generator seed) and the same validation images are used every epoch, so the
grids show the model's progress rather than fresh randomness. Grids also go to every logger that takes
images (wandb, TensorBoard).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torchvision.utils import make_grid, save_image

from genlab.checks import check_positive_int


def label_cycle(num_classes: int, n: int, device: torch.device) -> Tensor | None:
    """Labels 0, 1, ..., K-1, 0, 1, ... for a conditional model (one class per grid column); None if K = 0."""
    return torch.arange(n, device=device) % num_classes if num_classes else None


class SampleGrid(L.Callback):
    """Write `samples/epoch_XXX.png` and `reconstructions/epoch_XXX.png` under `dirpath`.

    Args:
        dirpath: run folder that receives the `samples/` and `reconstructions/` folders.
        num_samples: images in the sample grid.
        num_reconstructions: validation images (and their reconstructions) in the other grid.
        every_n_epochs: how often to write.
        seed: seed of the sampling noise, the same every epoch.
    """

    def __init__(
        self, dirpath: str, num_samples: int = 64, num_reconstructions: int = 32, every_n_epochs: int = 1, seed: int = 0
    ) -> None:
        check_positive_int("every_n_epochs", every_n_epochs)
        check_positive_int("num_samples", num_samples)
        check_positive_int("num_reconstructions", num_reconstructions, allow_zero=True)
        self.dirpath = Path(dirpath)
        self.num_samples = num_samples
        self.num_reconstructions = num_reconstructions
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self._val_images: Tensor | None = None
        self._written_epoch = -1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Written at validation end where validation runs: that is where weight averaging (EMA) has its averaged
        # weights swapped in, so the grids show the weights that the evaluation scores.
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.maybe_write(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.maybe_write(trainer, pl_module)  # epochs without validation

    def maybe_write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs == 0 and epoch != self._written_epoch:
            self._written_epoch = epoch
            with isolate_rng():  # grids must not change the training run's random stream
                self.write(trainer, pl_module)

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ncol = pl_module.num_classes or 8
        generator = torch.Generator().manual_seed(self.seed)
        labels = label_cycle(pl_module.num_classes, self.num_samples, pl_module.device)
        samples = pl_module.sample(self.num_samples, labels=labels, generator=generator)
        self.save(trainer, "samples", make_grid(samples.float().cpu(), nrow=ncol, padding=2))
        x = self.validation_images(trainer)
        if hasattr(pl_module, "reconstruct") and x is not None:
            recon = pl_module.reconstruct(x.to(pl_module.device)).float().cpu()
            original = ((x + 1) / 2).clamp(0, 1)
            rows = torch.stack([original.view(-1, 8, *x.shape[1:]), recon.view(-1, 8, *x.shape[1:])], dim=1)
            self.save(trainer, "reconstructions", make_grid(rows.flatten(0, 2), nrow=8, padding=2))  # row pairs

    def validation_images(self, trainer: L.Trainer) -> Tensor | None:
        """`num_reconstructions` validation images (rounded down to a multiple of 8) spread evenly over the
        validation set, so that every class shows even when the data is sorted by label; None if none."""
        n = self.num_reconstructions // 8 * 8
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if self._val_images is None and n > 0 and loader is not None and len(loader.dataset) >= 8:
            dataset = loader.dataset
            n = min(n, len(dataset) // 8 * 8)
            index = torch.linspace(0, len(dataset) - 1, n).long().tolist()
            self._val_images = torch.stack([dataset[i][0] for i in index])
        return self._val_images

    def save(self, trainer: L.Trainer, kind: str, grid: Tensor) -> None:
        save_grid(trainer, self.dirpath, kind, grid)


def save_grid(trainer: L.Trainer, dirpath: Path, kind: str, grid: Tensor) -> None:
    """Write `grid` to `<dirpath>/<kind>/epoch_XXX.png` and log it to every logger that takes images."""
    path = dirpath / kind / f"epoch_{trainer.current_epoch:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=f"images/{kind}", images=[grid], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(f"images/{kind}", grid, global_step=trainer.global_step)
