"""Classification Accuracy Score (CAS) of a class-conditional generator: Ravuri & Vinyals 2019, "Classification
Accuracy Score for Conditional Generative Models" (arXiv:1905.10887).

Train a classifier on generated (image, asked-for label) pairs only, then test it on real held-out images. A
generator whose samples do not look like the class they were asked for, or that covers only part of each class,
teaches a worse classifier. Report it beside the same classifier trained on real training images (`cas_real`):
CAS near that number means the samples carry the class information that real data does.

The classifier is passed in as `fit(images, labels) -> predict`, so this module stays independent of any one
architecture (genlab uses its domain classifier's, `genlab.features.domain.fit_classifier`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from genlab.metrics._checks import check_labels

Predict = Callable[[Tensor], Tensor]  # uint8 images (N, C, H, W) -> (N,) predicted classes
Fit = Callable[[Tensor, Tensor], Predict]


def classification_accuracy_score(
    train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor, fit: Fit
) -> float:
    """Accuracy in [0, 1] on the real (test_images, test_labels) of `fit(train_images, train_labels)`.

    Args:
        train_images: (N, C, H, W) uint8 generated images (or real ones, for the real-data baseline).
        train_labels: (N,) the labels they were generated for.
        test_images, test_labels: real held-out images (M, C, H, W) uint8 and their (M,) labels.
        fit: trains a classifier and returns its predict function.
    """
    for name, images in (("train_images", train_images), ("test_images", test_images)):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name} must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    check_labels("train_labels", train_labels, len(train_images), "train_images")
    check_labels("test_labels", test_labels, len(test_images), "test_images")
    predict = fit(train_images, train_labels.long())
    predictions = predict(test_images)
    return float((predictions.to(test_labels.device) == test_labels).double().mean())
