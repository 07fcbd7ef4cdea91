"""Exact k-NN decisions of genlab.metrics.knn (float32 matmul form, float64 rechecks) on adversarial features:
points within 1e-9..1e-7 of a radius, exact ties on a grid, copies of neighbours, duplicates, norms ~1e3 where
float32's |a|^2 + |b|^2 - 2 a.b cancels worst. Every hit count must equal exact rational arithmetic (small sets),
the all-float64 path, and torch-fidelity / prdc on the same float64 features wherever their own float64 rounding
decides nothing; a zero margin must miscount them, so these sets do test the margin."""

from __future__ import annotations

import contextlib
import io
from fractions import Fraction

import pytest
import torch
from prdc import compute_prdc
from torch import Tensor
from torch_fidelity.metric_prc import prc_features_to_metric

import genlab.metrics as M
import genlab.metrics.exact_distances as exact_module
import genlab.metrics.knn as knn
from genlab.metrics.exact_distances import Centred, bounded_blocks, error_bound, ieee_float32

Counts = tuple[int, int, int, int]  # fakes in real balls (<=), reals in fake balls (<=), density hits (<), covered (<)


def clusters(n: int, d: int, norm: float, g: torch.Generator, spread: float = 1.0) -> Tensor:
    """(n, d) float64 points around 4 centres of norm `norm`: centring cannot remove the norm."""
    centres = torch.randn(4, d, generator=g, dtype=torch.float64)
    centres *= norm / centres.norm(dim=1, keepdim=True)
    return centres[torch.randint(4, (n,), generator=g)] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)


def with_duplicates(x: Tensor) -> Tensor:
    """x with a tenth of its rows doubled and one row copied 8 times (k-NN radius 0 for k < 9)."""
    x = x.clone()
    tenth = len(x) // 10
    x[:tenth] = x[tenth : 2 * tenth]
    x[-8:] = x[-9]
    return x


def near_ties(real: Tensor, k: int, deltas: tuple[float, ...], per_delta: int, g: torch.Generator) -> Tensor:
    """Points at (1 + delta) times the k-NN radius of random real points (of radius > 0), toward that neighbour,
    and exact copies of such neighbours (on the radius)."""
    distances = torch.cdist(real, real, compute_mode="donot_use_mm_for_euclid_dist")
    order = distances.argsort(dim=1, stable=True)
    candidates = torch.nonzero(distances.gather(1, order[:, k : k + 1])[:, 0] > 0)[:, 0]
    points = []
    for delta in deltas:
        centre = candidates[torch.randint(len(candidates), (per_delta,), generator=g)]
        neighbour = real[order[centre, k]]
        points.append(neighbour.clone() if delta == 0 else real[centre] + (neighbour - real[centre]) * (1 + delta))
    return torch.cat(points)


def adversarial(n: int, d: int, norm: float, seed: int, exact_ties: bool = True) -> tuple[Tensor, Tensor]:
    """Real (n, d) with duplicates; fake: its own cluster samples and points within 1e-7 (down to 1e-9) of real
    radii (k=3 and k=5). With `exact_ties`, also real copies of radius 0 and fake copies of real points' 3rd and
    5th neighbours (exactly on their radii)."""
    g = torch.Generator().manual_seed(seed)
    real = with_duplicates(clusters(n, d, norm, g))
    if not exact_ties:
        real = real[:-8]  # one copy of the 9 left
    deltas = (-1e-7, -3e-8, -1e-8, -1e-9, 1e-9, 1e-8, 3e-8, 1e-7) + ((0.0,) if exact_ties else ())
    ties = [near_ties(real, k, deltas, max(2, n // 40), g) for k in (3, 5)]
    return real, torch.cat([clusters(n, d, norm, g, spread=0.9), *ties])


def grid(n: int, d: int, seed: int) -> Tensor:
    """(n, d) float64 points of a 1/4-grid around 3 fixed integer centres of norm ~1e3: every distance is exact in
    float64 (so in torch-fidelity and prdc too), squared norms need > 24 bits (inexact in float32); ties everywhere."""
    centres = torch.randint(-700, 700, (3, d), generator=torch.Generator().manual_seed(0)).double()
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 3, (n, d), generator=g).double() / 4
    return centres[torch.randint(3, (n,), generator=g)] + offsets


def counts(real: Tensor, fake: Tensor, dtype: torch.dtype = torch.float32, chunk_size: int = 4096) -> Counts:
    precision, recall = M.precision_recall(real, fake, k=3, chunk_size=chunk_size, dtype=dtype)
    density, coverage = M.density_coverage(real, fake, k=5, chunk_size=chunk_size, dtype=dtype)
    joint = M.knn_metrics(real, fake, 3, 5, chunk_size=chunk_size, dtype=dtype)  # one pass for all four
    assert joint == {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
    n_r, n_f = len(real), len(fake)
    return round(precision * n_f), round(recall * n_r), round(density * 5 * n_f), round(coverage * n_r)


def reference_counts(real: Tensor, fake: Tensor) -> Counts:
    """torch-fidelity's precision/recall (its input1 is the generated set) and prdc, on float64 features."""
    pr = prc_features_to_metric(
        fake, real, prc_neighborhood=3, prc_batch_size=100_000, save_cpu_ram=False, verbose=False
    )
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the sample counts
        dc = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    n_r, n_f = len(real), len(fake)
    return (
        round(pr["precision"] * n_f),
        round(pr["recall"] * n_r),
        round(dc["density"] * 5 * n_f),
        round(dc["coverage"] * n_r),
    )


def rational_counts(real: Tensor, fake: Tensor) -> Counts:
    """The counts in exact rational arithmetic on the float64 values (small sets only)."""
    r, f = ([[Fraction(v) for v in row] for row in x.tolist()] for x in (real, fake))

    def squared(a: list[Fraction], b: list[Fraction]) -> Fraction:
        return sum(((x - y) ** 2 for x, y in zip(a, b, strict=True)), Fraction(0))

    rf = [[squared(a, b) for b in f] for a in r]
    radius = {k: [sorted(squared(a, b) for b in r)[k] for a in r] for k in (3, 5)}
    fake_radius = [sorted(squared(a, b) for b in f)[3] for a in f]
    precision = sum(any(rf[i][j] <= radius[3][i] for i in range(len(r))) for j in range(len(f)))
    recall = sum(any(rf[i][j] <= fake_radius[j] for j in range(len(f))) for i in range(len(r)))
    hits = [[rf[i][j] < radius[5][i] for j in range(len(f))] for i in range(len(r))]
    return precision, recall, sum(map(sum, hits)), sum(map(any, hits))


def zero_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn, "error_bound", lambda dtype, dim: (0.0, 0.0))


# ------------------------------------------------------------------------------------------------- hit counts
@pytest.mark.slow  # exact rational arithmetic in Python: 2 to 4 s
@pytest.mark.parametrize(("norm", "d"), [(1e3, 6), (1.0, 12)])
def test_counts_equal_exact_rational_arithmetic(monkeypatch: pytest.MonkeyPatch, norm: float, d: int) -> None:
    """Duplicates, copies of neighbours (exactly on a radius) and points 1e-9 of a radius away: every count exact,
    in both directions (real <-> fake swapped), and a zero float32 margin miscounts."""
    real, fake = adversarial(44, d, norm, seed=1)
    exact = rational_counts(real, fake)
    assert counts(real, fake) == counts(real, fake, torch.float64) == exact
    assert counts(fake, real) == rational_counts(fake, real)
    zero_margin(monkeypatch)
    assert counts(real, fake) != exact


@pytest.mark.parametrize(("norm", "d"), [(1.0, 8), (1.0, 64), (1e3, 8), (1e3, 64)])
def test_near_ties_match_the_float64_path_and_the_references(
    monkeypatch: pytest.MonkeyPatch, norm: float, d: int
) -> None:
    """Points within 1e-7 (down to 1e-9) of a radius, beyond float32's resolution but far above the float64
    rounding of torch-fidelity's and prdc's matmul forms (~1e-12 here), so every implementation decides them
    exactly; exact copies left out (their float64 matmul forms decide ties by rounding)."""
    real, fake = adversarial(300, d, norm, seed=d, exact_ties=False)
    reference = reference_counts(real, fake)
    assert counts(real, fake) == counts(real, fake, torch.float64) == reference
    assert counts(fake, real) == counts(fake, real, torch.float64) == reference_counts(fake, real)
    zero_margin(monkeypatch)
    assert counts(real, fake) != reference


def test_exact_ties_on_a_grid_far_from_the_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grid points at norm ~1e3: hundreds of pairs exactly on a radius and many duplicates, all exact in float64 (so
    in the references), none in float32; `<=` and `<` then differ on every tie."""
    real = with_duplicates(grid(240, 16, seed=2))
    fake = torch.cat([grid(200, 16, seed=3), real[::6]])  # with copies of real points, some of radius 0
    on_radius = int((torch.cdist(real, fake).square() == M.knn_radii(real, 5).square()[:, None]).sum())
    assert on_radius > 300
    reference = reference_counts(real, fake)
    assert counts(real, fake) == counts(real, fake, torch.float64) == reference
    assert counts(fake, real) == reference_counts(fake, real)
    zero_margin(monkeypatch)
    assert counts(real, fake) != reference


@pytest.mark.parametrize(("keep_extra", "escalate"), [(0, 0), (0, 2**40), (8, 0), (8, 2**40)])
def test_every_stage_gives_the_same_counts(monkeypatch: pytest.MonkeyPatch, keep_extra: int, escalate: int) -> None:
    """Radii settled in float32, in float64 or from every neighbour; blocks rechecked pair by pair or redone in
    float64 first; blocks of every size: the same counts."""
    real, fake = adversarial(160, 24, norm=1e3, seed=5)
    expected = counts(real, fake, torch.float64)
    monkeypatch.setattr(knn, "KEEP_EXTRA", keep_extra)
    monkeypatch.setattr(knn, "ESCALATE_FRACTION", escalate)
    assert counts(real, fake) == expected
    monkeypatch.setattr(exact_module, "CPU_BLOCK", 37)
    assert counts(real, fake, chunk_size=50) == expected


@pytest.mark.parametrize("norm", [1.0, 1e3])
def test_radii_are_exact_and_independent_of_dtype_and_blocks(monkeypatch: pytest.MonkeyPatch, norm: float) -> None:
    """Radii of a set whose own points lie within 1e-7 of (or exactly at) each other's radii, with 9 copies of one."""
    real, _ = adversarial(40, 6, norm, seed=6)
    g = torch.Generator().manual_seed(6)
    real = torch.cat([near_ties(real, 3, (-1e-7, -1e-8, 0.0, 1e-8, 1e-7), 4, g), real])
    radii = M.knn_radii(real, 3)
    rows = [[Fraction(v) for v in row] for row in real.tolist()]
    exact = [sorted(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) for b in rows)[3] for a in rows]
    exact_radii = torch.tensor([float(v) for v in exact], dtype=torch.float64).sqrt()
    torch.testing.assert_close(radii, exact_radii, rtol=2**-50, atol=0)
    assert float(radii[-1]) == 0.0  # one of 9 copies
    assert torch.equal(radii, M.knn_radii(real, 3, dtype=torch.float64))
    monkeypatch.setattr(exact_module, "CPU_BLOCK", 5)
    monkeypatch.setattr(knn, "KEEP_EXTRA", 0)
    assert torch.equal(radii, M.knn_radii(real, 3, chunk_size=11))


@pytest.mark.parametrize("norm", [10.0, 1e3])
def test_radius_is_the_kth_of_neighbours_closer_together_than_float32_resolves(norm: float) -> None:
    """Each of 30 centres has 8 neighbours at R (1 + j 1e-8), j = 0..7, in random directions (float32 cannot order
    them): its k=3 radius is R (1 + 2e-8), to float64 rounding of the construction."""
    g = torch.Generator().manual_seed(11)
    centres = torch.randn(30, 16, generator=g, dtype=torch.float64) * norm / 4
    shell = 1 + torch.rand(30, 1, generator=g, dtype=torch.float64)  # R in [1, 2)
    directions = torch.nn.functional.normalize(torch.randn(30, 8, 16, generator=g, dtype=torch.float64), dim=2)
    steps = 1 + 1e-8 * torch.stack([torch.randperm(8, generator=g) for _ in range(30)]).double()  # shuffled j
    points = centres[:, None] + (shell * steps)[..., None] * directions
    radii = M.knn_radii(torch.cat([centres, points.reshape(-1, 16)]), 3)[:30]
    torch.testing.assert_close(radii, shell[:, 0] * (1 + 2e-8), rtol=1e-12, atol=0)


@pytest.mark.slow
def test_near_copies_closer_than_float64_resolves_are_settled_around_a_local_centre(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two modes of 30 near-copies each (1e-10 apart relative to their norm 1e3, as a collapsed generator makes):
    the global float64 bound (~1e-13 of |a|^2) cannot order them, a member of their own cluster as the centre can.
    Exact counts, and exact distances for a few pairs per row, not for every pair."""
    g = torch.Generator().manual_seed(12)
    modes = clusters(2, 8, 1e3, g)
    copies = modes.repeat_interleave(30, dim=0) + 1e-7 * torch.randn(60, 8, generator=g, dtype=torch.float64)
    real, fake = clusters(40, 8, 1e3, g), torch.cat([copies, clusters(20, 8, 1e3, g)])
    exact_pairs = []
    original = knn.exact_squared_distances
    monkeypatch.setattr(
        knn, "exact_squared_distances", lambda *args: exact_pairs.append(len(args[2])) or original(*args)
    )
    assert counts(real, fake) == rational_counts(real, fake)
    assert counts(fake, real) == rational_counts(fake, real)
    assert sum(exact_pairs) < 4 * 25 * (len(real) + len(fake))  # each of 4 calls: < 25 per row


# -------------------------------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("norm", "d"), [(1.0, 600), (1e3, 40), (1e-30, 8)])
def test_error_bound_holds(dtype: torch.dtype, norm: float, d: int) -> None:
    """Every bounded value is within m (|a|^2 + |b|^2) + floor of the exact squared distance (D = 600 sums three
    D_BLOCK pieces; norm 1e-30 leaves float32's normal range)."""
    g = torch.Generator().manual_seed(7)
    x, y = clusters(200, d, norm, g, spread=norm / 1e3), clusters(150, d, norm, g, spread=norm / 1e3)
    centre = knn.feature_mean(x)
    rows, cols = Centred.of(x, centre, 64), Centred.of(y, centre, 64)
    m, floor = error_bound(dtype, d)
    with ieee_float32():
        for r, c, squared in bounded_blocks(rows, cols, 64, dtype):
            exact = torch.cdist(x[r], y[c], compute_mode="donot_use_mm_for_euclid_dist").square()
            bound = m * (rows.sq[r, None] + cols.sq[None, c]) + floor
            assert ((squared.double() - exact).abs() <= bound).all()


def test_the_bound_leaves_few_pairs_undecided() -> None:
    """On 2048-d Gaussians (distances concentrated within a few % of each other, the hard case for a margin) float32
    decides all but < 0.2% of the real-fake pairs; the rest are rechecked exactly."""
    g = torch.Generator().manual_seed(8)
    real, fake = torch.randn(400, 2048, generator=g), 1.1 * torch.randn(400, 2048, generator=g) + 0.1
    setup = knn._Setup.of(real, fake, 4096, torch.float32)
    balls = [setup.balls(setup.fake, 3, on_rows=False, strict=False), setup.balls(setup.real, 5, True, True)]
    with ieee_float32():
        for rows, cols, squared in bounded_blocks(setup.real, setup.fake, 4096, torch.float32):
            _, unsure = setup._classify(balls, squared, rows, cols)
            assert 0 < int(unsure.sum()) < 0.002 * unsure.numel()


# ------------------------------------------------------------------------------------------- settings, errors
def test_float32_matmuls_run_in_ieee_precision_whatever_the_global_setting() -> None:
    real, fake = adversarial(200, 24, norm=1e3, seed=9)
    expected = counts(real, fake)
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bfloat16 through oneDNN
        assert counts(real, fake) == expected
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert counts(real.float(), fake.float()) == counts(real.float(), fake.float(), torch.float64)
        with ieee_float32():
            assert torch.backends.cuda.matmul.fp32_precision == torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(RuntimeError), ieee_float32():
            raise RuntimeError
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_bad_dtype_names_the_valid_ones() -> None:
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"dtype must be one of \['torch.float32', 'torch.float64'\], got torch.f"):
        M.precision_recall(x, x, dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_counts_on_cuda_equal_cpu_with_tf32_allowed() -> None:
    cases = [adversarial(300, 64, norm=1e3, seed=10), (grid(240, 16, seed=2), grid(200, 16, seed=3))]
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        for real, fake in cases:
            assert counts(real.cuda(), fake.cuda()) == counts(real, fake)
            assert counts(real.cuda(), fake.cuda(), chunk_size=100) == counts(real, fake, torch.float64)
    finally:
        torch.set_float32_matmul_precision(saved)
