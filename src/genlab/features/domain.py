"""The `domain` extractor: a small CNN classifier trained on the dataset itself, genlab's offline default.

InceptionV3 features need weights from the network; a classifier trained on the evaluation dataset needs
nothing but the data, and on digits it is the more sensitive judge. This follows the MNIST protocol of
Lucic et al. 2018 ("Are GANs Created Equal?") and of the conditional-GAN literature, which compute FID from a
domain classifier's features and IS from its logits. Its 128-d penultimate activations feed FID/KID/P&R/D&C,
its logits IS, conditional accuracy and class coverage. Trained once per dataset on first use (Adam, random
shifts), checked on the held-out validation split, and cached under a key of the training data's hash and the
whole recipe (architecture width, epochs, batch size, learning rate, seed): change any of them and it retrains.
The same recipe trains the CAS classifiers (`fit_classifier`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from genlab.features.base import FeatureExtractor, to_uint8
from genlab.features.cache import load_or_compute, tensors_hash
from genlab.features.precision import check_precision, precision_context

log = logging.getLogger(__name__)

VERSION = 2  # bump when the code of the architecture or the training loop changes: old caches become stale
# The recipe's defaults (the cache key holds the values a classifier was trained with):
WIDTH = 16  # channels of the first conv stage
BATCH_SIZE = 128
LEARNING_RATE = 3e-3


def normalise(images: Tensor) -> Tensor:
    """uint8 images -> floats in [-1, 1], the classifier's input."""
    return images.float() / 127.5 - 1


class DomainClassifier(nn.Module):
    """(B, C, S, S) images in [-1, 1] -> 128-d features and class logits; three conv stages, any S >= 8.

    Three 3x3 conv + BatchNorm + max-pool stages (16, 32, 64 channels), then 128 ReLU units and a linear head:
    about 0.6 MFLOP per 28x28 image, the size of the classic 99%-on-MNIST CNNs, cheap enough to train on a CPU.
    """

    def __init__(self, channels: int, num_classes: int, width: int = WIDTH) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        # adaptive pooling to 2x2: 28 px (-> 3) and 32 px (-> 4) inputs give the same 4 * width * 4 numbers
        self.body = nn.Sequential(
            *stage(channels, width), *stage(width, 2 * width), *stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(2)
        )
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 4, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.penultimate(self.body(x))  # (B, 4w, 2, 2) -> (B, 128)
        return features, self.head(features)


class DomainExtractor(FeatureExtractor):
    """A trained `DomainClassifier` as a feature extractor.

    Attributes:
        val_accuracy: its accuracy on the datamodule's held-out validation split.
        trained: True if it was trained by the call that made it, False if it came from the cache.
    """

    feature_dim = 128

    def __init__(
        self,
        classifier: DomainClassifier,
        dataset: str,
        image_shape: tuple[int, int, int],
        val_accuracy: float,
        trained: bool,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.precision = check_precision(precision)
        self.classifier = classifier.eval()
        self.name = f"domain-{dataset}"
        self.image_shape = tuple(image_shape)
        self.num_logits = classifier.head[-1].out_features
        self.val_accuracy, self.trained = val_accuracy, trained

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} takes images of shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(images.shape)}"
            )
        x = normalise(to_uint8(images, channels=(self.image_shape[0],)))  # the same quantisation as stored images
        with precision_context(self.precision, x.device.type):
            features, logits = self.classifier(x)
        return features.float(), logits.float()


def shift(x: Tensor, generator: torch.Generator, pixels: int = 2) -> Tensor:
    """One random translation per batch by up to `pixels` (background padding): the augmentation that takes
    MNIST past 99% (LeCun et al. 1998 report the same gain from distortions)."""
    padded = F.pad(x, [pixels] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


@torch.no_grad()
def accuracy(classifier: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of uint8 `images` that `classifier` labels correctly."""
    classifier.eval()
    return float((predict_classes(classifier, images, batch_size) == labels.to(images.device)).double().mean())


@torch.no_grad()
def predict_classes(classifier: DomainClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """(N,) predicted classes of uint8 `images`, on their device."""
    classifier.eval()
    out = [classifier(normalise(images[i : i + batch_size]))[1].argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def fit_classifier(
    images: Tensor, labels: Tensor, num_classes: int, epochs: int = 8, seed: int = 0
) -> Callable[[Tensor], Tensor]:
    """Train a `DomainClassifier` (the domain extractor's recipe) on uint8 `images` and `labels` and return its
    predict function, uint8 images -> (N,) classes: the classifier of the Classification Accuracy Score."""
    classifier = train_classifier(images, labels, num_classes, epochs, seed, progress=False)
    return lambda x: predict_classes(classifier, x.to(images.device))


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    epochs: int,
    seed: int,
    progress: bool = True,
    width: int = WIDTH,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
) -> DomainClassifier:
    """Adam with a one-cycle schedule on uint8 images (N, C, S, S); deterministic given `seed`.

    The global RNG is left as it was: evaluation in the middle of a training run must not change the run. Works
    when called under `torch.no_grad()` or `torch.inference_mode()` (as in a Lightning validation loop), on the
    images' device.
    """
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)  # weight init and dropout
        generator = torch.Generator().manual_seed(seed)  # batch order and shifts
        classifier = DomainClassifier(images.shape[1], num_classes, width).to(images.device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
        steps = epochs * -(-len(images) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        classifier.train()
        for _ in tqdm(range(epochs), desc="domain classifier: training", unit="epoch", disable=not progress):
            for idx in torch.randperm(len(images), generator=generator).split(batch_size):
                idx = idx.to(images.device)
                loss = F.cross_entropy(classifier(shift(normalise(images[idx]), generator))[1], labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return classifier.eval()


def load_or_train_domain_extractor(
    datamodule,
    cache_dir: str | os.PathLike | None,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    precision: str = "fp32",
    width: int = WIDTH,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
) -> DomainExtractor:
    """The domain extractor of `datamodule`'s dataset: loaded from `cache_dir` if a valid cache of the same data
    and recipe is there, else trained on the train split, scored on the validation split and cached (None: no
    cache, always trains). `precision` is the arithmetic of its forward pass (it always trains in fp32).

    Epochs default to 8 below 20k training images and 4 above. Several processes (DDP ranks) may call this at
    once: one trains, the others wait for its file.
    """
    datamodule.setup("fit")
    train, val = datamodule.train_set, datamodule.val_set
    epochs = epochs or (8 if len(train) < 20_000 else 4)
    shape = tuple(train.images.shape[1:])
    recipe = {"width": width, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    key = {
        "version": VERSION,
        "data": datamodule.name,
        "shape": list(shape),
        "classes": datamodule.num_classes,
        "data_hash": tensors_hash(train.images, train.labels),
        **recipe,
    }
    path = None
    if cache_dir is not None:
        recipe_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
        name = f"domain-{datamodule.name}-{'x'.join(map(str, shape))}-{key['data_hash']}-{recipe_hash}.pt"
        path = Path(cache_dir) / name

    def compute() -> dict:
        classifier = train_classifier(
            train.images, train.labels, datamodule.num_classes, epochs, seed, progress, width, batch_size, lr
        )
        val_acc = accuracy(classifier, val.images, val.labels)
        log.info(f"domain classifier for {datamodule.name}: held-out accuracy {val_acc:.4f} ({len(val)} images)")
        return {"state_dict": classifier.state_dict(), "val_accuracy": val_acc}

    with torch.inference_mode(False):  # normal tensors, usable in and outside inference mode alike
        saved, trained = load_or_compute(path, key, compute)
    with torch.device("meta"):  # no initialisation (which would draw from the global RNG): the weights come next
        classifier = DomainClassifier(shape[0], datamodule.num_classes, width)
    classifier.load_state_dict(saved["state_dict"], assign=True)
    return DomainExtractor(classifier, datamodule.name, shape, saved["val_accuracy"], trained, precision)
