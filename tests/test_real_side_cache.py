"""The real side's share of FID, KID, P&R and D&C is computed once per real side and reused: the reused value gives
the number a fresh computation gives, and a second evaluation computes none of it again."""

from __future__ import annotations

import pytest
import torch

import genlab.metrics as M
from genlab.data import SyntheticDataModule
from genlab.evaluator import Evaluator
from genlab.features import random_extractor
from genlab.metrics import kernel_distance


def features(n: int, dim: int = 16, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + shift


def test_fid_with_a_kept_reference_equals_fid_from_features() -> None:
    real, fake = features(300), features(200, seed=1, shift=0.3)
    reference = M.fid_reference(real)
    assert M.fid(real, fake, reference=reference) == pytest.approx(M.fid(real, fake), rel=1e-12)
    assert M.fid_from_stats(reference, M.FeatureStats().update(fake)) == pytest.approx(M.fid(real, fake), rel=1e-12)
    other = M.fid_reference(features(300, seed=2, shift=1.0))  # a wrong reference changes the number: it is used
    assert M.fid(real, fake, reference=other) != pytest.approx(M.fid(real, fake), rel=1e-3)


@pytest.mark.parametrize("n", [300, 10])  # positive definite: Cholesky; N < D, singular: the eigh square root
def test_the_covariance_factor_reproduces_the_covariance_and_fid_agrees_with_the_square_root(n: int) -> None:
    from genlab.metrics import frechet

    sigma = M.FeatureStats().update(features(n, seed=3)).covariance
    factor = frechet.covariance_factor(sigma)
    assert bool((factor.triu(1) == 0).all()) == (n == 300)  # triangular exactly when Cholesky succeeded
    torch.testing.assert_close(factor @ factor.T, sigma, rtol=0, atol=1e-12)
    other = M.FeatureStats().update(features(200, seed=4, shift=0.2)).covariance
    by_root = frechet.trace_sqrt_product(sigma, other, frechet.sqrtm_psd(sigma))
    assert float(frechet.trace_sqrt_product(sigma, other)) == pytest.approx(float(by_root), rel=1e-10)


@pytest.mark.parametrize("full", [True, False])  # the full-kernel path and the per-subset path
def test_kid_with_kept_real_sums_equals_kid(full: bool, monkeypatch) -> None:
    if not full:
        monkeypatch.setattr(kernel_distance, "CACHE_MAX_ELEMENTS", 0)
    real, fake = features(120), features(100, seed=1, shift=0.2)
    sums = M.kid_real_sums(real, n_fake=100, subsets=7, subset_size=30, seed=5)
    assert M.kid(real, fake, 7, 30, 5, real_sums=sums) == pytest.approx(M.kid(real, fake, 7, 30, 5), rel=1e-12)
    wrong = M.kid_real_sums(real, n_fake=100, subsets=7, subset_size=30, seed=6)  # other draws: another number
    assert M.kid(real, fake, 7, 30, 5, real_sums=wrong)[0] != pytest.approx(M.kid(real, fake, 7, 30, 5)[0])
    with pytest.raises(ValueError, match=r"real_sums has shape \(7,\), expected \(8,\)"):
        M.kid(real, fake, 8, 30, 5, real_sums=sums)


def test_the_kid_paths_agree_with_each_other(monkeypatch) -> None:
    real, fake = features(120), features(100, seed=1, shift=0.2)
    full = M.kid(real, fake, 7, 30, 5)
    monkeypatch.setattr(kernel_distance, "CACHE_MAX_ELEMENTS", 0)
    assert M.kid(real, fake, 7, 30, 5) == pytest.approx(full, rel=1e-10)


def test_knn_metrics_with_kept_radii_equal_fresh_ones() -> None:
    real, fake = features(150), features(130, seed=1, shift=0.2)
    r3, r5 = M.knn_radii(real, 3, squared=True), M.knn_radii(real, 5, squared=True)
    assert torch.equal(r3.sqrt(), M.knn_radii(real, 3))
    assert M.precision_recall(real, fake, 3, real_radii=r3) == M.precision_recall(real, fake, 3)
    assert M.density_coverage(real, fake, 5, real_radii=r5) == M.density_coverage(real, fake, 5)
    assert M.density_coverage(real, fake, 5, real_radii=r5 * 4) != M.density_coverage(real, fake, 5)  # it is used
    with pytest.raises(ValueError, match=r"radii have shape \(149,\), expected \(150,\)"):
        M.precision_recall(real, fake, 3, real_radii=r3[:-1])


def test_knn_metrics_give_each_pair_what_its_own_function_gives() -> None:
    real, fake = features(150), features(130, seed=1, shift=0.2)
    joint = M.knn_metrics(real, fake, 3, 5)
    assert (joint["precision"], joint["recall"]) == M.precision_recall(real, fake, 3)
    assert (joint["density"], joint["coverage"]) == M.density_coverage(real, fake, 5)
    one_k = {**M.knn_metrics(real, fake, 4, None), **M.knn_metrics(real, fake, None, 4)}
    assert M.knn_metrics(real, fake, 4, 4) == one_k  # the same k for both: one set of real radii
    r3, r5 = M.knn_radii(real, (3, 5), squared=True)
    assert torch.equal(r3, M.knn_radii(real, 3, squared=True)) and torch.equal(r5, M.knn_radii(real, 5, squared=True))
    assert M.knn_metrics(real, fake, 3, 5, real_radii={3: r3, 5: r5}) == joint
    with pytest.raises(ValueError, match=r"real_radii has radii for k=\[3\], not for k=\[5\]"):
        M.knn_metrics(real, fake, 3, 5, real_radii={3: r3})
    with pytest.raises(ValueError, match="needs pr_k or dc_k"):
        M.knn_metrics(real, fake, None, None)


@pytest.mark.parametrize("metrics", [["pr"], ["dc"], ["dc", "pr"]])
def test_an_evaluation_takes_pr_and_dc_from_one_pass_and_either_alone_works(metrics: list[str], monkeypatch) -> None:
    passes = []
    original = M.knn_metrics
    monkeypatch.setattr(M, "knn_metrics", lambda *a, **k: passes.append(a[2:4]) or original(*a, **k))
    data = SyntheticDataModule(num_samples=120, image_size=16)
    images = torch.randint(0, 256, (40, 1, 16, 16), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    scores = Evaluator(random_extractor, metrics, num_samples=40, progress=False).evaluate(data, "cpu", images=images)
    assert passes == [(3 if "pr" in metrics else None, 5 if "dc" in metrics else None)]
    keys = {"pr": ["precision", "recall"], "dc": ["density", "coverage"]}
    assert sorted(scores.metrics) == sorted(key for m in metrics for key in keys[m])


def test_a_second_evaluation_recomputes_nothing_of_the_real_side(monkeypatch) -> None:
    calls: dict[str, int] = {}
    for name in ("fid_reference", "kid_real_sums", "knn_radii", "knn_metrics"):
        original = getattr(M, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(M, name, counted)
    data = SyntheticDataModule(num_samples=120, image_size=16)
    evaluator = Evaluator(
        random_extractor, ["fid", "kid", "pr", "dc"], num_samples=40, kid_subsets=4, kid_subset_size=20, progress=False
    )
    images = [torch.randint(0, 256, (40, 1, 16, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    first = evaluator.evaluate(data, "cpu", images=images[0].to(torch.uint8)).metrics
    assert calls == {"fid_reference": 1, "kid_real_sums": 1, "knn_radii": 1, "knn_metrics": 1}  # radii: k=3 and 5
    second = evaluator.evaluate(data, "cpu", images=images[1].to(torch.uint8)).metrics
    assert calls == {"fid_reference": 1, "kid_real_sums": 1, "knn_radii": 1, "knn_metrics": 2}
    assert first != second
    fresh = Evaluator(
        random_extractor, ["fid", "kid", "pr", "dc"], num_samples=40, kid_subsets=4, kid_subset_size=20, progress=False
    )
    assert fresh.evaluate(data, "cpu", images=images[1].to(torch.uint8)).metrics == pytest.approx(second, rel=1e-12)
    assert calls == {"fid_reference": 2, "kid_real_sums": 2, "knn_radii": 2, "knn_metrics": 3}  # the fresh one's own
    other = SyntheticDataModule(num_samples=120, image_size=16, seed=1)  # another real side: computed again
    evaluator.evaluate(other, "cpu", images=images[1].to(torch.uint8))
    assert calls == {"fid_reference": 3, "kid_real_sums": 3, "knn_radii": 3, "knn_metrics": 4}


def test_the_real_side_results_are_cached_on_disk_beside_the_features(tmp_path, monkeypatch) -> None:
    data = SyntheticDataModule(num_samples=120, image_size=16)
    images = torch.randint(0, 256, (40, 1, 16, 16), generator=torch.Generator().manual_seed(1)).to(torch.uint8)

    def evaluator() -> Evaluator:
        metrics = ["fid", "kid", "pr", "dc", "authenticity", "copy_rate"]
        args = dict(num_samples=40, kid_subsets=4, kid_subset_size=20, progress=False, cache_dir=str(tmp_path))
        return Evaluator(random_extractor, metrics, **args)

    first = evaluator().evaluate(data, "cpu", images=images).metrics
    files = sorted("-".join(p.name.split("-")[2:-1]) for p in (tmp_path / "features").glob("derived-*.pt"))
    assert files == [
        "copy-threshold",
        "fid-factor",
        "kid-real-sums",
        "knn-radii",  # k = 3 (P&R) and 5 (D&C), from one pass
        "train-nearest-other",
        "train-translations",
    ]
    monkeypatch.setattr(Evaluator, "train_translations", lambda *a: pytest.fail("translations extracted again"))
    monkeypatch.setattr(M, "knn_radii", lambda *a, **k: pytest.fail("the radii were computed again"))
    monkeypatch.setattr(M, "fid_reference", lambda *a, **k: pytest.fail("the FID reference was computed again"))
    assert evaluator().evaluate(data, "cpu", images=images).metrics == first  # a new process reads them back
