"""Kernel Inception Distance (KID): unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets.

Follows Bińkowski et al. 2018, "Demystifying MMD GANs" (arXiv:1801.01401), as implemented in torch-fidelity
`metric_kid.py` (adapted from mbinkowski/MMD-GAN `compute_scores.py`) with its defaults: kernel
k(x, y) = (x.y / D + 1)^3, the unbiased estimator

    MMD^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,

and the mean and population std (ddof=0) over `subsets` subsets of `subset_size` samples per side, drawn without
replacement. The subsets are drawn exactly like torch-fidelity: `rng = np.random.RandomState(seed)`, then per subset
`rng.choice(N_fake, m, replace=False)` followed by `rng.choice(N_real, m, replace=False)` (torch-fidelity's input1 is
the generated set). So `kid(real, fake, seed=s)` uses the same subsets as torch-fidelity's
`kid_features_to_metric(fake, real, rng_seed=s)` and equals it to float64 rounding.

Kernels are evaluated in float64 on the features' device (torch-fidelity uses numpy in the features' dtype, so feed
it float64 features to compare). When the full kernel matrices are cheaper than the per-subset ones (few samples,
many subsets) each is computed once and all subsets' sums come from one product with a 0/1 membership matrix;
otherwise each subset's three (m, m) kernels are computed in turn.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int, check_pair

Draws = list[tuple[Tensor, Tensor]]  # per subset: (fake indices (m,), real indices (m,))

CACHE_MAX_ELEMENTS = 2**27  # 1 GiB of float64: the largest full kernel matrix held at once


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """(n, m) float64 kernel (x y^T / D + 1)^3 of (n, D) and (m, D) features: torch-fidelity's default for KID."""
    kernel = x.double() @ y.double().T
    return kernel.mul_(1.0 / x.shape[1]).add_(1).pow_(3)  # in place: one (n, m) buffer


def mmd2_unbiased(k_xx: Tensor, k_xy: Tensor, k_yy: Tensor) -> Tensor:
    """Unbiased MMD^2 (0-d tensor, may be slightly negative) from (m, m) kernel matrices, m >= 2."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def _draw_subsets(n_real: int, n_fake: int, subsets: int, size: int, seed: int, device: torch.device) -> Draws:
    """[(fake indices (size,), real indices (size,))] per subset on `device`, in torch-fidelity's draw order."""
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(n_fake, size, replace=False), rng.choice(n_real, size, replace=False)) for _ in range(subsets)]
    return [(torch.from_numpy(f).to(device), torch.from_numpy(r).to(device)) for f, r in draws]


def _mmd2_per_subset(real: Tensor, fake: Tensor, draws: Draws) -> Tensor:
    """(subsets,) MMD^2, computing each subset's three (m, m) kernels."""
    mmds = []
    for f_idx, r_idx in draws:
        f, r = fake[f_idx], real[r_idx]
        mmds.append(mmd2_unbiased(polynomial_kernel(f, f), polynomial_kernel(f, r), polynomial_kernel(r, r)))
    return torch.stack(mmds)


def _mmd2_from_full_kernels(real: Tensor, fake: Tensor, draws: Draws) -> Tensor:
    """(subsets,) MMD^2 from the full kernel matrices, one at a time: with W the (N, subsets) 0/1 membership
    matrix, the kernel sum over subset s is (K W)[:, s] . W[:, s] (no gathers; same sums as `_mmd2_per_subset`)."""
    m = draws[0][0].shape[0]

    def membership(n: int, side: int) -> Tensor:
        w = torch.zeros(n, len(draws), dtype=torch.float64, device=real.device)
        w[torch.stack([d[side] for d in draws], dim=1), torch.arange(len(draws), device=real.device)] = 1
        return w

    w_f, w_r = membership(fake.shape[0], 0), membership(real.shape[0], 1)
    within = 0
    for x, w in ((fake, w_f), (real, w_r)):
        k = polynomial_kernel(x, x)
        within = within + ((k @ w) * w).sum(dim=0) - k.diagonal() @ w
    cross = ((polynomial_kernel(fake, real) @ w_r) * w_f).sum(dim=0)
    return within / (m * (m - 1)) - 2 * cross / (m * m)


def kid(
    real_features: Tensor, fake_features: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) of KID between real (N_r, D) and fake (N_f, D) features; mean ~ 0 for equal distributions.

    Args:
        real_features, fake_features: finite features on one device, N_r and N_f >= subset_size.
        subsets: number of random subset pairs (>= 1).
        subset_size: samples per side in each subset (>= 2).
        seed: seed of the numpy RandomState that draws the subsets (torch-fidelity's `rng_seed`).
    """
    check_int("subsets", subsets, 1)
    check_int("subset_size", subset_size, 2)
    purpose = f"KID with subset_size={subset_size}"
    check_features("real_features", real_features, subset_size, purpose)
    check_features("fake_features", fake_features, subset_size, purpose)
    check_pair(real_features, fake_features)
    n_real, n_fake = real_features.shape[0], fake_features.shape[0]
    draws = _draw_subsets(n_real, n_fake, subsets, subset_size, seed, real_features.device)
    full_elements = n_fake**2 + n_fake * n_real + n_real**2
    if max(n_real, n_fake) ** 2 <= CACHE_MAX_ELEMENTS and full_elements <= 3 * subsets * subset_size**2:
        mmds = _mmd2_from_full_kernels(real_features, fake_features, draws)
    else:
        mmds = _mmd2_per_subset(real_features, fake_features, draws)
    mean, std = torch.stack([mmds.mean(), mmds.std(correction=0)]).tolist()
    return mean, std
