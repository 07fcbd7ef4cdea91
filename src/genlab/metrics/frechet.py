"""Fréchet Inception Distance (FID) from streaming float64 feature statistics.

Follows Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"
(arXiv:1706.08500), as implemented in torch-fidelity `metric_fid.py` (adapted from bioinf-jku/TTUR `fid.py`) and
torchmetrics `FrechetInceptionDistance`:

    FID = ||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr sqrt(S_r S_f),

with unbiased (N - 1) covariances S (numpy `cov`). The references take the eigenvalues of the non-symmetric product
S_r S_f (numpy on CPU, or complex `torch.linalg.eigvals`). Here tr sqrt(S_r S_f) = sum sqrt(eigvalsh(F^T S_f F))
for any factor F with S_r = F F^T: F^T S_f F is symmetric positive semi-definite and similar to S_r S_f (= F F^T S_f),
so it has the same eigenvalues, but they come out real and (after clamping rounding noise) >= 0. F is the Cholesky
factor of S_r (a fraction of an eigendecomposition's cost; backward stable, so F F^T is S_r to rounding), or S_r's
symmetric square root from `eigh` when S_r is too close to singular for Cholesky (fewer samples than dimensions). So
one FID costs one symmetric eigendecomposition, like the references' one. Everything runs in float64 on the
statistics' own device (CPU or CUDA): no scipy, no host round trip, never complex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genlab.metrics._checks import check_features, check_int, check_pair

DEFAULT_CHUNK_SIZE = 4096  # rows cast to float64 at once while accumulating statistics


class FeatureStats:
    """Streaming FID statistics of (N, D) features as float64 running sums.

    Holds `count` (N), `shift` (D,), `sum` (D,) = sum of (x - shift) and `outer` (D, D) = sum of (x - shift)
    (x - shift)^T, so 50k samples never need to be in memory at once and the statistics of several processes (GPUs)
    add up exactly: `total = stats_a + stats_b` or `sum(all_stats)`. `shift` is the first batch's mean: sums of
    centred values keep the covariance exact when the features share a large offset (with raw sums, features at
    1e6 with unit variance lose 12 of float64's 16 digits to cancellation in `outer - N mean mean^T`). The sums
    live on the device of the first batch (or `device`); later batches are moved there.

    Example: `stats = FeatureStats(); for batch in loader: stats.update(extract(batch))`, then
    `fid_from_stats(real_stats, stats)`.
    """

    def __init__(self, dim: int | None = None, device: torch.device | str | None = None) -> None:
        self.count = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None
        self.outer: Tensor | None = None
        if dim is not None:
            check_int("dim", dim, 1)
            self._allocate(dim, device)

    def _allocate(self, dim: int, device: torch.device | str | None, shift: Tensor | None = None) -> None:
        self.shift = torch.zeros(dim, dtype=torch.float64, device=device) if shift is None else shift
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def dim(self) -> int | None:
        """Feature dimension D, or None before the first update."""
        return None if self.sum is None else self.sum.shape[0]

    @property
    def device(self) -> torch.device | None:
        """Device of the running sums, or None before the first update."""
        return None if self.sum is None else self.sum.device

    def update(self, features: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> FeatureStats:
        """Add a (B, D) batch of finite features (any float dtype); returns self. Casts `chunk_size` rows at a time."""
        check_features("features", features)
        check_int("chunk_size", chunk_size, 1)
        if self.sum is None:
            self._allocate(features.shape[1], features.device, features.double().mean(dim=0))
        elif features.shape[1] != self.dim:
            raise ValueError(f"features have dimension {features.shape[1]} but these statistics have D={self.dim}")
        for chunk in features.split(chunk_size):
            x = chunk.to(device=self.sum.device, dtype=torch.float64) - self.shift
            self.sum += x.sum(dim=0)
            self.outer.addmm_(x.T, x)
        self.count += features.shape[0]
        return self

    @property
    def mean(self) -> Tensor:
        """(D,) float64 mean of the features seen so far (needs at least one sample)."""
        if self.count < 1:
            raise ValueError("FeatureStats has 0 samples; the mean needs at least 1")
        return self.shift + self.sum / self.count

    @property
    def covariance(self) -> Tensor:
        """(D, D) float64 unbiased covariance, divided by N - 1 like numpy.cov (needs at least two samples)."""
        if self.count < 2:
            raise ValueError(f"FeatureStats has {self.count} samples; the covariance needs at least 2")
        centred_mean = self.sum / self.count  # mean - shift: small, so the subtraction below cancels little
        return (self.outer - self.count * torch.outer(centred_mean, centred_mean)) / (self.count - 1)

    def shifted_to(self, shift: Tensor) -> tuple[Tensor, Tensor]:
        """(sum, outer) of the same samples centred on `shift` (D,) instead: with d = self.shift - shift,
        sum' = sum + N d and outer' = outer + d sum^T + sum d^T + N d d^T."""
        d = self.shift - shift.to(self.shift.device)
        total = self.sum + self.count * d
        outer = self.outer + torch.outer(d, self.sum) + torch.outer(self.sum, d) + self.count * torch.outer(d, d)
        return total, outer

    def merge(self, other: FeatureStats) -> FeatureStats:
        """New statistics of the union of both sample sets (on self's device); neither operand is changed."""
        if not isinstance(other, FeatureStats):
            raise TypeError(f"can only merge FeatureStats with FeatureStats, got {type(other).__name__}")
        if other.sum is None or self.sum is None:
            return (self if other.sum is None else other).to(self.device or other.device)
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}; they must match")
        other = other.to(self.device)
        total, outer = other.shifted_to(self.shift)
        out = FeatureStats()
        out.count = self.count + other.count
        out.shift, out.sum, out.outer = self.shift.clone(), self.sum + total, self.outer + outer
        return out

    def __add__(self, other: FeatureStats) -> FeatureStats:
        return self.merge(other)

    def __radd__(self, other: Any) -> FeatureStats:  # lets `sum(list_of_stats)` start from 0
        if isinstance(other, int) and other == 0:
            return self.to(self.device)
        return NotImplemented

    def to(self, device: torch.device | str | None) -> FeatureStats:
        """A copy with the sums on `device` (a copy even when already there)."""
        out = FeatureStats()
        out.count = self.count
        if self.sum is not None:
            out.shift = self.shift.to(device, copy=True)
            out.sum = self.sum.to(device, copy=True)
            out.outer = self.outer.to(device, copy=True)
        return out

    def state_dict(self) -> dict[str, Tensor | None]:
        """{'count': int64 scalar, 'shift': (D,), 'sum': (D,), 'outer': (D, D)} for torch.save. Sums of processes
        with different shifts do not add up: all-reduce `merge`d statistics, or give every process one shift."""
        count = torch.tensor(self.count, dtype=torch.int64)
        return {"count": count, "shift": self.shift, "sum": self.sum, "outer": self.outer}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None) -> FeatureStats:
        """Inverse of `state_dict`, optionally moving the sums to `device` (a state without 'shift' has shift 0)."""
        missing = {"count", "sum", "outer"} - set(state)
        if missing:
            raise ValueError(f"state dict lacks keys {sorted(missing)}; expected 'count', 'sum' and 'outer'")
        out = cls()
        out.count = int(state["count"])
        if state["sum"] is not None:
            out.sum = torch.as_tensor(state["sum"], dtype=torch.float64, device=device)
            out.outer = torch.as_tensor(state["outer"], dtype=torch.float64, device=device)
            shift = state.get("shift")
            out.shift = torch.zeros_like(out.sum) if shift is None else torch.as_tensor(shift, dtype=torch.float64)
            out.shift = out.shift.to(out.sum.device)
            if out.outer.shape != (out.dim, out.dim):
                raise ValueError(f"state 'outer' has shape {tuple(out.outer.shape)}, expected ({out.dim}, {out.dim})")
        return out

    def __repr__(self) -> str:
        return f"FeatureStats(count={self.count}, dim={self.dim}, device={self.device})"


Statistics = FeatureStats | tuple[Tensor, Tensor]


def _mean_and_covariance(stats: Statistics, name: str) -> tuple[Tensor, Tensor]:
    """(mu (D,), sigma (D, D)) in float64 from FeatureStats or a (mu, sigma) pair of tensors/arrays."""
    if isinstance(stats, FeatureStats):
        return stats.mean, stats.covariance
    if not isinstance(stats, tuple | list) or len(stats) != 2:
        raise TypeError(f"{name} must be FeatureStats or a (mu, sigma) pair, got {type(stats).__name__}")
    mu, sigma = (torch.as_tensor(s).to(torch.float64) for s in stats)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name} needs mu of shape (D,) and sigma (D, D), got {tuple(mu.shape)}, {tuple(sigma.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"{name} statistics contain NaN or inf values; they must be finite")
    return mu, sigma.to(mu.device)


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric PSD (D, D) matrix via eigh, negative rounding-noise eigenvalues clamped to 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def covariance_factor(matrix: Tensor) -> Tensor:
    """A (D, D) factor F with F F^T = `matrix` (symmetric PSD): its lower Cholesky factor, or its `sqrtm_psd` when
    Cholesky finds it not positive definite (singular: fewer samples than dimensions, or rounding)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    return factor if int(info) == 0 else sqrtm_psd(matrix)


def trace_sqrt_product(sigma_a: Tensor, sigma_b: Tensor, factor_a: Tensor | None = None) -> Tensor:
    """tr sqrt(sigma_a sigma_b) >= 0 for symmetric PSD (D, D) matrices, as a 0-d tensor on their device;
    `factor_a`: sigma_a's `covariance_factor`, when already known."""
    factor = covariance_factor(sigma_a) if factor_a is None else factor_a
    inner = factor.T @ sigma_b @ factor
    inner = (inner + inner.T) / 2  # symmetric up to rounding; make it exactly so for eigvalsh
    return torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()


@dataclass(frozen=True)
class FidReference:
    """The real side of FID prepared once for many evaluations: mean (D,), covariance (D, D) and the covariance's
    `covariance_factor`, all float64. `fid_from_stats(reference, fake)` then costs the one symmetric
    eigendecomposition of F^T S_f F and two matrix products."""

    mean: Tensor
    covariance: Tensor
    factor: Tensor

    @classmethod
    def of(cls, stats: Statistics) -> FidReference:
        """From FeatureStats or a (mu, sigma) pair (`fid_reference` for features)."""
        mean, covariance = _mean_and_covariance(stats, "real")
        return cls(mean, covariance, covariance_factor(covariance))

    def to(self, device: torch.device | str) -> FidReference:
        return FidReference(self.mean.to(device), self.covariance.to(device), self.factor.to(device))


def fid_reference(real_features: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> FidReference:
    """The `FidReference` of real (N, D) features, N >= 2, on their device."""
    check_features("real_features", real_features, 2, "a covariance (FID)")
    return FidReference.of(FeatureStats().update(real_features, chunk_size))


def fid_from_stats(real: Statistics | FidReference, fake: Statistics) -> float:
    """FID >= 0 between two feature distributions given as FeatureStats or (mu (D,), sigma (D, D)) pairs; `real`
    may be a `FidReference` (its covariance factor is reused).

    Computed in float64 on the device of `real`'s statistics (`fake`'s are moved there).
    """
    if isinstance(real, FidReference):
        mu_r, sigma_r, factor_r = real.mean, real.covariance, real.factor
    else:
        (mu_r, sigma_r), factor_r = _mean_and_covariance(real, "real"), None
    mu_f, sigma_f = _mean_and_covariance(fake, "fake")
    if mu_r.shape != mu_f.shape:
        raise ValueError(f"real statistics have D={mu_r.shape[0]} but fake have D={mu_f.shape[0]}; they must match")
    mu_f, sigma_f = mu_f.to(mu_r.device), sigma_f.to(mu_r.device)
    diff = mu_r - mu_f
    tr_sqrt = trace_sqrt_product(sigma_r, sigma_f, factor_r)
    value = diff.dot(diff) + sigma_r.trace() + sigma_f.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)


def fid(
    real_features: Tensor,
    fake_features: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    reference: FidReference | None = None,
) -> float:
    """FID >= 0 between real (N_r, D) and fake (N_f, D) features (N >= 2 each, same device); see `fid_from_stats`.
    `reference`: `fid_reference(real_features)`, when kept from an earlier call (then only the fake side is new)."""
    check_features("real_features", real_features, 2, "a covariance (FID)")
    check_features("fake_features", fake_features, 2, "a covariance (FID)")
    check_pair(real_features, fake_features)
    real = fid_reference(real_features, chunk_size) if reference is None else reference
    return fid_from_stats(real, FeatureStats().update(fake_features, chunk_size))
