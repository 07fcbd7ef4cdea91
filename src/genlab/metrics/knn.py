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

Exact decisions at float32 speed. Each decision "is this squared distance below (or at) that squared radius" equals
the decision on `exact_squared_distances` (float64 differences, within ~1e-15 of the distance itself), and so do the
radii. The references compute in float32 or in float64 matmul form: on features where their own rounding decides
nothing (ties closer than ~1e-7 for float32, ~1e-13 for float64) the hit counts equal theirs exactly (see
tests/test_metrics.py and tests/test_knn.py). Block by block (at most chunk_size x chunk_size distances at a time,
never N x N), on the features' device, centred on the real features' `feature_mean`:

1. `bounded_blocks` in float32, with its proven `error_bound` e: a pair farther than e from the radius it is compared
   against is decided here (on random 2048-d features all but ~1e-4 of the pairs);
2. a block leaving more than 1 / ESCALATE_FRACTION of its pairs undecided (tight clusters far from the centre,
   near-copies) is recomputed in float64, with float64's bound;
3. the pairs still undecided get `exact_squared_distances`.

The radii come from the same arithmetic: each row keeps its k + 1 + KEEP_EXTRA smallest float32 values (from the
blocks on and above the diagonal: the distances within a set are symmetric), takes the exact distances of those that
can be its (k + 1)-th, and is settled once no neighbour left out can be closer; the few rows left try float64, then
float64 centred on a member of their own tight cluster (near-copies), then every neighbour. `dtype=torch.float64`
starts in float64 (every distance in float64, as the former all-float64 path did), for comparison: the results are
the same. Fractions are float64 Python floats.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int, check_pair
from genlab.metrics.exact_distances import (
    Centred,
    bounded_blocks,
    error_bound,
    exact_squared_distances,
    ieee_float32,
    round_outward,
)

DEFAULT_CHUNK_SIZE = 4096  # 4096 x 4096 float32 distances = 64 MiB per block
KEEP_EXTRA = 8  # candidates beyond the k + 1 nearest that each row keeps for its exact radius
ESCALATE_FRACTION = 128  # a block with more than 1/128 of its pairs undecided in float32 is redone in float64
DTYPES = (torch.float32, torch.float64)


def feature_mean(features: Tensor) -> Tensor:
    """(D,) float64 centre that `distance_blocks` and `bounded_blocks` subtract: the mean of (N, D) features rounded
    to a multiple of a power of two 2^e <= their spread. It removes any common offset down to one spread, and centred
    copies of small-integer (or other coarse) features stay exactly representable, so exact ties stay exact ties."""
    x = features.double()
    spread = float(x.std(dim=0, correction=0).mean()) if len(x) > 1 else 0.0
    step = 2.0 ** math.floor(math.log2(spread)) if spread > 0 else 1.0
    return torch.round(x.mean(dim=0) / step) * step


def distance_blocks(
    rows: Tensor,
    cols: Tensor,
    chunk_size: int,
    centre: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    squared: bool = False,
) -> Iterator[tuple[slice, slice, Tensor]]:
    """Yield (row slice, col slice, Euclidean distances of shape (len rows, len cols)) block by block (`squared`:
    their squares, clamped at 0, which order the same and cost no square root of every entry).

    Both sides are centred on `centre` (D,) (default: the mean of `rows`) before the |a|^2 + |b|^2 - 2 a.b expansion,
    which runs in `dtype`, without a bound or a recheck (`nearest`; the metrics below use `bounded_blocks`).
    """
    centre = feature_mean(rows) if centre is None else centre.to(device=rows.device, dtype=torch.float64)
    for r0 in range(0, rows.shape[0], chunk_size):
        a = (rows[r0 : r0 + chunk_size].double() - centre).to(dtype)
        a_sq = a.square().sum(dim=1, keepdim=True)
        for c0 in range(0, cols.shape[0], chunk_size):
            b = (cols[c0 : c0 + chunk_size].double() - centre).to(dtype)
            block = torch.addmm(a_sq + b.square().sum(dim=1), a, b.T, alpha=-2).clamp_(min=0)
            yield slice(r0, r0 + a.shape[0]), slice(c0, c0 + b.shape[0]), block if squared else block.sqrt_()


def _smallest(
    blocks: Iterator[tuple[slice, slice, Tensor]], k: int, n_cols: int
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(row slice, values (R, k) ascending, column indices (R, k)) of each row block's k <= n_cols smallest entries,
    from blocks in `distance_blocks` order over `n_cols` columns (a row block's columns in order)."""
    best_v, best_i = torch.empty(0), torch.empty(0)
    for rows, cols, block in blocks:
        values, index = _k_smallest(block, k)  # the block's own k first: no (R, C) index matrix
        index = index + cols.start
        if cols.start > 0:
            values, pick = _k_smallest(torch.cat([best_v, values], dim=1), k)
            index = torch.cat([best_i, index], dim=1).gather(1, pick)
        best_v, best_i = values, index
        if cols.stop == n_cols:
            yield rows, best_v, best_i


def _k_smallest(block: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values (R, k') ascending, their columns (R, k')) of each row's k' = min(k, C) smallest entries."""
    if k == 1:  # a min is several times cheaper than a topk
        return block.min(dim=1, keepdim=True)
    return block.topk(min(k, block.shape[1]), dim=1, largest=False)


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
    blocks = distance_blocks(query, reference, chunk_size, centre, dtype, squared=True)
    for rows, best_v, best_i in _smallest(blocks, k, reference.shape[0]):
        values[rows], indices[rows] = best_v.sqrt(), best_i
    return values, indices


# ------------------------------------------------------------------------------------------ exact decisions
def _levels(dtype: torch.dtype, max_sq: float) -> tuple[torch.dtype, ...]:
    """The matmul precisions to try in turn: float32 then float64; float64 alone when asked or when float32 could
    overflow (a squared centred norm >= 2^100)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in DTYPES]}, got {dtype!r}")
    return (torch.float32, torch.float64) if dtype == torch.float32 and max_sq < 2.0**100 else (torch.float64,)


def _smallest_within(x: Centred, k: int, chunk_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(values (N, k) ascending, column indices (N, k)) of each row's k <= N smallest `bounded_blocks` values against
    every row of the (N, D) `x`, itself included, from the blocks on and above the diagonal only: distances and their
    bound are symmetric, so each block off the diagonal serves its rows and, transposed, its columns."""
    values = torch.full((len(x.sq), k), torch.inf, dtype=dtype, device=x.sq.device)
    index = torch.zeros((len(x.sq), k), dtype=torch.int64, device=x.sq.device)

    def merge(rows: slice, cols: slice, block: Tensor) -> None:  # the block's k smallest first: no (R, C) indices
        block_best, block_pick = block.topk(min(k, block.shape[1]), dim=1, largest=False)
        best, pick = torch.cat([values[rows], block_best], dim=1).topk(k, dim=1, largest=False)
        values[rows], index[rows] = best, torch.cat([index[rows], block_pick + cols.start], dim=1).gather(1, pick)

    for rows, cols, block in bounded_blocks(x, x, chunk_size, dtype, upper=True):
        merge(rows, cols, block)
        if cols != rows:
            merge(cols, rows, block.T)
    return values, index


def _settle_radii(x: Centred, rows: Tensor, values: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(exact squared k-NN radii (R,), settled (R,) bool) of `rows` (R,) of the (N, D) `x`, given their
    `keep` smallest `bounded_blocks` values (R, keep) (float32 or float64) at columns `index` (R, keep): settled when
    these provably hold the (k + 1)-th smallest exact distance v (the row itself included).

    Each value is within e = m (|a|^2 + |b|^2) + floor of exact, so v lies between the (k + 1)-th smallest lower
    and upper bounds of the kept values; a kept value whose upper bound is below that range only counts, one whose
    lower bound is above it drops out, the rest get exact distances. A neighbour left out, at a value >= the keep-th
    c, is exactly >= (c - 3.01 m |a|^2 - floor) / (1 + 2.01 m) (as |b|^2 <= 2.01 (its distance + |a|^2)), so the row
    is settled when v is at most that."""
    m, floor = error_bound(values.dtype, x.features.shape[1])
    values, sq = values.double(), x.sq[rows, None]
    e = m * (sq + x.sq[index]) + floor  # (R, keep): per pair
    beyond = ((values[:, -1:] - 3.01 * m * sq - floor) / (1 + 2.01 * m)).clamp(min=0)  # (R, 1)
    hi = (values + e).kthvalue(k + 1, dim=1, keepdim=True).values
    lo = torch.minimum((values - e).kthvalue(k + 1, dim=1, keepdim=True).values, beyond)
    exact = torch.full_like(values, torch.inf).masked_fill_(values + e < lo, -torch.inf)
    i, j = ((values - e <= hi) & (values + e >= lo)).nonzero(as_tuple=True)
    exact[i, j] = exact_squared_distances(x.features, x.features, rows[i], index[i, j])
    radius = exact.kthvalue(k + 1, dim=1).values
    settled = radius <= beyond[:, 0] if values.shape[1] < len(x.sq) else torch.ones_like(radius, dtype=torch.bool)
    return radius, settled


def _settle_rows(
    x: Centred, rows: Tensor, k: int, keep: int, dtype: torch.dtype, chunk_size: int, out: Tensor
) -> tuple[Tensor, Tensor]:
    """`_settle_radii` of `rows` against every row of `x` in `dtype`, into `out`: (rows left, their kept columns)."""
    left, kept = [rows[:0]], [rows[:0, None].expand(0, keep)]
    for part in rows.split(max(1, chunk_size * chunk_size // keep)) if len(rows) else ():  # (rows, keep) <= a block
        blocks = list(_smallest(bounded_blocks(x.part(part), x, chunk_size, dtype), keep, len(x.sq)))
        values, index = torch.cat([v for _, v, _ in blocks]), torch.cat([i for _, _, i in blocks])
        radius, settled = _settle_radii(x, part, values, index, k)
        out[part[settled]] = radius[settled]
        left.append(part[~settled])
        kept.append(index[~settled])
    return torch.cat(left), torch.cat(kept)


def _local_groups(rows: Tensor, kept: Tensor, n: int) -> Iterator[tuple[int, Tensor]]:
    """(representative, its rows) for `rows` (R,) whose kept neighbours `kept` (R, keep) chain them together: the
    rows of one tight cluster share the smallest row index reachable that way (label propagation)."""
    label = torch.arange(n, device=rows.device)
    for _ in range(64):
        reach = torch.minimum(label[rows], label[kept].amin(dim=1))
        if torch.equal(reach, label[rows]):
            break
        label[rows] = reach
    for representative in label[rows].unique().tolist():
        yield representative, rows[label[rows] == representative]


def _exact_radii(x: Centred, ks: tuple[int, ...], chunk_size: int, levels: tuple[torch.dtype, ...]) -> list[Tensor]:
    """Per k of `ks`, the (N,) float64 exact squared distance of each row of the (N, D) `x` to its k-th nearest other
    row, from one pass over the symmetric blocks.

    Stages, each for the rows the previous one left: the max(ks) + 1 + KEEP_EXTRA smallest values of every row in
    levels[0] (the symmetric blocks computed once, for every k), then in the next level; then in float64 centred on a
    member of the row's tight cluster (near-copies the global centre cannot tell apart); then every neighbour so."""
    keep = min(max(ks) + 1 + KEEP_EXTRA, len(x.sq))
    values, index = _smallest_within(x, keep, chunk_size, levels[0])
    return [_settle_all(x, k, values, index, chunk_size, levels) for k in ks]


def _settle_all(
    x: Centred, k: int, values: Tensor, index: Tensor, chunk_size: int, levels: tuple[torch.dtype, ...]
) -> Tensor:
    """`_exact_radii` for one k from every row's kept smallest levels[0] values (N, keep) at columns `index`."""
    n, keep = len(x.sq), values.shape[1]
    out = torch.empty(n, dtype=torch.float64, device=x.sq.device)
    radius, settled = _settle_radii(x, torch.arange(n, device=x.sq.device), values, index, k)
    out[settled] = radius[settled]
    left, kept = torch.nonzero(~settled)[:, 0], index[~settled]
    for dtype in levels[1:]:
        left, kept = _settle_rows(x, left, k, keep, dtype, chunk_size, out)
    for width in (keep, n):
        rest = [(left[:0], kept[:0, :1].expand(0, width))]
        for representative, rows in _local_groups(left, kept, n):
            local = Centred.of(x.features, x.features[representative], chunk_size, lowered=False)
            rest.append(_settle_rows(local, rows, k, width, torch.float64, chunk_size, out))
        left, kept = torch.cat([r for r, _ in rest]), torch.cat([i for _, i in rest])
    return out


@dataclass(frozen=True)
class _Balls:
    """k-NN balls centred on the rows (real side) or the columns (fake side) of the (real, fake) blocks."""

    radii: Tensor  # (N,) float64 exact squared radii
    sq: Tensor  # (N,) float64 squared centred norms of the centres
    max_sq: float  # the largest squared centred norm on either side
    on_rows: bool
    strict: bool  # prdc's `distance < radius`; else torch-fidelity's `<=`

    def classify(self, squared: Tensor, rows: slice, cols: slice, dim: int) -> tuple[Tensor, Tensor]:
        """(inside, unsure), bool like the (rows, cols) block `squared` (float32 or float64) of D = `dim` features:
        certainly inside the ball (for `<` and `<=` alike), and too near its radius for the block's precision."""
        m, floor = error_bound(squared.dtype, dim)
        part = rows if self.on_rows else cols
        e = m * (self.sq[part] + self.max_sq) + floor
        lo, hi = round_outward(self.radii[part] - e, self.radii[part] + e, squared.dtype)
        lo, hi = (lo[:, None], hi[:, None]) if self.on_rows else (lo[None], hi[None])
        inside = squared < lo
        return inside, ~inside & (squared <= hi)

    def decide(self, exact: Tensor, i: Tensor, j: Tensor, rows: slice, cols: slice) -> Tensor:
        """(P,) bool: the pairs (i, j) of the (rows, cols) block, exact squared distances (P,), inside the ball."""
        radius = self.radii[rows][i] if self.on_rows else self.radii[cols][j]
        return exact < radius if self.strict else exact <= radius


@dataclass(frozen=True)
class _Setup:
    """What the stages of one metric share: both sides centred on the real features' `feature_mean`, the matmul
    precisions to try (`_levels`) and the block edge."""

    real: Centred
    fake: Centred
    levels: tuple[torch.dtype, ...]
    chunk_size: int

    @staticmethod
    def of(real_features: Tensor, fake_features: Tensor, chunk_size: int, dtype: torch.dtype) -> _Setup:
        centre = feature_mean(real_features)
        real, fake = (Centred.of(x, centre, chunk_size) for x in (real_features, fake_features))
        return _Setup(real, fake, _levels(dtype, float(torch.cat([real.sq, fake.sq]).max())), chunk_size)

    def balls(self, side: Centred, k: int, on_rows: bool, strict: bool, radii: Tensor | None = None) -> _Balls:
        """The k-NN balls of one side, as the rows or the columns of the (real, fake) blocks; `radii`: their exact
        squared radii, when known."""
        if radii is None:
            [radii] = _exact_radii(side, (k,), self.chunk_size, self.levels)
        elif radii.shape != side.sq.shape:
            raise ValueError(f"radii have shape {tuple(radii.shape)}, expected ({len(side.sq)},): see knn_radii")
        radii = radii.to(device=side.sq.device, dtype=torch.float64)
        return _Balls(radii, side.sq, float(torch.cat([self.real.sq, self.fake.sq]).max()), on_rows, strict)

    def _classify(self, balls: list[_Balls], squared: Tensor, rows: slice, cols: slice) -> tuple[list, Tensor]:
        tests = [ball.classify(squared, rows, cols, self.real.features.shape[1]) for ball in balls]
        return tests, functools.reduce(torch.logical_or, [unsure for _, unsure in tests])

    def inside_blocks(self, balls: list[_Balls]) -> Iterator[tuple[slice, slice, list[Tensor]]]:
        """Yield (real rows, fake cols, per ball set the exact (rows, cols) bool matrix "the pair lies in the ball")
        block by block: stage 1 in the first level, stage 2 if too many pairs are undecided, stage 3 for the rest."""
        for rows, cols, squared in bounded_blocks(self.real, self.fake, self.chunk_size, self.levels[0]):
            tests, unsure = self._classify(balls, squared, rows, cols)
            if len(self.levels) > 1 and int(unsure.sum()) * ESCALATE_FRACTION > unsure.numel():
                real, fake = self.real.part(rows), self.fake.part(cols)
                [(_, _, squared)] = bounded_blocks(real, fake, self.chunk_size, self.levels[1])
                tests, unsure = self._classify(balls, squared, rows, cols)
            i, j = unsure.nonzero(as_tuple=True)
            exact = exact_squared_distances(self.real.features[rows], self.fake.features[cols], i, j)
            for (inside, maybe), ball in zip(tests, balls, strict=True):
                pick = maybe[i, j]
                inside[i[pick], j[pick]] = ball.decide(exact[pick], i[pick], j[pick], rows, cols)
            yield rows, cols, [inside for inside, _ in tests]


@ieee_float32()
def knn_radii(
    features: Tensor,
    k: int | tuple[int, ...],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    centre: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    squared: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """(N,) float64 distance of each sample to its k-th nearest other sample in `features` (N, D), N >= k + 1: the
    square root of its `exact_squared_distances` (`squared`: that exact value itself, which `knn_metrics` and the
    functions on it take as real radii); `centre` (default: `feature_mean`) and `dtype` (as in `precision_recall`)
    change only the speed. A tuple of k gives a tuple of radii, all from one pass over the distances."""
    ks = k if isinstance(k, tuple) else (k,)
    for one in ks:
        check_int("k", one, 1)
    x = Centred.of(features, feature_mean(features) if centre is None else centre, chunk_size)
    radii = [r if squared else r.sqrt() for r in _exact_radii(x, ks, chunk_size, _levels(dtype, float(x.sq.max())))]
    return tuple(radii) if isinstance(k, tuple) else radii[0]


def _check_knn(real: Tensor, fake: Tensor, k: int, chunk_size: int, fake_needs_radii: bool) -> None:
    check_int("k", k, 1)
    check_int("chunk_size", chunk_size, 1)
    purpose = f"a k={k} nearest-neighbour radius (k + 1 samples, counting the sample itself)"
    check_features("real_features", real, k + 1, purpose)
    check_features("fake_features", fake, k + 1 if fake_needs_radii else 1, purpose)
    check_pair(real, fake)


@ieee_float32()
def knn_metrics(
    real_features: Tensor,
    fake_features: Tensor,
    pr_k: int | None = 3,
    dc_k: int | None = 5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
    real_radii: dict[int, Tensor] | None = None,
) -> dict[str, float]:
    """{'precision', 'recall'} (with `pr_k`) and {'density', 'coverage'} (with `dc_k`) of fake (N_f, D) against
    real (N_r, D) features, from one pass over the real-fake distances and one over the real-real ones (the radii
    for both k); `None` leaves a pair out. `real_radii`: {k: `knn_radii(real_features, k, squared=True)`} for the
    k asked for, kept from an earlier call with the same real side. `precision_recall` and `density_coverage`
    say what each pair means."""
    if pr_k is None and dc_k is None:
        raise ValueError("knn_metrics needs pr_k or dc_k (or both); got neither")
    ks = tuple(dict.fromkeys(k for k in (pr_k, dc_k) if k is not None))
    for k in ks:
        _check_knn(real_features, fake_features, k, chunk_size, fake_needs_radii=k == pr_k)
    setup = _Setup.of(real_features, fake_features, chunk_size, dtype)
    if real_radii is None:
        real_radii = dict(zip(ks, _exact_radii(setup.real, ks, chunk_size, setup.levels), strict=True))
    missing = [k for k in ks if k not in real_radii]
    if missing:
        raise ValueError(f"real_radii has radii for k={sorted(real_radii)}, not for k={missing}: see knn_radii")
    balls = []
    if pr_k is not None:
        real_balls = setup.balls(setup.real, pr_k, on_rows=True, strict=False, radii=real_radii[pr_k])
        balls += [real_balls, setup.balls(setup.fake, pr_k, on_rows=False, strict=False)]
    if dc_k is not None:
        balls.append(setup.balls(setup.real, dc_k, on_rows=True, strict=True, radii=real_radii[dc_k]))
    n_real, n_fake, device = real_features.shape[0], fake_features.shape[0], real_features.device
    fake_in_real = torch.zeros(n_fake, dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(n_real, dtype=torch.bool, device=device)
    counts = torch.zeros(n_fake, dtype=torch.int64, device=device)
    covered = torch.zeros(n_real, dtype=torch.bool, device=device)
    for rows, cols, insides in setup.inside_blocks(balls):
        if pr_k is not None:
            in_real, in_fake, *insides = insides
            fake_in_real[cols] |= in_real.any(dim=0)
            real_in_fake[rows] |= in_fake.any(dim=1)
        if dc_k is not None:
            [inside] = insides
            counts[cols] += inside.sum(dim=0)
            covered[rows] |= inside.any(dim=1)  # min over fakes < radius, as prdc
    out = {}
    if pr_k is not None:
        out["precision"], out["recall"] = torch.stack([fake_in_real.double().mean(), real_in_fake.double().mean()])
    if dc_k is not None:
        density = counts.sum().double() / (dc_k * n_fake)
        out["density"], out["coverage"] = torch.stack([density, covered.double().mean()])
    return dict(zip(out, torch.stack(list(out.values())).tolist(), strict=True))


def precision_recall(
    real_features: Tensor,
    fake_features: Tensor,
    k: int = 3,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
    real_radii: Tensor | None = None,
) -> tuple[float, float]:
    """Improved (precision, recall), both in [0, 1], of fake (N_f, D) against real (N_r, D) features.

    precision: fraction of fake samples within the k-NN radius of some real sample (fidelity);
    recall: fraction of real samples within the k-NN radius of some fake sample (diversity).
    Needs N_r, N_f >= k + 1. `dtype`: the matmul precision of the first pass, torch.float32 (fast) or torch.float64
    (every distance in float64, the former path); every decision is exact either way, so the result depends on
    neither it nor `chunk_size` (block edge, >= 1). `real_radii`: `knn_radii(real_features, k, squared=True)`,
    kept from an earlier call with the same real side.
    """
    radii = None if real_radii is None else {k: real_radii}
    out = knn_metrics(real_features, fake_features, k, None, chunk_size, dtype, radii)
    return out["precision"], out["recall"]


def density_coverage(
    real_features: Tensor,
    fake_features: Tensor,
    k: int = 5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
    real_radii: Tensor | None = None,
) -> tuple[float, float]:
    """(density, coverage) of fake (N_f, D) against real (N_r, D) features; density in [0, N_r / k], coverage in [0, 1].

    density: mean number of real k-NN balls containing a fake sample, divided by k (~1 for matching distributions);
    coverage: fraction of real samples whose k-NN ball contains a fake sample. Needs N_r >= k + 1, N_f >= 1;
    `dtype` as in `precision_recall`: the result depends on neither it nor `chunk_size` (block edge, >= 1).
    `real_radii` as in `precision_recall`.
    """
    radii = None if real_radii is None else {k: real_radii}
    out = knn_metrics(real_features, fake_features, None, k, chunk_size, dtype, radii)
    return out["density"], out["coverage"]
