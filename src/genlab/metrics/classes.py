"""Class coverage: which classes of a labelled dataset does a generator draw, and how far is its class mix from
the data's? The mode-counting metrics of VEEGAN (Srivastava et al. 2017, arXiv:1705.07761) and PacGAN (Lin et
al. 2018, arXiv:1712.04086), read off a classifier trained on the dataset (genlab's domain classifier).

Both compare the classifier's predicted classes (argmax of its logits) of the generated samples with its
predictions on real samples, so that the classifier's own bias cancels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.metrics._checks import check_features

PSEUDO_COUNT = 0.5  # added to every generated class count (Krichevsky-Trofimov), so a missing class gives a large,
# finite KL rather than inf


def class_histogram(logits: Tensor) -> Tensor:
    """(C,) float64 counts of the predicted classes (argmax) of (N, C) logits."""
    return torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).double()


def _check(real_logits: Tensor, fake_logits: Tensor) -> None:
    check_features("real_logits", real_logits)
    check_features("fake_logits", fake_logits)
    if real_logits.shape[1] != fake_logits.shape[1]:
        raise ValueError(f"real_logits have {real_logits.shape[1]} classes but fake_logits {fake_logits.shape[1]}")


def class_kl(real_logits: Tensor, fake_logits: Tensor) -> float:
    """KL(p_real || p_fake) >= 0 in nats between the predicted-class distributions of real (N_r, C) and generated
    (N_f, C) logits. p_fake counts get a pseudo-count of 1/2 each: a class the generator never draws costs
    p_real(c) log(p_real(c) N_f / 0.5) instead of infinity."""
    _check(real_logits, fake_logits)
    p_real = class_histogram(real_logits)
    p_real = p_real / p_real.sum()
    fake = class_histogram(fake_logits.to(real_logits.device)) + PSEUDO_COUNT
    p_fake = fake / fake.sum()
    present = p_real > 0
    return float((p_real[present] * (p_real[present] / p_fake[present]).log()).sum().clamp(min=0))


def classes_covered(real_logits: Tensor, fake_logits: Tensor, min_share: float = 0.1) -> int:
    """Number of classes (of those the real samples are predicted as) that the generated samples are predicted
    as at least `min_share` times as often as the real distribution would give them: with N_f samples, class c
    is covered when count_fake(c) >= min_share * N_f * p_real(c). A generator that never draws an 8 has one
    class fewer than the data."""
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share!r}")
    _check(real_logits, fake_logits)
    p_real = class_histogram(real_logits)
    p_real = p_real / p_real.sum()
    fake = class_histogram(fake_logits.to(real_logits.device))
    expected = min_share * len(fake_logits) * p_real
    return int(((fake >= expected) & (p_real > 0)).sum())
