"""The `domain` extractor: a small CNN classifier trained on the dataset itself, genlab's offline default.

InceptionV3 features need weights from the network; a classifier trained on the evaluation dataset needs
nothing but the data, and on digits it is the more sensitive judge (as in the MNIST FIDs of Lucic et al. 2018,
which also use a domain classifier's features). Its 128-d penultimate activations feed FID/KID/P&R/D&C, its
logits IS and conditional accuracy. Trained once per dataset on first use and cached with its data hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from genlab.features.base import FeatureExtractor, to_uint8
from genlab.features.cache import atomic_save, checked_load, file_lock

log = logging.getLogger(__name__)

VERSION = 1  # bump when the architecture or the training recipe changes: old caches become stale


class DomainClassifier(nn.Module):
    """(B, C, S, S) images normalised to [-1, 1] -> 128-d features and class logits. Any S >= 8."""

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]

        self.body = nn.Sequential(*stage(channels, width), *stage(width, 2 * width), nn.AdaptiveAvgPool2d(4))
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.penultimate(self.body(x))  # (B, 2w, 4, 4) -> (B, 128)
        return features, self.head(features)


class DomainExtractor(FeatureExtractor):
    """A trained `DomainClassifier` as a feature extractor; `val_accuracy` is its held-out accuracy."""

    feature_dim = 128

    def __init__(self, classifier: DomainClassifier, dataset: str, val_accuracy: float, trained: bool) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.name = f"domain-{dataset}"
        self.num_logits = classifier.head[-1].out_features
        self.val_accuracy, self.trained = val_accuracy, trained

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = to_uint8(images).float() / 127.5 - 1  # the same quantisation as images stored on disk
        features, logits = self.classifier(x)
        return features.float(), logits.float()


def shift(x: Tensor, generator: torch.Generator, pixels: int = 2) -> Tensor:
    """Random translations by up to `pixels` (zero padding): the augmentation that takes MNIST past 99%."""
    padded = F.pad(x, [pixels] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def accuracy(classifier: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of uint8 `images` classified as `labels`."""
    classifier.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            _, logits = classifier(images[i : i + batch_size].float() / 127.5 - 1)
            correct += (logits.argmax(1) == labels[i : i + batch_size]).sum().item()
    return correct / len(images)


def train_classifier(
    train: tuple[Tensor, Tensor], num_classes: int, epochs: int, seed: int, progress: bool = True
) -> DomainClassifier:
    """Adam on uint8 images (N, C, S, S) and labels, with random shifts; deterministic given `seed`."""
    images, labels = train
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = DomainClassifier(images.shape[1], num_classes)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    steps = epochs * ((len(images) + 127) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    bar = tqdm(total=steps, desc="domain classifier: training", disable=not progress, leave=False)
    for _ in range(epochs):
        classifier.train()
        for idx in torch.randperm(len(images), generator=generator).split(128):
            x = shift(images[idx].float() / 127.5 - 1, generator)
            loss = F.cross_entropy(classifier(x)[1], labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
    bar.close()
    return classifier.eval()


def data_hash(images: Tensor, labels: Tensor) -> str:
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_train_domain_extractor(
    datamodule, cache_dir: str | Path | None, epochs: int | None = None, seed: int = 0, progress: bool = True
) -> DomainExtractor:
    """The domain extractor of `datamodule`'s dataset: from `cache_dir` if a valid cache exists, else trained on
    the train split (and cached). Epochs default to 8 for small datasets (< 20k images) and 4 for larger ones."""
    datamodule.setup("fit")
    train, val = datamodule.train_set, datamodule.val_set
    epochs = epochs or (8 if len(train) < 20_000 else 4)
    key = {
        "version": VERSION,
        "data": datamodule.name,
        "shape": list(train.images.shape[1:]),
        "data_hash": data_hash(train.images, train.labels),
        "epochs": epochs,
        "seed": seed,
    }
    path = Path(cache_dir) / f"domain-{datamodule.name}-{key['data_hash']}.pt" if cache_dir else None
    with file_lock(path) if path else contextlib.nullcontext():
        cached = checked_load(path, key) if path else None
        trained = cached is None
        if trained:
            classifier = train_classifier((train.images, train.labels), datamodule.num_classes, epochs, seed, progress)
            val_acc = accuracy(classifier, val.images, val.labels)
            log.info(f"domain classifier for {datamodule.name}: held-out accuracy {val_acc:.4f} ({len(val)} images)")
            if path:
                atomic_save({"state_dict": classifier.state_dict(), "val_accuracy": val_acc}, path, key)
        else:
            classifier = DomainClassifier(train.images.shape[1], datamodule.num_classes)
            classifier.load_state_dict(cached["state_dict"])
            val_acc = cached["val_accuracy"]
    return DomainExtractor(classifier, datamodule.name, val_acc, trained)
