"""genlab.metrics against the reference implementations (torch-fidelity, torchmetrics, prdc), closed forms,
invariants (streaming, merging, chunking) and the errors for bad inputs. CPU and small, except the gpu test."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import scipy.linalg
import torch
from prdc import compute_prdc
from torch import Tensor, nn
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torchmetrics.image.fid import FrechetInceptionDistance

import genlab.metrics as M
import genlab.metrics.kernel_distance as kid_module
from genlab.metrics import FeatureStats

REL = 1e-6


def gaussian(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> Tensor:
    """(n, d) float32 samples of N(shift, scale^2 I)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift).float()


@pytest.fixture(scope="module")
def feats() -> tuple[Tensor, Tensor]:
    """Real (500, 24) and fake (437, 24) features of different sizes and distributions, so swapping the roles of
    real and fake (or the subset draw order) changes every metric."""
    real = gaussian(500, 24, seed=0)
    fake = gaussian(437, 24, seed=1, shift=0.15, scale=0.85)
    return real, fake


def rel_diff(ours: float, ref: float) -> float:
    return abs(ours - float(ref)) / abs(float(ref))


def closed_form_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), with scipy's sqrtm."""
    root = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(root @ s2 @ root).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))


# ----------------------------------------------------------------------------------------------------------- FID
def test_fid_matches_torch_fidelity(feats: tuple[Tensor, Tensor]) -> None:
    real, fake = feats
    ref = fid_statistics_to_metric(
        fid_features_to_statistics(real.double()), fid_features_to_statistics(fake.double()), verbose=False
    )["frechet_inception_distance"]
    assert ref > 0.5
    assert rel_diff(M.fid(real, fake), ref) < REL
    assert rel_diff(M.fid(fake, real), ref) < REL  # symmetric
    stats = fid_features_to_statistics(real.double()), fid_features_to_statistics(fake.double())
    assert rel_diff(M.fid_from_stats(*((s["mu"], s["sigma"]) for s in stats)), ref) < REL  # numpy (mu, sigma) pairs


class IdentityFeatures(nn.Module):
    """A torchmetrics 'feature extractor' that passes precomputed features through."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


def test_fid_matches_torchmetrics(feats: tuple[Tensor, Tensor]) -> None:
    real, fake = feats
    metric = FrechetInceptionDistance(feature=IdentityFeatures(real.shape[1]))
    for batch in real.double().split(128):
        metric.update(batch, real=True)
    for batch in fake.double().split(100):
        metric.update(batch, real=False)
    ref = float(metric.compute())
    assert ref > 0.5
    assert rel_diff(M.fid(real, fake), ref) < REL


def test_fid_of_a_set_with_itself_is_zero() -> None:
    x = gaussian(400, 32, seed=3, shift=2.0, scale=3.0)
    scale = float(x.double().var(dim=0).sum())  # tr(S) ~ 288
    assert 0.0 <= M.fid(x, x) < 1e-6 * scale
    assert M.fid(x, x.clone()) >= 0.0


def test_fid_equals_the_closed_form_for_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    d = 20
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.05 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ours = M.fid_from_stats((torch.from_numpy(mu1), torch.from_numpy(s1)), (torch.from_numpy(mu2), s2))
    assert rel_diff(ours, closed_form_fid(mu1, s1, mu2, s2)) < REL
    v1, v2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)  # diagonal: sum (sqrt v1 - sqrt v2)^2 + |dmu|^2
    analytic = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    ours = M.fid_from_stats((torch.from_numpy(mu1), torch.diag(torch.from_numpy(v1))), (mu2, np.diag(v2)))
    assert rel_diff(ours, analytic) < REL


def test_fid_of_gaussian_samples_equals_the_closed_form_of_their_statistics() -> None:
    rng = np.random.default_rng(1)
    d = 16
    a = rng.normal(size=(d, d))
    x = rng.multivariate_normal(np.zeros(d), a @ a.T / d + np.eye(d), size=800)
    y = rng.multivariate_normal(np.full(d, 0.3), np.diag(rng.uniform(0.5, 2, size=d)), size=600)
    expected = closed_form_fid(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert rel_diff(M.fid(torch.from_numpy(x), torch.from_numpy(y)), expected) < REL


def test_fid_stays_finite_and_non_negative_with_singular_covariances() -> None:
    real, fake = gaussian(10, 64, seed=4), gaussian(12, 64, seed=5)  # N < D: rank-deficient covariances
    value = M.fid(real, fake)
    assert np.isfinite(value) and value > 0


# ------------------------------------------------------------------------------------------------- FeatureStats
def test_streaming_stats_equal_one_shot_and_numpy(feats: tuple[Tensor, Tensor]) -> None:
    real, _ = feats
    one_shot = FeatureStats().update(real)
    streamed = FeatureStats(dim=real.shape[1])
    for batch in real.split(37):
        streamed.update(batch, chunk_size=10)
    assert streamed.count == one_shot.count == len(real)
    torch.testing.assert_close(streamed.mean, one_shot.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(streamed.covariance, one_shot.covariance, rtol=1e-12, atol=1e-12)
    x = real.double().numpy()
    np.testing.assert_allclose(one_shot.mean.numpy(), x.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(one_shot.covariance.numpy(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert M.fid_from_stats(streamed, FeatureStats().update(feats[1])) == pytest.approx(M.fid(*feats), rel=1e-10)


def test_merged_halves_equal_the_whole(feats: tuple[Tensor, Tensor]) -> None:
    real, _ = feats
    whole = FeatureStats().update(real)
    first, second = FeatureStats().update(real[:123]), FeatureStats().update(real[123:])
    for merged in (first + second, first.merge(second), sum([first, second]), FeatureStats() + first + second):
        assert merged.count == whole.count
        torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged.covariance, whole.covariance, rtol=1e-12, atol=1e-12)
    assert first.count == 123  # merging does not modify its operands


def test_state_dict_round_trip(feats: tuple[Tensor, Tensor]) -> None:
    stats = FeatureStats().update(feats[0])
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    loaded = FeatureStats.from_state_dict(torch.load(buffer))
    assert loaded.count == stats.count and loaded.dim == stats.dim
    assert torch.equal(loaded.sum, stats.sum) and torch.equal(loaded.outer, stats.outer)
    assert M.fid_from_stats(loaded, FeatureStats().update(feats[1])) == M.fid(*feats)


# ------------------------------------------------------------------------------------------------ Inception Score
@pytest.mark.parametrize("splits", [1, 7, 10])
def test_inception_score_matches_torch_fidelity(splits: int) -> None:
    logits = 4 * gaussian(503, 10, seed=6)  # N not divisible by splits
    ref = isc_features_to_metric(logits, splits=splits, shuffle=False)
    mean, std = M.inception_score(logits, splits=splits, shuffle_seed=None)
    assert mean > 1.5
    assert rel_diff(mean, ref["inception_score_mean"]) < REL
    assert std == pytest.approx(ref["inception_score_std"], rel=REL, abs=1e-12)
    ref = isc_features_to_metric(logits, splits=splits)  # torch-fidelity's default: shuffled with seed 2020
    mean, std = M.inception_score(logits, splits=splits)  # and so is ours
    assert rel_diff(mean, ref["inception_score_mean"]) < REL
    assert std == pytest.approx(ref["inception_score_std"], rel=REL, abs=1e-12)


def test_inception_score_does_not_depend_on_sample_order() -> None:
    """Class-sorted samples (image files named by class) score like shuffled ones, and like torch-fidelity's
    default call; only the explicit unshuffled option sees one class per split."""
    labels = torch.arange(10).repeat_interleave(60)  # 600 samples sorted by class
    logits = 6 * torch.nn.functional.one_hot(labels, 10).float() + gaussian(600, 10, seed=30)
    shuffled = logits[torch.randperm(600, generator=torch.Generator().manual_seed(1))]
    assert M.inception_score(logits)[0] == pytest.approx(M.inception_score(shuffled)[0], rel=0.02)
    ref = isc_features_to_metric(logits, splits=10)
    assert rel_diff(M.inception_score(logits)[0], ref["inception_score_mean"]) < REL
    assert M.inception_score(logits)[0] > 5 and M.inception_score(logits, shuffle_seed=None)[0] < 1.5


def test_inception_score_is_finite_when_a_probability_underflows() -> None:
    logits = torch.zeros(40, 3, dtype=torch.float64)
    logits[:, 0] = 800.0  # exp(-800) underflows to 0 in float64 for every sample of every split
    mean, std = M.inception_score(logits, splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    logits[::2, 1] = 1600.0  # two classes, each certain: IS = 2
    assert M.inception_score(logits, splits=4)[0] == pytest.approx(2.0)


def test_inception_score_extremes() -> None:
    confident = torch.eye(10).repeat(30, 1) * 100  # sure and uniformly spread over 10 classes -> 10
    assert M.inception_score(confident, splits=3, shuffle_seed=None)[0] == pytest.approx(10.0, rel=1e-6)
    assert M.inception_score(torch.zeros(50, 10), splits=5) == pytest.approx((1.0, 0.0))  # uninformative -> 1


# ------------------------------------------------------------------------------------------------------------ KID
@pytest.mark.parametrize("cached_kernels", [True, False])
def test_kid_matches_torch_fidelity(
    feats: tuple[Tensor, Tensor], cached_kernels: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, fake = feats
    if not cached_kernels:
        monkeypatch.setattr(kid_module, "CACHE_MAX_ELEMENTS", 0)
    ref = kid_features_to_metric(
        fake.double(), real.double(), kid_subsets=15, kid_subset_size=300, rng_seed=7, verbose=False
    )
    mean, std = M.kid(real, fake, subsets=15, subset_size=300, seed=7)
    assert ref["kernel_inception_distance_mean"] > 0.01
    assert rel_diff(mean, ref["kernel_inception_distance_mean"]) < REL
    assert rel_diff(std, ref["kernel_inception_distance_std"]) < REL


def test_kid_is_near_zero_for_one_distribution() -> None:
    mean, std = M.kid(gaussian(400, 16, seed=8), gaussian(400, 16, seed=9), subsets=20, subset_size=200)
    far, _ = M.kid(gaussian(400, 16, seed=8), gaussian(400, 16, seed=9, shift=0.3), subsets=20, subset_size=200)
    assert abs(mean) < 3 * std + 1e-3 and far > 10 * abs(mean)


# --------------------------------------------------------------------------------------------------- kNN metrics
def near_tie_pairs(points: Tensor, centers: Tensor, k: int, rel: float = 1e-6) -> int:
    """Pairs (point, center) whose distance equals the center's k-NN radius to `rel`: only these can be decided
    differently by float32 references (their distances are rounded to ~6e-8 relative) than by exact arithmetic."""
    exact = {"compute_mode": "donot_use_mm_for_euclid_dist"}
    radii = torch.cdist(centers.double(), centers.double(), **exact).kthvalue(k + 1).values
    dist = torch.cdist(points.double(), centers.double(), **exact)
    return int(((dist - radii).abs() <= rel * radii).sum())


def torch_fidelity_prc(real: Tensor, fake: Tensor, k: int) -> tuple[int, int]:
    """Hit counts (fake in real balls, real in fake balls) from torch-fidelity (its input1 is the generated set)."""
    ref = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False)
    return round(ref["precision"] * len(fake)), round(ref["recall"] * len(real))


def test_precision_recall_match_torch_fidelity(feats: tuple[Tensor, Tensor]) -> None:
    real, fake = feats
    precision, recall = M.precision_recall(real, fake, k=3)
    ours = precision * len(fake), recall * len(real)
    assert ours == pytest.approx(torch_fidelity_prc(real.double(), fake.double(), k=3), abs=1e-9)  # same counts
    assert abs(precision - recall) > 0.05  # the two directions differ here, so a swap would fail
    # torch-fidelity on float32 features (its usual input) may differ only on near-ties; this fixture has one
    ref32 = torch_fidelity_prc(real, fake, k=3)
    assert abs(ours[0] - ref32[0]) <= near_tie_pairs(fake, real, k=3)
    assert abs(ours[1] - ref32[1]) <= near_tie_pairs(real, fake, k=3)


def test_density_coverage_match_prdc(feats: tuple[Tensor, Tensor]) -> None:
    real, fake = feats
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the sample counts
        ref = compute_prdc(real.double().numpy(), fake.double().numpy(), nearest_k=5)
        ref32 = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    density, coverage = M.density_coverage(real, fake, k=5)
    assert density == pytest.approx(ref["density"], rel=1e-12)
    assert coverage == pytest.approx(ref["coverage"], rel=1e-12)
    assert density > 1.2  # fake is narrower than real: denser, so a mix-up with a symmetric quantity would show
    ties = near_tie_pairs(fake, real, k=5)
    assert abs(density - ref32["density"]) * 5 * len(fake) <= ties + 1e-6
    assert abs(coverage - ref32["coverage"]) * len(real) <= ties + 1e-6


def test_tie_and_duplicate_conventions_match_the_references() -> None:
    """Small-integer points: distances are exact in every implementation, with many exact ties (distance == radius)
    and duplicates, so this pins torch-fidelity's `<=`, prdc's `<` and the self-exclusion of the k-NN radius."""
    g = torch.Generator().manual_seed(23)
    real = torch.randint(0, 4, (60, 2), generator=g).double()
    fake = torch.randint(0, 5, (50, 2), generator=g).double()
    precision, recall = M.precision_recall(real, fake, k=3)
    assert (precision * len(fake), recall * len(real)) == pytest.approx(torch_fidelity_prc(real, fake, 3), abs=1e-9)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = compute_prdc(real.numpy(), fake.numpy(), nearest_k=3)
    assert M.density_coverage(real, fake, k=3) == pytest.approx((ref["density"], ref["coverage"]), rel=1e-12)
    assert precision != pytest.approx(ref["precision"])  # prdc's own precision (strict `<`) differs on ties


@pytest.mark.slow
@pytest.mark.parametrize(("chunk_size", "n"), [(1, 30), (13, 120), (100, 120)])  # blocks of one row: fewer rows
def test_knn_metrics_do_not_depend_on_chunk_size(chunk_size: int, n: int) -> None:
    real, fake = gaussian(n, 8, seed=10), gaussian(3 * n // 4, 8, seed=11, shift=0.2)
    full = 10_000
    assert M.precision_recall(real, fake, chunk_size=chunk_size) == M.precision_recall(real, fake, chunk_size=full)
    assert M.density_coverage(real, fake, chunk_size=chunk_size) == M.density_coverage(real, fake, chunk_size=full)
    torch.testing.assert_close(M.knn_radii(real, 3, chunk_size), M.knn_radii(real, 3, full), rtol=1e-13, atol=0)


def test_knn_radius_excludes_the_sample_itself() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert M.knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert M.knn_radii(x, k=3).tolist() == [7.0, 6.0, 4.0, 7.0]


def test_collapsed_generator_has_high_precision_and_low_recall() -> None:
    real = gaussian(400, 16, seed=12)
    g = torch.Generator().manual_seed(13)
    fake = real[torch.arange(4).repeat(100)] + 1e-3 * torch.randn(400, 16, generator=g)  # 4 modes of 100 samples
    precision, recall = M.precision_recall(real, fake, k=3)
    assert precision == 1.0 and recall <= 4 / 400
    _, coverage = M.density_coverage(real, fake, k=5)
    assert coverage < 0.1  # only real samples with a mode among their 5 nearest neighbours are covered


def test_same_distribution_has_density_and_coverage_near_one() -> None:
    real, fake = gaussian(1000, 16, seed=14), gaussian(1000, 16, seed=15)
    density, coverage = M.density_coverage(real, fake, k=5)
    assert 0.85 < density < 1.15 and coverage > 0.9  # E[coverage] = 1 - 2^-5 for N_r = N_f
    precision, recall = M.precision_recall(real, fake, k=3)
    assert precision > 0.5 and recall > 0.5 and abs(precision - recall) < 0.1


# ------------------------------------------------------------------------------------------------------ conditional
def test_intra_fid_is_the_mean_of_per_class_fids() -> None:
    real, fake = gaussian(300, 8, seed=16), gaussian(240, 8, seed=17, shift=0.1)
    real_labels, fake_labels = torch.arange(300) % 3, torch.arange(240) % 3
    expected = np.mean(
        [
            fid_statistics_to_metric(
                fid_features_to_statistics(real[real_labels == c].double()),
                fid_features_to_statistics(fake[fake_labels == c].double()),
                verbose=False,
            )["frechet_inception_distance"]
            for c in range(3)
        ]
    )
    assert rel_diff(M.intra_fid(real, real_labels, fake, fake_labels), expected) < REL
    assert M.intra_fid(real, real_labels, fake, fake_labels) > M.fid(real, fake)  # fewer samples per class


def test_classifier_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0]])
    assert M.classifier_accuracy(logits, torch.tensor([0, 1, 1, 2])) == 0.5
    assert M.classifier_accuracy(logits, torch.tensor([0, 1, 2, 0])) == 1.0


# ----------------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_bad_value() -> None:
    x, y = gaussian(20, 4, seed=18), gaussian(20, 4, seed=19)
    nan = x.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"real_features has 3 samples, but a k=3 nearest-neighbour .* at least 4"):
        M.precision_recall(x[:3], y, k=3)
    with pytest.raises(ValueError, match=r"fake_features has 5 samples, but a k=5 nearest-neighbour .* at least 6"):
        M.precision_recall(x, y[:5], k=5)
    with pytest.raises(ValueError, match=r"real_features has 20 samples, but KID with subset_size=50 .* at least 50"):
        M.kid(x, y, subset_size=50)
    with pytest.raises(ValueError, match=r"fake_features contains 1 NaN or inf values"):
        M.fid(y, nan)
    with pytest.raises(ValueError, match=r"real_features contains 1 NaN or inf"):
        M.density_coverage(torch.where(nan.isnan(), torch.inf, nan), y)
    with pytest.raises(ValueError, match=r"real_features has feature dimension 4 but fake_features has 3"):
        M.fid(x, y[:, :3])
    with pytest.raises(ValueError, match=r"splits must be an integer >= 1, got 0"):
        M.inception_score(x, splits=0)
    with pytest.raises(ValueError, match=r"splits=30 is more than the 20 samples"):
        M.inception_score(x, splits=30)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        M.density_coverage(x, y, k=0)
    with pytest.raises(ValueError, match=r"must have shape \(N, D\), got shape \(20,\)"):
        M.fid(x[:, 0], y)
    with pytest.raises(ValueError, match=r"real_features has 1 samples, but a covariance \(FID\) needs at least 2"):
        M.fid(x[:1], y)


def test_conditional_and_stats_errors() -> None:
    x, y = gaussian(20, 4, seed=20), gaussian(20, 4, seed=21)
    labels = torch.zeros(20, dtype=torch.long)
    lonely = labels.clone()
    lonely[0] = 7
    with pytest.raises(ValueError, match=r"class 7 has 1 real and 0 fake samples; intra-FID needs at least 2"):
        M.intra_fid(x, lonely, y, labels)
    with pytest.raises(ValueError, match=r"real_labels must have shape \(20,\)"):
        M.intra_fid(x, labels[:5], y, labels)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        M.classifier_accuracy(x, lonely)
    with pytest.raises(ValueError, match=r"features have dimension 3 but these statistics have D=4"):
        FeatureStats().update(x).update(y[:, :3])
    with pytest.raises(ValueError, match=r"cannot merge statistics of dimension 4 and 3"):
        FeatureStats().update(x) + FeatureStats().update(y[:, :3])
    with pytest.raises(ValueError, match=r"FeatureStats has 1 samples; the covariance needs at least 2"):
        M.fid_from_stats(FeatureStats().update(x[:1]), FeatureStats().update(y))
    with pytest.raises(ValueError, match=r"real statistics have D=4 but fake have D=3"):
        M.fid_from_stats(FeatureStats().update(x), FeatureStats().update(y[:, :3]))


# -------------------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_metrics_on_cuda_match_cpu(feats: tuple[Tensor, Tensor]) -> None:
    real, fake = feats
    gpu_real, gpu_fake = real.cuda(), fake.cuda()
    logits, labels = 4 * gaussian(300, 10, seed=22), torch.arange(300) % 10
    real_labels, fake_labels = torch.arange(len(real)) % 2, torch.arange(len(fake)) % 2
    calls = {
        "fid": lambda r, f: M.fid(r, f),
        "kid": lambda r, f: M.kid(r, f, subsets=10, subset_size=200),
        "pr": lambda r, f: M.precision_recall(r, f, chunk_size=128),
        "dc": lambda r, f: M.density_coverage(r, f, chunk_size=128),
        "intra_fid": lambda r, f: M.intra_fid(r, real_labels.to(r.device), f, fake_labels.to(f.device)),
    }
    for name, call in calls.items():
        assert np.allclose(call(gpu_real, gpu_fake), call(real, fake), rtol=1e-7, atol=0), name
    assert np.allclose(M.inception_score(logits.cuda(), splits=5), M.inception_score(logits, splits=5), rtol=1e-9)
    assert M.classifier_accuracy(logits.cuda(), labels.cuda()) == M.classifier_accuracy(logits, labels)
    gpu_stats = FeatureStats().update(gpu_real)
    assert gpu_stats.device.type == "cuda"
    merged = gpu_stats + FeatureStats().update(fake)  # CPU statistics move to the GPU
    assert merged.device.type == "cuda"
    assert M.fid_from_stats(merged, gpu_stats) == pytest.approx(
        M.fid_from_stats(FeatureStats().update(torch.cat([real, fake])), FeatureStats().update(real)), rel=1e-7
    )


# ------------------------------------------------------------------------------------------- large common offsets
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_fid_is_exact_when_features_share_a_large_offset(feats: tuple[Tensor, Tensor], offset: float) -> None:
    """Centred running sums: FID is translation invariant, so the truth is torch-fidelity's FID of the same features
    without the offset (`x - offset` is exact in float64 here, Sterbenz). Ours is within 1e-9 of it, streamed in
    batches and merged across halves (raw sums were off by 1e-3 relative at 1e6; torch-fidelity on the offset
    features itself is off by 1e-9 there)."""
    real, fake = (f.double() + offset for f in feats)
    ref = fid_statistics_to_metric(
        fid_features_to_statistics(real - offset), fid_features_to_statistics(fake - offset), verbose=False
    )["frechet_inception_distance"]
    assert rel_diff(M.fid(real, fake), ref) < 1e-9
    streamed = FeatureStats()
    for batch in real.split(37):
        streamed.update(batch)
    merged = FeatureStats().update(fake[:200]) + FeatureStats().update(fake[200:] + 0.0)
    assert rel_diff(M.fid_from_stats(streamed, merged), ref) < 1e-9


def test_knn_counts_are_exact_when_features_share_a_large_offset() -> None:
    """Features at 1e4 with a spread of 1e-2 give the hit counts of the same features without the offset."""
    real, fake = 1e-2 * gaussian(300, 16, seed=31).double(), 1e-2 * gaussian(250, 16, seed=32, shift=0.2).double()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    density_coverage = M.density_coverage(real + 1e4, fake + 1e4, k=5)
    assert density_coverage == pytest.approx((ref["density"], ref["coverage"]), rel=1e-12)
    assert M.precision_recall(real + 1e4, fake + 1e4) == M.precision_recall(real, fake)


def test_kid_of_float32_features_uses_float32_dot_products_within_1e6_of_float64() -> None:
    real, fake = gaussian(600, 64, seed=8).float(), gaussian(600, 64, seed=9, shift=0.3).float()
    mean32, std32 = M.kid(real, fake, subsets=10, subset_size=300, seed=1)
    mean64, std64 = M.kid(real.double(), fake.double(), subsets=10, subset_size=300, seed=1)
    assert mean32 != mean64  # another arithmetic: the float32 path is taken
    assert rel_diff(mean32, mean64) < 1e-6 and rel_diff(std32, std64) < 1e-5
