"""Inception Score (IS) from classifier logits of generated samples.

Follows Salimans et al. 2016, "Improved Techniques for Training GANs" (arXiv:1606.03498), exactly as torch-fidelity
`metric_isc.py` computes it: float64 softmax of the logits, the samples cut into `splits` contiguous chunks
[i N // splits, (i + 1) N // splits), per chunk exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean
prediction, and the mean and *population* standard deviation (numpy `std`, ddof=0) over chunks.

torch-fidelity shuffles the samples first (default `samples_shuffle=True`) with `np.random.RandomState(2020)`;
`shuffle_seed=2020` applies the same permutation and so reproduces its default numbers. The default here
(`shuffle_seed=None`) keeps the given order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int


def inception_score(fake_logits: Tensor, splits: int = 10, shuffle_seed: int | None = None) -> tuple[float, float]:
    """(mean, std) of the Inception Score over `splits` chunks of (N, C) logits; each score is in [1, C].

    Args:
        fake_logits: (N, C) unnormalised class logits of N generated samples (N >= splits), e.g. InceptionV3's.
        splits: number of contiguous chunks (>= 1); std is the population std over chunks (0.0 for one split).
        shuffle_seed: if given, permute the samples with `np.random.RandomState(shuffle_seed).permutation(N)` first.
    """
    check_features("fake_logits", fake_logits)
    check_int("splits", splits, 1)
    n = fake_logits.shape[0]
    if splits > n:
        raise ValueError(f"splits={splits} is more than the {n} samples in fake_logits; every split needs a sample")
    if shuffle_seed is not None:
        order = np.random.RandomState(shuffle_seed).permutation(n)
        fake_logits = fake_logits[torch.from_numpy(order).to(fake_logits.device)]
    logits = fake_logits.double()
    p = logits.softmax(dim=1)
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)
        scores.append((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1).mean().exp())
    scores = torch.stack(scores)
    mean, std = torch.stack([scores.mean(), scores.std(correction=0)]).tolist()
    return mean, std
