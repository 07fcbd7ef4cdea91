"""Inception Score (IS) from classifier logits of generated samples.

Follows Salimans et al. 2016, "Improved Techniques for Training GANs" (arXiv:1606.03498), as torch-fidelity
`metric_isc.py` computes it by default: the samples shuffled with `np.random.RandomState(2020).permutation(N)`
(its `samples_shuffle=True`), cut into `splits` contiguous chunks [i N // splits, (i + 1) N // splits), per chunk
exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean prediction, and the mean and *population* standard
deviation (numpy `std`, ddof=0) over chunks. Without the shuffle a class-sorted sample set (files named by class)
puts one class in each chunk and scores near 1; `shuffle_seed=None` keeps that order all the same.

Everything is computed from float64 log-probabilities (log p(y) by logsumexp), so a probability that underflows
to 0 contributes 0, never 0 * log 0 = NaN (torch-fidelity's softmax-then-log does give NaN there).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int


def inception_score(fake_logits: Tensor, splits: int = 10, shuffle_seed: int | None = 2020) -> tuple[float, float]:
    """(mean, std) of the Inception Score over `splits` chunks of (N, C) logits; each score is in [1, C].

    Args:
        fake_logits: (N, C) unnormalised class logits of N generated samples (N >= splits), e.g. InceptionV3's.
        splits: number of contiguous chunks (>= 1); std is the population std over chunks (0.0 for one split).
        shuffle_seed: permute the samples with `np.random.RandomState(shuffle_seed).permutation(N)` first (2020:
            torch-fidelity's default); None keeps the given order.
    """
    check_features("fake_logits", fake_logits)
    check_int("splits", splits, 1)
    n = fake_logits.shape[0]
    if splits > n:
        raise ValueError(f"splits={splits} is more than the {n} samples in fake_logits; every split needs a sample")
    if shuffle_seed is not None:
        order = np.random.RandomState(shuffle_seed).permutation(n)
        fake_logits = fake_logits[torch.from_numpy(order).to(fake_logits.device)]
    log_p = fake_logits.double().log_softmax(dim=1)  # (N, C), finite for finite logits
    p = log_p.exp()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        log_q = log_p[lo:hi].logsumexp(dim=0, keepdim=True) - math.log(hi - lo)  # (1, C) log of the mean p
        scores.append((p[lo:hi] * (log_p[lo:hi] - log_q)).sum(dim=1).mean().exp())
    scores = torch.stack(scores)
    mean, std = torch.stack([scores.mean(), scores.std(correction=0)]).tolist()
    return mean, std
