"""The image DataModule every dataset shares.

Images are held in memory as uint8 tensors of shape (N, C, H, W) and served as float tensors in
[-1, 1] together with their integer labels (conditional models need them). Subclasses only say how to
load a split; resizing, the deterministic validation split and the loaders live here.

Two loaders serve the same batches (`loader=`): `tensor` (the default), a `TensorLoader` whose batches are index
slices of the stored tensors, converted to float once per batch on the model's device (where the whole split is
moved once when it fits in a quarter of the free GPU memory); `items`, torch's per-item DataLoader (with worker
processes, `num_workers`), for a dataset whose `__getitem__` does more than index. Both shuffle by the (seed, epoch)
rule of `epoch_order`, shard it across DDP ranks as Lightning's DistributedSamplerWrapper does, and resume
mid-epoch from a checkpoint at the first batch not yet trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from genlab.checks import ConfigError, check_positive_int

LOADERS = ("tensor", "items")
DEVICE_SHARE = 0.25  # a split moves onto the GPU when its uint8 images fill at most this share of its free memory


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
        return to_signed_unit(self.images[index]), self.labels[index]


def to_signed_unit(images: Tensor) -> Tensor:
    """uint8 images (any shape) as float32 in [-1, 1]: x / 127.5 - 1, on their own device."""
    return images.float().div_(127.5).sub_(1.0)


def epoch_order(num_items: int, seed: int, epoch: int) -> Tensor:
    """(num_items,) the training order of one epoch: a permutation that depends on (seed, epoch) alone."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch))


def rank_share(order: Tensor, rank: int, world: int) -> Tensor:
    """This rank's indices of an epoch `order`, as Lightning's DistributedSamplerWrapper (over DistributedSampler,
    shuffle off) gives them: the order padded from its start to a multiple of `world`, then every world-th."""
    total = math.ceil(len(order) / world) * world
    padded = torch.cat([order, order[: total - len(order)]]) if total > len(order) else order
    return padded[rank:total:world]


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
        order = epoch_order(self.num_items, self.seed, self.epoch).tolist()
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


class TensorLoader:
    """Batches of an in-memory split as index slices of its tensors: (float images in [-1, 1], int64 labels), both
    on `device`, converted to float there once per batch; no per-item `__getitem__`, no collate, no worker.

    Training (`shuffle`): the order of `epoch_order` (epoch set by Lightning through `sampler.set_epoch`), this
    rank's share of it (`rank_share`), whole batches only when there is more than one (as `drop_last`), and the
    position in the epoch as state like `ResumableLoader`'s. Evaluation: the split in order, the last batch short
    (with DDP, each rank's share of it, padded as Lightning's DistributedSampler pads).

    Args:
        dataset: the split (uint8 images (N, C, H, W), int64 labels (N,)), on any device.
        batch_size: images per batch (per rank).
        shuffle: training order (else the stored order).
        seed: the shuffle's seed.
        device: where batches are made: the split's tensors are moved there once (see `ImageDataModule.placed`).
        rank, world: this process's rank and the number of processes (DDP).
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.sampler = EpochShuffleSampler(len(dataset), seed)  # its epoch, which Lightning sets; its order rule
        self.batch_sampler = None  # what Lightning reads besides `sampler` (to see whether a loader shuffles)
        self.batches_done: Callable[[], int] | None = None
        self._skip: tuple[int, int] | None = None  # (epoch, batches already trained on)

    def _indices(self) -> Tensor:
        n = len(self.dataset)
        order = epoch_order(n, self.sampler.seed, self.sampler.epoch) if self.shuffle else torch.arange(n)
        return rank_share(order, self.rank, self.world)

    def __len__(self) -> int:
        share = math.ceil(len(self.dataset) / self.world)
        if self.shuffle and share > self.batch_size:
            return share // self.batch_size
        return math.ceil(share / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        index = self._indices().to(self.dataset.images.device)
        start = 0
        if self._skip is not None and self._skip[0] == self.sampler.epoch:
            start = self._skip[1]
        self._skip = None
        images, labels = self.dataset.images, self.dataset.labels
        for b in range(start, len(self)):
            rows = index[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = images[rows], labels[rows]
            if x.device != self.device:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield to_signed_unit(x), y

    def state_dict(self) -> dict[str, int]:
        done = self.batches_done() if self.batches_done is not None else 0
        return {"epoch": self.sampler.epoch, "batches": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._skip = (state_dict["epoch"], state_dict["batches"])


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
        loader: `tensor` (index slices of the stored tensors, made on the model's device) or `items` (torch's
            per-item DataLoader); see the module docstring.
        num_workers: worker processes of the `items` loader (0 loads in the main process).
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
        loader: str = "tensor",
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        if loader not in LOADERS:
            raise ConfigError(f"loader must be one of {list(LOADERS)}, got {loader!r}")
        check_positive_int("num_workers", num_workers, allow_zero=True)
        if num_workers and loader == "tensor":
            raise ConfigError(
                f"num_workers={num_workers} needs loader=items: the tensor loader slices the stored tensors in the "
                "main process, with no workers to start"
            )
        check_positive_int("image_size", image_size)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.root = root
        self.image_size = image_size
        self.batch_size = batch_size
        self.loader = loader
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.train_set: ImageTensorDataset | None = None
        self.val_set: ImageTensorDataset | None = None
        self.test_set: ImageTensorDataset | None = None
        self._placed: dict[tuple[int, str], ImageTensorDataset] = {}  # (id of a split, device) -> its copy there

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

    def _loader(self, dataset: ImageTensorDataset | None, shuffle: bool) -> DataLoader | TensorLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        seed = torch.initial_seed()  # the run's seed, set by seed_everything before the loaders are built
        if self.loader == "tensor":
            device, rank, world = self._placement()
            return TensorLoader(self.placed(dataset, device), self.batch_size, shuffle, seed, device, rank, world)
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

    def _placement(self) -> tuple[torch.device, int, int]:
        """(the model's device, this rank, the number of ranks): the trainer's, else the CPU alone."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return torch.device("cpu"), 0, 1
        return trainer.strategy.root_device, trainer.global_rank, trainer.world_size

    def placed(self, dataset: ImageTensorDataset, device: torch.device) -> ImageTensorDataset:
        """`dataset` where a `TensorLoader` for `device` slices it: on that GPU when its tensors fill at most
        DEVICE_SHARE of the free memory there (moved once), else in host memory (pinned for a GPU, so that each
        batch's uint8 copy overlaps the computation; it is converted to float on the device)."""
        if device.type != "cuda":
            return dataset
        key = (id(dataset), str(device))
        if key not in self._placed:
            free, _ = torch.cuda.mem_get_info(device)
            size = dataset.images.nbytes + dataset.labels.nbytes
            fits = size <= DEVICE_SHARE * free
            images = dataset.images.to(device) if fits else dataset.images.pin_memory()
            labels = dataset.labels.to(device) if fits else dataset.labels.pin_memory()
            self._placed[key] = ImageTensorDataset(images, labels)
        return self._placed[key]

    def train_dataloader(self) -> DataLoader | TensorLoader:
        loader = self._loader(self.train_set, shuffle=True)
        loader.batches_done = self._batches_done
        return loader

    def _batches_done(self) -> int:
        """Batches whose training step has finished in the current epoch (0 outside a fit)."""
        trainer = getattr(self, "trainer", None)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def val_dataloader(self) -> DataLoader | TensorLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader | TensorLoader:
        """The official test split where the dataset has one, else the validation split."""
        return self._loader(self.test_set if self.test_set is not None else self.val_set, shuffle=False)
