"""The novelty axis: does a generative model make new samples, or return (near-)copies of its training set?

All three compare distances to the nearest *training* sample in feature space; a held-out split (real images the
model never saw) calibrates what "near" means.

- `copy_rate`: the fraction of generated samples at least as close to a training sample as the closest few
  percent of held-out images are. Real held-out images score `quantile` by construction, a copy of the
  training set 1. The training side may include translated copies of the training images, so that a training
  image shifted by a pixel is still a copy.
- `authenticity`: AuthPct of Alaa et al. 2022, "How Faithful is your Synthetic Data? Sample-level Metrics for
  Evaluating and Auditing Generative Models" (arXiv:2102.08921), as layer6ai-labs/dgm-eval `authpct.py` and
  marcojira/fld compute it, but as a fraction (dgm-eval returns percent, FLD percent - 50): a generated
  sample is authentic when its nearest training sample t has another training sample closer to t than the
  generated one is (strict `<`, so exact copies are never authentic).
- `data_copying`: the C_T statistic of Meehan et al. 2020, "A Non-Parametric Test to Detect Data-Copying in
  Generative Models" (arXiv:2004.05675), following casey-meehan/data-copying `data_copying_tests.py` (`Zu`,
  `Zu_cells`, `C_T`): k-means cells on the training features; in every cell the Mann-Whitney U of generated
  vs held-out distances to the cell's nearest training sample, z-scored under the null with the reference's
  continuity term; the mean of the z-scores over cells holding more than 20 generated samples, weighted by
  their share of held-out samples. Strongly negative: copying; about 0: fine; positive: under-fitting.
  Deviations: the k-means is genlab's seeded `kmeans` (the reference uses an unseeded sklearn KMeans), the
  features are not PCA-reduced (dgm-eval reduces to 64 dimensions above 64), and a cell with no held-out
  sample is left out instead of raising (the reference raises). Ties count 1/2 in U, as in scipy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.metrics._checks import TooFewSamplesError, check_features, check_int, check_pair
from genlab.metrics.knn import DEFAULT_CHUNK_SIZE, feature_mean, nearest


def nearest_training_distance(train_features: Tensor, features: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """(N,) distance of every (N, D) sample to its nearest (N_t, D) training sample, computed in float32 on
    centred features: a copy's distance of ~0 stays orders of magnitude below any real image's, and this is a
    threshold test, not a count matched to a reference, so float64's cost would buy nothing."""
    check_features("features", features)
    check_pair(train_features, features, "train_features", "features")
    centre = feature_mean(train_features)
    return nearest(features, train_features, 1, chunk_size, centre, torch.float32)[0][:, 0]


def copy_rate(
    train_features: Tensor,
    heldout_features: Tensor,
    fake_features: Tensor,
    quantile: float = 0.02,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threshold: float | None = None,
) -> float:
    """Fraction in [0, 1] of generated samples that are near-copies of a training sample.

    A generated sample is a copy when its distance to the nearest training sample is at most tau, the `quantile`
    of the same distance over the held-out samples. So: real held-out images score `quantile` (by
    construction), a lookup table of the training set scores 1. `train_features` may hold the features of
    translated copies of every training image too (genlab's evaluator adds those within `copy_shift` pixels),
    so that a training image shifted by a pixel is still a copy.

    Args:
        train_features: (N_t, D); heldout_features: (N_h, D); fake_features: (N_f, D), on one device.
        quantile: in (0, 1), the share of held-out images that count as copies (their closest few percent).
        threshold: `copy_threshold(train_features, heldout_features, quantile)`, when the caller keeps it.
    """
    tau = copy_threshold(train_features, heldout_features, quantile, chunk_size) if threshold is None else threshold
    fake = nearest_training_distance(train_features, fake_features, chunk_size)
    return float((fake <= tau).double().mean())


def copy_threshold(
    train_features: Tensor, heldout_features: Tensor, quantile: float = 0.02, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> float:
    """tau of `copy_rate`: the `quantile` of the held-out samples' distances to their nearest training sample."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    check_features("train_features", train_features)
    return float(nearest_training_distance(train_features, heldout_features, chunk_size).quantile(quantile))


def nearest_other_distance(features: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """(N,) float64 distance of every sample of (N, D) `features` to its nearest other sample (N >= 2)."""
    check_features("features", features, 2, "a nearest other sample")
    return nearest(features, features, 2, chunk_size, feature_mean(features))[0][:, 1]  # column 0: the sample


def authenticity(
    train_features: Tensor,
    fake_features: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    train_radius: Tensor | None = None,
) -> float:
    """AuthPct as a fraction in [0, 1]: the share of generated samples farther from their nearest training sample
    t than t is from its own nearest other training sample. About 0.5 or more for a model that generalises;
    0 for a copy of the training set. Needs N_t >= 2; (N_t, D) and (N_f, D) features on one device.
    `train_radius`: `nearest_other_distance(train_features)`, when the caller keeps it between evaluations."""
    check_features("train_features", train_features, 2, "authenticity (a training sample's nearest other one)")
    check_features("fake_features", fake_features)
    check_pair(train_features, fake_features, "train_features")
    if train_radius is None:
        train_radius = nearest_other_distance(train_features, chunk_size)
    distance, index = nearest(fake_features, train_features, 1, chunk_size, feature_mean(train_features))
    return float((train_radius[index[:, 0]] < distance[:, 0]).double().mean())


def kmeans(features: Tensor, k: int, iterations: int = 50, seed: int = 0) -> Tensor:
    """(k, D) float64 centroids of Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007),
    deterministic given `seed`. Needs N >= k samples."""
    check_int("k", k, 1)
    check_features("features", features, k, f"k-means with k={k}")
    x = features.double()
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(1, k):  # k-means++: the next centroid with probability proportional to D(x)^2
        d2 = torch.cdist(x, centroids).amin(dim=1).square()
        pick = torch.multinomial((d2 / d2.sum()).cpu(), 1, generator=g) if d2.sum() > 0 else torch.tensor([0])
        centroids = torch.cat([centroids, x[pick.to(x.device)]])
    for _ in range(iterations):
        cells = assign_cells(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, cells, x)
        counts = torch.bincount(cells, minlength=k).to(x.dtype)[:, None]
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cell keeps its centre
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def assign_cells(features: Tensor, centroids: Tensor) -> Tensor:
    """(N,) index of the nearest centroid of every sample."""
    return nearest(features.double(), centroids, 1)[1][:, 0]


def mann_whitney_z(fake_distances: Tensor, heldout_distances: Tensor) -> float:
    """The z-score of Mann-Whitney's U = #{(q, p): q > p} + #{ties} / 2 of (m,) generated against (n,) held-out
    distances, as casey-meehan/data-copying `Zu`: (U - (n m / 2 - 1/2)) / sqrt(n m (n + m + 1) / 12)."""
    m, n = len(fake_distances), len(heldout_distances)
    both = torch.cat([fake_distances, heldout_distances]).double()
    ranks = average_ranks(both)
    u = ranks[:m].sum() - m * (m + 1) / 2  # rank-sum form of U: counts q > p, ties 1/2
    mean = n * m / 2 - 0.5
    return float((u - mean) / math.sqrt(n * m * (n + m + 1) / 12))


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of (N,) values, tied values sharing the mean of their ranks (scipy's `rankdata`)."""
    order = values.argsort()
    sorted_values = values[order]
    first = torch.ones_like(sorted_values, dtype=torch.bool)
    first[1:] = sorted_values[1:] != sorted_values[:-1]
    group = first.cumsum(0) - 1  # tie group of each sorted value
    counts = torch.bincount(group)
    ends = counts.cumsum(0).double()  # the last 1-based rank of every group
    ranks = torch.empty_like(sorted_values)
    ranks[order] = (ends - (counts.double() - 1) / 2)[group]
    return ranks


def data_copying(
    train_features: Tensor,
    heldout_features: Tensor,
    fake_features: Tensor,
    cells: int = 10,
    min_fake_per_cell: int = 20,
    seed: int = 0,
    centroids: Tensor | None = None,
) -> float:
    """C_T of Meehan et al. 2020: << 0 copying, ~0 fine, > 0 under-fitting (see the module docstring).

    Args:
        train_features (N_t, D), heldout_features (N_h, D), fake_features (N_f, D): features on one device.
        cells: k-means cells fitted on the training features (N_t >= cells).
        min_fake_per_cell: a cell counts when it holds more than this many generated samples (the reference's
            tau = 20 / N_f).
        seed: seed of the k-means.
        centroids: `kmeans(train_features, cells, seed=seed)`, when the caller keeps it between evaluations.
    Raises `TooFewSamplesError` (a ValueError) when no cell holds enough generated samples and a held-out one.
    """
    check_features("heldout_features", heldout_features)
    check_features("fake_features", fake_features)
    check_pair(train_features, fake_features, "train_features")
    check_pair(train_features, heldout_features, "train_features", "heldout_features")
    if centroids is None:
        centroids = kmeans(train_features, cells, seed=seed)
    train_cell, held_cell, fake_cell = (
        assign_cells(f, centroids) for f in (train_features, heldout_features, fake_features)
    )
    z_scores, weights = [], []
    for c in range(cells):
        train_c, held_c, fake_c = (
            train_features[train_cell == c],
            heldout_features[held_cell == c],
            fake_features[fake_cell == c],
        )
        if len(fake_c) <= min_fake_per_cell or len(held_c) == 0 or len(train_c) == 0:
            continue
        centre = feature_mean(train_c)
        fake_d = nearest(fake_c, train_c, 1, centre=centre)[0][:, 0]
        held_d = nearest(held_c, train_c, 1, centre=centre)[0][:, 0]
        z_scores.append(mann_whitney_z(fake_d, held_d))
        weights.append(len(held_c) / len(heldout_features))
    if not z_scores:
        raise TooFewSamplesError(
            f"no k-means cell (of {cells}) holds more than {min_fake_per_cell} of the {len(fake_features)} generated "
            "samples and a held-out sample: raise the number of samples or lower the number of cells"
        )
    z, w = torch.tensor(z_scores, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)
    return float((w * z).sum() / w.sum())
