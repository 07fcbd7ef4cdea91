"""Metrics for class-conditional generators: intra-FID and the accuracy of a classifier on generated samples.

- `intra_fid`: FID computed separately for every class and averaged over classes, as in Miyato & Koyama 2018,
  "cGANs with Projection Discriminator" (arXiv:1802.05637). Per class it is `genlab.metrics.fid`.
- `classifier_accuracy`: fraction of generated samples that a pretrained classifier assigns to the class they were
  generated for, as the Inception accuracy of Odena et al. 2017, "Conditional Image Synthesis with Auxiliary
  Classifier GANs" (arXiv:1610.09585).
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_labels, check_pair
from genlab.metrics.frechet import DEFAULT_CHUNK_SIZE, fid


def intra_fid(
    real_features: Tensor,
    real_labels: Tensor,
    fake_features: Tensor,
    fake_labels: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
    """Mean over classes of the FID (>= 0) between the real and fake features of that class.

    Args:
        real_features, fake_features: (N_r, D) and (N_f, D) finite features on one device.
        real_labels, fake_labels: (N_r,) and (N_f,) integer class labels (the class each fake was generated for).
    Every class that occurs in either label tensor needs at least 2 real and 2 fake samples (for covariances).
    """
    check_features("real_features", real_features)
    check_features("fake_features", fake_features)
    check_pair(real_features, fake_features)
    check_labels("real_labels", real_labels, real_features.shape[0], "real_features")
    check_labels("fake_labels", fake_labels, fake_features.shape[0], "fake_features")
    real_labels, fake_labels = real_labels.to(real_features.device), fake_labels.to(fake_features.device)
    classes = torch.unique(torch.cat([real_labels, fake_labels])).tolist()
    for c in classes:
        n_real, n_fake = int((real_labels == c).sum()), int((fake_labels == c).sum())
        if n_real < 2 or n_fake < 2:
            raise ValueError(
                f"class {c} has {n_real} real and {n_fake} fake samples; intra-FID needs at least 2 of each per class"
            )
    scores = [
        fid(real_features[real_labels == c], fake_features[fake_labels == c], chunk_size=chunk_size) for c in classes
    ]
    return sum(scores) / len(scores)


def classifier_accuracy(fake_logits: Tensor, fake_labels: Tensor) -> float:
    """Fraction in [0, 1] of generated samples whose argmax over (N, C) `fake_logits` equals their (N,) label.

    `fake_labels` are the classes the samples were generated for, integers in [0, C), on any device.
    """
    check_features("fake_logits", fake_logits)
    check_labels("fake_labels", fake_labels, fake_logits.shape[0], "fake_logits")
    num_classes = fake_logits.shape[1]
    fake_labels = fake_labels.to(fake_logits.device)
    low, high = int(fake_labels.min()), int(fake_labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"fake_labels range over [{low}, {high}] but fake_logits have {num_classes} classes; labels must be in "
            f"[0, {num_classes - 1}]"
        )
    return float((fake_logits.argmax(dim=1) == fake_labels).double().mean())
