"""DataModules: images in [-1, 1] with integer labels, a deterministic validation split."""

from genlab.data.base import ImageDataModule, ImageTensorDataset, TensorLoader
from genlab.data.synthetic import SyntheticDataModule, make_shapes
from genlab.data.vision import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
)

__all__ = [
    "CIFAR10DataModule",
    "DatasetNotFoundError",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageTensorDataset",
    "MNISTDataModule",
    "SyntheticDataModule",
    "TensorLoader",
    "make_shapes",
]
