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

Kernels are evaluated on the features' device, their dot products in float32 for float32 features (as torch-fidelity,
which uses numpy in the features' dtype) and in float64 otherwise, everything after in float64; feed float64 features
to compare with torch-fidelity to float64 rounding. When the full kernel matrices are cheaper than the per-subset
ones (few samples, many subsets) each is computed once and all subsets' sums come from one product with a 0/1
membership matrix; otherwise each subset's kernels are computed in turn (the within-set ones from their halves:
they are symmetric). The real-real sums depend on the real side and the draws alone: `kid_real_sums` computes them
once for an evaluator to keep.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int, check_pair

Draws = list[tuple[Tensor, Tensor]]  # per subset: (fake indices (m,), real indices (m,))

CACHE_MAX_ELEMENTS = 2**27  # 1 GiB of float64: the largest full kernel matrix held at once
SYMMETRIC_HALVINGS = 2  # a subset's within-set kernel sum from its halves' kernels, this many times deep


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """(n, m) float64 kernel (x y^T / D + 1)^3 of (n, D) and (m, D) features: torch-fidelity's default for KID.

    The dot products are computed in the features' precision when both are float32 (the extractors' output; as
    torch-fidelity does, at twice float64's speed), else in float64; the kernel and every sum are float64. On
    float32 features KID moves by about 1e-8 relative against all-float64 dot products, 1e-4 of torch-fidelity's
    own float32 error (tests/test_metrics.py)."""
    kernel = (x @ y.T).double() if x.dtype == y.dtype == torch.float32 else x.double() @ y.double().T
    return kernel.mul_(1.0 / x.shape[1]).add_(1).pow_(3)  # in place: one (n, m) buffer


def _draw_subsets(n_real: int, n_fake: int, subsets: int, size: int, seed: int, device: torch.device) -> Draws:
    """[(fake indices (size,), real indices (size,))] per subset on `device`, in torch-fidelity's draw order."""
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(n_fake, size, replace=False), rng.choice(n_real, size, replace=False)) for _ in range(subsets)]
    return [(torch.from_numpy(f).to(device), torch.from_numpy(r).to(device)) for f, r in draws]


def _within_sums(x: Tensor, subsets: list[Tensor]) -> Tensor:
    """(subsets,) float64 sum over i != j of the kernel k(x_a, x_b) for each subset's indices a, b of (N, D) `x`:
    from the full (N, N) kernel and a 0/1 membership matrix W when that is cheaper than the subsets' own (m, m)
    kernels (with K the full kernel, subset s sums (K W)[:, s] . W[:, s]), else subset by subset."""
    m = len(subsets[0])
    if not _full_is_cheaper(len(x), len(x), len(subsets), m):
        return torch.stack([_off_diagonal_sum(x[idx]) for idx in subsets])
    w = _membership(len(x), subsets, x.device)
    k = polynomial_kernel(x, x)
    return ((k @ w) * w).sum(dim=0) - k.diagonal() @ w


def _cross_sums(x: Tensor, y: Tensor, x_subsets: list[Tensor], y_subsets: list[Tensor]) -> Tensor:
    """(subsets,) float64 sum over all (a, b) of k(x_a, y_b) for each subset pair's indices into `x` and `y`."""
    if not _full_is_cheaper(len(x), len(y), len(x_subsets), len(x_subsets[0])):
        return torch.stack([polynomial_kernel(x[a], y[b]).sum() for a, b in zip(x_subsets, y_subsets, strict=True)])
    w_x, w_y = _membership(len(x), x_subsets, x.device), _membership(len(y), y_subsets, x.device)
    return ((polynomial_kernel(x, y) @ w_y) * w_x).sum(dim=0)


def _off_diagonal_sum(x: Tensor, halvings: int = SYMMETRIC_HALVINGS) -> Tensor:
    """sum over i != j of k(x_i, x_j) for (m, D) `x`. The kernel is symmetric, so with x split into halves a and b
    the sum is that of a, that of b and twice sum k(a, b): three (m/2, m/2) kernels in place of one (m, m), and
    again within each half, `halvings` times (0.76x the time of the full kernel at m = 1,000, D = 2,048)."""
    if halvings == 0 or len(x) < 4:
        k = polynomial_kernel(x, x)
        return k.sum() - k.diagonal().sum()
    a, b = x[: len(x) // 2], x[len(x) // 2 :]
    return _off_diagonal_sum(a, halvings - 1) + _off_diagonal_sum(b, halvings - 1) + 2 * polynomial_kernel(a, b).sum()


def _full_is_cheaper(n_x: int, n_y: int, subsets: int, m: int) -> bool:
    """Whether one full (n_x, n_y) kernel costs less than `subsets` (m, m) ones (and fits in CACHE_MAX_ELEMENTS):
    at most half their entries, since the full kernel's float64 passes and membership product cost more per entry
    (at 10,000 x 10,000 against 100 x 1,000^2 entries the subsets' kernels were 1.15x faster on a CPU)."""
    return n_x * n_y <= CACHE_MAX_ELEMENTS and 2 * n_x * n_y <= subsets * m * m


def _membership(n: int, subsets: list[Tensor], device: torch.device) -> Tensor:
    """(n, subsets) float64 0/1 matrix: W[a, s] = 1 where index a is in subset s."""
    w = torch.zeros(n, len(subsets), dtype=torch.float64, device=device)
    w[torch.stack(subsets, dim=1), torch.arange(len(subsets), device=device)] = 1
    return w


def kid_real_sums(
    real_features: Tensor, n_fake: int, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> Tensor:
    """(subsets,) real-real kernel sums of `kid`'s subsets for this real side against `n_fake` generated samples:
    they depend on the real features and the draws alone, so an evaluator keeps them and passes `real_sums`."""
    draws = _draw_subsets(real_features.shape[0], n_fake, subsets, subset_size, seed, real_features.device)
    return _within_sums(real_features, [r for _, r in draws])


def kid(
    real_features: Tensor,
    fake_features: Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    real_sums: Tensor | None = None,
) -> tuple[float, float]:
    """(mean, std) of KID between real (N_r, D) and fake (N_f, D) features; mean ~ 0 for equal distributions.

    Args:
        real_features, fake_features: finite features on one device, N_r and N_f >= subset_size.
        subsets: number of random subset pairs (>= 1).
        subset_size: samples per side in each subset (>= 2).
        seed: seed of the numpy RandomState that draws the subsets (torch-fidelity's `rng_seed`).
        real_sums: `kid_real_sums(real_features, N_f, subsets, subset_size, seed)`, kept from an earlier call with
            the same real side (then only the fake-fake and fake-real kernels are computed).
    """
    check_int("subsets", subsets, 1)
    check_int("subset_size", subset_size, 2)
    purpose = f"KID with subset_size={subset_size}"
    check_features("real_features", real_features, subset_size, purpose)
    check_features("fake_features", fake_features, subset_size, purpose)
    check_pair(real_features, fake_features)
    n_real, n_fake = real_features.shape[0], fake_features.shape[0]
    draws = _draw_subsets(n_real, n_fake, subsets, subset_size, seed, real_features.device)
    fake_idx, real_idx = [f for f, _ in draws], [r for _, r in draws]
    if real_sums is None:
        real_sums = _within_sums(real_features, real_idx)
    elif real_sums.shape != (subsets,):
        raise ValueError(f"real_sums has shape {tuple(real_sums.shape)}, expected ({subsets},): see kid_real_sums")
    m = subset_size
    within = _within_sums(fake_features, fake_idx) + real_sums.to(real_features.device)
    mmds = within / (m * (m - 1)) - 2 * _cross_sums(fake_features, real_features, fake_idx, real_idx) / (m * m)
    mean, std = torch.stack([mmds.mean(), mmds.std(correction=0)]).tolist()
    return mean, std
