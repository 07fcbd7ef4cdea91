"""The image DataModule every dataset shares.

Images are held in memory as uint8 tensors of shape (N, C, H, W) and served as float tensors in
[-1, 1] together with their integer labels (conditional models need them). Subclasses only say how to
load a split; resizing, the deterministic validation split and the loaders live here.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from genlab.checks import ConfigError, check_positive_int


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,), served as (float image in [-1, 1], label)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float() / 127.5 - 1.0, self.labels[index]


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends on (seed, epoch) alone, like DistributedSampler's.

    Lightning calls `set_epoch` before every epoch, so a run resumed at epoch e sees the same order as
    one that never stopped, and data loading draws nothing from the global RNG. `resume(epoch, items)` makes
    that epoch's order start after its first `items` indices: a run resumed mid-epoch sees the rest of it.
    """

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, indices already served)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, items: int) -> None:
        self._resume = (epoch, items)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
        self._resume = None
        return iter(order)

    def __len__(self) -> int:
        return self.num_items


class ResumableLoader(DataLoader):
    """The training DataLoader, with the position in its epoch as state: Lightning stores `state_dict()` in every
    checkpoint, and a run resumed from one saved mid-epoch trains on exactly the batches the interrupted run had
    not reached (the sampler skips the rest), so its weights match an uninterrupted run's.

    `batches_done` is set by the data module: the training loop's count of batches finished this epoch.
    """

    batches_done: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        done = self.batches_done() if self.batches_done is not None else 0
        return {"epoch": self.sampler.epoch, "batches": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.sampler.resume(state_dict["epoch"], state_dict["batches"] * self.batch_size)


def resize_uint8(images: Tensor, size: int) -> Tensor:
    """Resize uint8 images (N, C, H, W) to (N, C, size, size) with antialiased bilinear filtering."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunks = []
    for chunk in images.split(4096):  # bounded memory for 50k-image datasets
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        chunks.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def check_split(num_images: int, val_fraction: float) -> int:
    """The validation split's size for `num_images` (at least one); a ConfigError if no training image is left."""
    n_val = max(1, round(val_fraction * num_images))
    if n_val >= num_images:
        raise ConfigError(
            f"{num_images} image(s) with val_fraction={val_fraction} leave none to train on after the {n_val} held "
            "out for validation: use more images or a lower val_fraction"
        )
    return n_val


class ImageDataModule(L.LightningDataModule):
    """Base DataModule: `load_split` gives uint8 images and labels; this class does the rest.

    Args:
        root: folder that holds (or receives) the dataset files.
        image_size: side length the images are resized to (the native size keeps them as they are).
        batch_size: images per batch and per process.
        num_workers: DataLoader worker processes (0 loads in the main process; the data is in memory).
        val_fraction: share of the train split held out for validation, chosen by `split_seed`.
        split_seed: seed of the train/validation split; independent of the training seed so that every
            run of a sweep validates on the same images.
    """

    name: str = "images"
    channels: int = 1
    num_classes: int = 10

    def __init__(
        self,
        root: str = "data",
        image_size: int = 28,
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_positive_int("num_workers", num_workers, allow_zero=True)
        check_positive_int("image_size", image_size)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.root = root
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_set: ImageTensorDataset | None = None
        self.val_set: ImageTensorDataset | None = None
        self.test_set: ImageTensorDataset | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor] | None:
        """uint8 images (N, C, H, W) and labels (N,) of the train or test split; None if there is none."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = self.load_split(train=True)
        images = resize_uint8(images, self.image_size)
        # The validation split depends on split_seed alone: the same images whatever the run's seed.
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = check_split(len(images), self.val_fraction)
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        self.train_set = ImageTensorDataset(images[train_idx], labels[train_idx])
        self.val_set = ImageTensorDataset(images[val_idx], labels[val_idx])
        test = self.load_split(train=False)
        if test is not None:
            self.test_set = ImageTensorDataset(resize_uint8(test[0], self.image_size), test[1])

    def _loader(self, dataset: ImageTensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        seed = torch.initial_seed()  # the run's seed, set by seed_everything before the loaders are built
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), seed) if shuffle else None,
            generator=torch.Generator().manual_seed(seed),  # worker seeds, off the global RNG
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, shuffle=True)
        loader.batches_done = self._batches_done
        return loader

    def _batches_done(self) -> int:
        """Batches whose training step has finished in the current epoch (0 outside a fit)."""
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The official test split where the dataset has one, else the validation split."""
        return self._loader(self.test_set if self.test_set is not None else self.val_set, shuffle=False)
