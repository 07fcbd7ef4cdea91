"""k-nearest-neighbour manifold metrics: improved precision & recall, density & coverage.

- `precision_recall` follows Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing
  Generative Models" (arXiv:1904.06991), as implemented in torch-fidelity `metric_prc.py`.
- `density_coverage` follows Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models"
  (arXiv:2002.09797), as implemented in clovaai/generative-evaluation-prdc (`prdc.compute_prdc`).

Conventions, matched to those references:
- The radius of a sample is the distance to its k-th nearest neighbour in its own set, not counting itself. Both
  references take the (k + 1)-th smallest distance including the zero self-distance; so does this module (an exact
  duplicate of a sample therefore counts as a neighbour at distance 0, as in the references).
- precision = fraction of fake samples inside at least one real ball; recall = fraction of real samples inside at
  least one fake ball. "Inside" is `distance <= radius` (torch-fidelity's `<=`).
- density = (1 / k) * mean over fake samples of the number of real balls containing it (can exceed 1);
  coverage = fraction of real samples whose ball contains at least one fake sample. "Inside" is a strict
  `distance < radius` here, as in prdc.

Distances are computed block by block (at most chunk_size x chunk_size at a time, never a full N x N matrix) on the
features' device as sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)) in float64, after subtracting the real features' mean
from both sides (distances do not change, but the expansion cancels catastrophically when the features share a
large offset: at 1e4 with a spread of 1e-2 it miscounts density). The references compute in float32
(torch.cdist; sklearn's float32 output), so they can differ from this module only where two distances agree to
float32 precision (~1e-7 relative); float64 keeps those comparisons exact to ~1e-12, and on continuous features the
hit counts equal the references' exactly (see tests/test_metrics.py). Fractions are returned as float64 Python
floats (torch-fidelity returns float32-rounded ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int, check_pair

DEFAULT_CHUNK_SIZE = 4096  # 4096 x 4096 float64 distances = 128 MiB per block


def feature_mean(features: Tensor) -> Tensor:
    """(D,) float64 centre that `distance_blocks` subtracts: the mean of (N, D) features rounded to a multiple of a
    power of two 2^e <= their spread. It removes any common offset down to one spread, and centred copies of
    small-integer (or other coarse) features stay exactly representable, so exact ties stay exact ties."""
    x = features.double()
    spread = float(x.std(dim=0, correction=0).mean()) if len(x) > 1 else 0.0
    step = 2.0 ** math.floor(math.log2(spread)) if spread > 0 else 1.0
    return torch.round(x.mean(dim=0) / step) * step


def distance_blocks(
    rows: Tensor, cols: Tensor, chunk_size: int, centre: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Iterator[tuple[slice, slice, Tensor]]:
    """Yield (row slice, col slice, Euclidean distances of shape (len rows, len cols)) block by block.

    Both sides are centred on `centre` (D,) (default: the mean of `rows`) before the |a|^2 + |b|^2 - 2 a.b expansion,
    which runs in `dtype`: float64 (exact decisions, as the metrics matched to a reference need) or float32.
    """
    centre = feature_mean(rows) if centre is None else centre.to(device=rows.device, dtype=torch.float64)
    for r0 in range(0, rows.shape[0], chunk_size):
        a = (rows[r0 : r0 + chunk_size].double() - centre).to(dtype)
        a_sq = a.square().sum(dim=1, keepdim=True)
        for c0 in range(0, cols.shape[0], chunk_size):
            b = (cols[c0 : c0 + chunk_size].double() - centre).to(dtype)
            squared = torch.addmm(a_sq + b.square().sum(dim=1), a, b.T, alpha=-2)
            yield slice(r0, r0 + a.shape[0]), slice(c0, c0 + b.shape[0]), squared.clamp_(min=0).sqrt_()


def nearest(
    query: Tensor,
    reference: Tensor,
    k: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    centre: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """(distances (N_q, k) float64 ascending, indices (N_q, k) into `reference`) of each query row's k nearest
    reference rows, block by block (never an N_q x N_r matrix). Centred on `centre` (default: the reference mean);
    distances computed in `dtype` (see `distance_blocks`)."""
    centre = feature_mean(reference) if centre is None else centre
    k = min(k, reference.shape[0])
    values = torch.empty(query.shape[0], k, dtype=torch.float64, device=query.device)
    indices = torch.empty(query.shape[0], k, dtype=torch.int64, device=query.device)
    best_v, best_i = torch.empty(0), torch.empty(0)
    for rows, cols, dist in distance_blocks(query, reference, chunk_size, centre, dtype):
        col_index = torch.arange(cols.start, cols.stop, device=query.device).expand_as(dist)
        cand_v = dist if cols.start == 0 else torch.cat([best_v, dist], dim=1)
        cand_i = col_index if cols.start == 0 else torch.cat([best_i, col_index], dim=1)
        best_v, pick = cand_v.topk(min(k, cand_v.shape[1]), dim=1, largest=False)
        best_i = cand_i.gather(1, pick)
        if cols.stop == reference.shape[0]:
            values[rows], indices[rows] = best_v, best_i
    return values, indices


def knn_radii(features: Tensor, k: int, chunk_size: int = DEFAULT_CHUNK_SIZE, centre: Tensor | None = None) -> Tensor:
    """(N,) float64 distance of each sample to its k-th nearest other sample in `features` (N, D), N >= k + 1."""
    return nearest(features, features, k + 1, chunk_size, centre)[0][:, k]  # column 0 is the sample itself (~0)


def _check_knn(real: Tensor, fake: Tensor, k: int, chunk_size: int, fake_needs_radii: bool) -> None:
    check_int("k", k, 1)
    check_int("chunk_size", chunk_size, 1)
    purpose = f"a k={k} nearest-neighbour radius (k + 1 samples, counting the sample itself)"
    check_features("real_features", real, k + 1, purpose)
    check_features("fake_features", fake, k + 1 if fake_needs_radii else 1, purpose)
    check_pair(real, fake)


def precision_recall(
    real_features: Tensor, fake_features: Tensor, k: int = 3, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[float, float]:
    """Improved (precision, recall), both in [0, 1], of fake (N_f, D) against real (N_r, D) features.

    precision: fraction of fake samples within the k-NN radius of some real sample (fidelity);
    recall: fraction of real samples within the k-NN radius of some fake sample (diversity).
    Needs N_r, N_f >= k + 1; the result does not depend on `chunk_size` (block edge, >= 1).
    """
    _check_knn(real_features, fake_features, k, chunk_size, fake_needs_radii=True)
    centre = feature_mean(real_features)
    real_radii = knn_radii(real_features, k, chunk_size, centre)
    fake_radii = knn_radii(fake_features, k, chunk_size, centre)
    fake_in_real = torch.zeros(fake_features.shape[0], dtype=torch.bool, device=fake_features.device)
    real_in_fake = torch.zeros(real_features.shape[0], dtype=torch.bool, device=real_features.device)
    for rows, cols, dist in distance_blocks(real_features, fake_features, chunk_size, centre):  # (real, fake)
        fake_in_real[cols] |= (dist <= real_radii[rows, None]).any(dim=0)
        real_in_fake[rows] |= (dist <= fake_radii[None, cols]).any(dim=1)
    precision, recall = torch.stack([fake_in_real.double().mean(), real_in_fake.double().mean()]).tolist()
    return precision, recall


def density_coverage(
    real_features: Tensor, fake_features: Tensor, k: int = 5, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[float, float]:
    """(density, coverage) of fake (N_f, D) against real (N_r, D) features; density in [0, N_r / k], coverage in [0, 1].

    density: mean number of real k-NN balls containing a fake sample, divided by k (~1 for matching distributions);
    coverage: fraction of real samples whose k-NN ball contains a fake sample. Needs N_r >= k + 1, N_f >= 1;
    the result does not depend on `chunk_size` (block edge, >= 1).
    """
    _check_knn(real_features, fake_features, k, chunk_size, fake_needs_radii=False)
    centre = feature_mean(real_features)
    real_radii = knn_radii(real_features, k, chunk_size, centre)
    counts = torch.zeros(fake_features.shape[0], dtype=torch.int64, device=fake_features.device)
    nearest_fake = torch.full_like(real_radii, torch.inf)
    for rows, cols, dist in distance_blocks(real_features, fake_features, chunk_size, centre):  # (real, fake)
        counts[cols] += (dist < real_radii[rows, None]).sum(dim=0)
        nearest_fake[rows] = torch.minimum(nearest_fake[rows], dist.amin(dim=1))
    density = counts.sum().double() / (k * fake_features.shape[0])
    coverage = (nearest_fake < real_radii).double().mean()
    density, coverage = torch.stack([density, coverage]).tolist()
    return density, coverage
