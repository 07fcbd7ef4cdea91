"""Squared Euclidean distances fast with a proven error bound, and exact where the bound leaves a decision open.

`bounded_blocks` computes |a|^2 + |b|^2 - 2 a.b block by block in float32 (or float64) and `error_bound` says how far
each value can be from the exact squared distance: a comparison with a threshold farther than that is decided, the
rest go to `exact_squared_distances` (float64 differences, summed in a fixed order). `genlab.metrics.knn` builds its
exact k-NN radii and ball memberships from these; the bound follows Higham, "Accuracy and Stability of Numerical
Algorithms" (2nd ed., 2002), Lemma 3.1 and (3.5).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

D_BLOCK = 256  # a.b is summed in pieces of this length, each its own matmul: the bound grows with 256 + D/256, not D
PAIR_BATCH = 2**17  # float64 elements per batch of exact distances (1 MiB: stays in a CPU's cache; 64x on a GPU)
CPU_BLOCK = 1024  # block edge on a CPU, where a block's partial a.b sums must stay in cache (a GPU takes chunk_size)


def error_bound(dtype: torch.dtype, dim: int) -> tuple[float, float]:
    """(m, floor): a `bounded_blocks` value in `dtype` for centred (D,) rows a, b is within
    m * (|a|^2 + |b|^2) + floor of the exact |a - b|^2, for D = `dim`, whatever order or FMA use the matmul
    (BLAS, cuBLAS) picks, provided it runs in IEEE `dtype` (`ieee_float32`) and nothing overflows (|a|^2 < 2^100)."""
    # u = unit roundoff of `dtype` (2^-24 for float32), v = 2^-53 (float64's), gamma_n(u) = n u / (1 - n u): a
    # length-n dot product summed in any order is within gamma_n sum_i |x_i y_i| <= gamma_n |x||y| of exact (Higham,
    # Lemma 3.1, (3.5)). Q = |a|^2 + |b|^2 >= 2 |a||b|; a', b' = the rows rounded to `dtype` (|a'_i - a_i| <= u |a_i|).
    # 1. |a|^2, |b|^2 are float64 sums (within gamma_D(v) of exact), rounded to `dtype` and added: (2.1u + D v) Q.
    # 2. a'.b' = a.b within (2u + u^2)|a||b|; 2 a'.b' is summed as nb = ceil(D / D_BLOCK) matmuls of length
    #    b = min(D, D_BLOCK), each in any order, then added: within (gamma_b + gamma_nb)(1 + 3u) Q of 2 a'.b'.
    # 3. The final subtraction rounds once a value <= 2Q: 2u Q.
    # Total (b + nb + 6.1) u Q + D v Q to first order; m = (b + nb + 16) u + (2D + 16) v, over 1 - itself. The rest,
    # > 9u Q + (D + 16) v Q, covers the float64 roundings of the callers' thresholds (radius +- e: < 6v of Q) and the
    # error of `exact_squared_distances`, whose values every decision is made against: (log2 D + 2) v of the squared
    # distance, itself <= 2Q.
    # 4. Below the smallest normal number a rounding is absolute, <= t = half the smallest subnormal: fewer than
    #    2D + 8 such (inputs, products, sums), each moving the value by <= 2t: floor = 4 (D + 4) t.
    info = torch.finfo(dtype)
    u, v = info.eps / 2, 2.0**-53
    m = (min(dim, D_BLOCK) + math.ceil(dim / D_BLOCK) + 16) * u + (2 * dim + 16) * v
    if m >= 0.5:
        raise ValueError(f"feature dimension D={dim} is too large for {dtype} distances with a useful error bound")
    return m / (1 - m), 4 * (dim + 4) * info.smallest_normal * u


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matmuls in full IEEE float32 inside (no TF32 or bfloat16, on CUDA or oneDNN, no autocast), as
    `error_bound` assumes; the previous settings come back afterwards, even on error. Also a decorator."""
    backends = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    saved = [backend.fp32_precision for backend in backends]
    try:
        for backend in backends:
            backend.fp32_precision = "ieee"
        with contextlib.ExitStack() as stack:
            for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device, enabled=False))
            yield
    finally:
        for backend, precision in zip(backends, saved, strict=True):
            backend.fp32_precision = precision


@dataclass(frozen=True)
class Centred:
    """(N, D) features with what `bounded_blocks` reads: `sq` (N,) float64 |x - centre|^2 and, for the float32
    stage, `low` (N, D) float32 x - centre rounded once (None: centred again when asked for, as float64 rows are)."""

    features: Tensor
    centre: Tensor  # (D,) float64
    sq: Tensor
    low: Tensor | None

    @staticmethod
    def of(features: Tensor, centre: Tensor, chunk_size: int, lowered: bool = True) -> Centred:
        """`features` centred on `centre` (D,), `chunk_size` rows at a time; `lowered`: keep the float32 copy."""
        centre = centre.to(device=features.device, dtype=torch.float64)
        sq, low = [], []
        for x in features.split(chunk_size):
            a = x.double() - centre
            sq.append(torch.einsum("nd,nd->n", a, a))
            low.append(a.float() if lowered else None)
        return Centred(features, centre, torch.cat(sq), torch.cat(low) if lowered else None)

    def part(self, rows: slice | Tensor) -> Centred:
        """The rows `rows` (a slice or an index tensor)."""
        return Centred(self.features[rows], self.centre, self.sq[rows], None if self.low is None else self.low[rows])

    def block(self, rows: slice, dtype: torch.dtype) -> Tensor:
        """(R, D) centred rows in `dtype`."""
        if dtype == torch.float32 and self.low is not None:
            return self.low[rows]
        return (self.features[rows].double() - self.centre).to(dtype)


def bounded_blocks(
    rows: Centred, cols: Centred, chunk_size: int, dtype: torch.dtype, upper: bool = False
) -> Iterator[tuple[slice, slice, Tensor]]:
    """Yield (row slice, col slice, squared distances (len rows, len cols) in `dtype`) between the rows of (N, D)
    `rows` and (M, D) `cols` (centred on one centre), at most chunk_size x chunk_size at a time, each within
    `error_bound` of exact: |a|^2 + |b|^2 - 2 a.b with the float64 `sq` norms, and a.b summed in D_BLOCK-long pieces,
    each a separate matmul (not accumulated by the BLAS). Not clamped: a value may be slightly negative.
    `upper`: only the blocks on and above the diagonal (for `cols` = `rows`, whose distances are symmetric)."""
    n, m, dim = rows.sq.shape[0], cols.sq.shape[0], rows.features.shape[1]
    edge = chunk_size if rows.sq.is_cuda else min(chunk_size, CPU_BLOCK)
    for r0 in range(0, n, edge):
        r = slice(r0, min(r0 + edge, n))
        a = rows.block(r, dtype)
        for c0 in range(r0 if upper else 0, m, edge):
            c = slice(c0, min(c0 + edge, m))
            b = cols.block(c, dtype)
            dot = a[:, :D_BLOCK] @ b[:, :D_BLOCK].T
            for d0 in range(D_BLOCK, dim, D_BLOCK):
                dot += a[:, d0 : d0 + D_BLOCK] @ b[:, d0 : d0 + D_BLOCK].T
            norms = rows.sq[r].to(dtype)[:, None] + cols.sq[c].to(dtype)[None, :]
            yield r, c, norms.add_(dot, alpha=-2)


def exact_squared_distances(rows: Tensor, cols: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """(P,) float64 |rows[i] - cols[j]|^2 for (P,) index tensors into (N, D) `rows` and (M, D) `cols`.

    From the float64 differences (no cancellation: within (log2 D + 2) 2^-53 of the result itself), squared and
    summed in a fixed pairwise tree of elementwise adds: the value depends on the two rows alone, not on P, the
    batching or the device (a reduction kernel's order may depend on the tensor's shape), so equal rows give bitwise
    equal distances, and a copy of a sample's k-th neighbour lies exactly on its radius, as in exact arithmetic.
    """
    dim = rows.shape[1]
    width = 1 << (dim - 1).bit_length()  # the next power of two >= D; the padding adds exact zeros
    step = max(1, PAIR_BATCH * (64 if rows.is_cuda else 1) // width)
    out = torch.empty(len(i), dtype=torch.float64, device=rows.device)
    for p in range(0, len(i), step):
        squared = F.pad((rows[i[p : p + step]].double() - cols[j[p : p + step]].double()).square_(), (0, width - dim))
        half = width
        while half > 1:
            half //= 2
            squared[:, :half] += squared[:, half : 2 * half]
        out[p : p + step] = squared[:, 0]
    return out


def round_outward(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """float64 bounds in `dtype`, rounded away from each other (lo down, hi up), so comparisons with them stay safe."""
    if dtype == torch.float64:
        return lo, hi
    lo_r, hi_r = lo.to(dtype), hi.to(dtype)
    lo_r = torch.where(lo_r.double() > lo, lo_r.nextafter(torch.full_like(lo_r, -torch.inf)), lo_r)
    hi_r = torch.where(hi_r.double() < hi, hi_r.nextafter(torch.full_like(hi_r, torch.inf)), hi_r)
    return lo_r, hi_r
