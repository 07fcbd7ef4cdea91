"""The novelty axis (copy rate, authenticity, C_T), class coverage and CAS: against independent reference code, on
the bundled digits (a model that copies its training set must be caught) and through the one evaluation path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from torch import Tensor

import genlab.metrics as M
from genlab.data import MNISTDataModule, SyntheticDataModule
from genlab.evaluator import Evaluator, translated
from genlab.features import random_extractor
from genlab.metrics.novelty import assign_cells, kmeans, mann_whitney_z

NOVELTY = ["copy_rate", "authenticity", "ct", "fid", "fid_heldout"]


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> MNISTDataModule:
    dm = MNISTDataModule(root=str(tmp_path_factory.mktemp("data")), source="bundled")
    dm.setup()
    return dm


def score_sets(dm: MNISTDataModule, extractor=random_extractor, cache_dir: str | None = None) -> dict[str, dict]:
    """Novelty scores of a copycat (training images), shifted copies and the real held-out digits."""
    train, held = dm.train_set, dm.val_set
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:1000]
    copies = train.images[index]
    sets = {
        "copycat": copies,
        "shifted": torch.roll(copies, shifts=1, dims=3),  # one pixel to the right
        "heldout": held.images,
    }
    evaluator = Evaluator(extractor, NOVELTY, num_samples=1000, progress=False, cache_dir=cache_dir)
    return {name: evaluator.evaluate(dm, "cpu", images=images).metrics for name, images in sets.items()}


def check_novelty(scores: dict[str, dict]) -> None:
    copycat, shifted, held = scores["copycat"], scores["shifted"], scores["heldout"]
    assert copycat["copy_rate"] >= 0.9 and copycat["authenticity"] <= 0.1 and copycat["ct"] < -3, copycat
    assert held["copy_rate"] <= 0.1 and held["authenticity"] > copycat["authenticity"] + 0.3, held
    assert abs(held["ct"]) < 1  # the held-out split against itself: no copying, no under-fitting
    assert shifted["copy_rate"] >= 0.9, shifted  # a one-pixel shift does not hide a copy
    assert copycat["fid"] < copycat["fid_heldout"]  # the memorisation gap: closer to train than to new digits


@pytest.mark.slow
def test_copies_of_the_training_set_are_caught_and_held_out_digits_are_not(digits: MNISTDataModule) -> None:
    check_novelty(score_sets(digits))


@pytest.mark.slow
def test_copies_are_caught_in_the_domain_feature_space(digits: MNISTDataModule, tmp_path: Path) -> None:
    from functools import partial

    from genlab.features import load_or_train_domain_extractor

    check_novelty(score_sets(digits, partial(load_or_train_domain_extractor, epochs=2), str(tmp_path)))


def test_translations_include_the_identity_and_undo_a_shift() -> None:
    x = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    x[0, 0, 2:4, 2:4] = 200
    views = translated(torch.roll(x, shifts=1, dims=3), 1)
    assert len(views) == 9 and torch.equal(views[0], torch.roll(x, shifts=1, dims=3))
    assert any(torch.equal(v, x) for v in views)


# ------------------------------------------------------------------------------------------ reference implementations
def reference_authpct(train: np.ndarray, gen: np.ndarray) -> float:
    """layer6ai-labs/dgm-eval `compute_authpct` (torch.cdist, diagonal to inf), as a fraction."""
    train_t, gen_t = torch.tensor(train), torch.tensor(gen)
    real_dists = torch.cdist(train_t, train_t)
    real_dists.fill_diagonal_(float("inf"))
    gen_dists = torch.cdist(train_t, gen_t)
    real_min, gen_min = real_dists.min(axis=0), gen_dists.min(dim=0)
    return float((real_min.values[gen_min.indices] < gen_min.values).double().mean())


def reference_ct(test, test_cells, gen, gen_cells, train, train_cells, tau: float) -> float:
    """casey-meehan/data-copying `C_T` / `Zu_cells` / `Zu`, with numpy nearest neighbours for sklearn's."""

    def zu(pn, qm, t):
        m, n = len(qm), len(pn)
        lqm = np.sqrt(((qm[:, None] - t[None]) ** 2).sum(-1)).min(1)
        lpn = np.sqrt(((pn[:, None] - t[None]) ** 2).sum(-1)).min(1)
        u, _ = scipy.stats.mannwhitneyu(lqm, lpn, alternative="less")
        return (u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)

    k = int(train_cells.max()) + 1
    qm_share = np.bincount(gen_cells, minlength=k) / len(gen)
    pn_share = np.bincount(test_cells, minlength=k) / len(test)
    keep = qm_share > tau
    z = np.array(
        [zu(test[test_cells == i], gen[gen_cells == i], train[train_cells == i]) if keep[i] else 0 for i in range(k)]
    )
    return float(pn_share[keep].dot(z[keep]) / pn_share[keep].sum())


def test_authenticity_matches_dgm_eval() -> None:
    train, gen = gaussian(300, 6, seed=1), gaussian(200, 6, seed=2, shift=0.2)
    gen[:50] = train[:50]  # some exact copies: never authentic
    ours = M.authenticity(train, gen)
    assert ours == pytest.approx(reference_authpct(train.numpy(), gen.numpy()), abs=1e-12)
    assert 0.2 < ours < 0.75
    assert M.authenticity(train, gen, chunk_size=17) == ours


def test_ct_matches_the_data_copying_reference_on_the_same_cells() -> None:
    train, test = gaussian(600, 4, seed=3), gaussian(300, 4, seed=4)
    near_copies = train[:400] + 0.05 * gaussian(400, 4, seed=5)
    fresh = gaussian(400, 4, seed=6)
    centroids = kmeans(train, 5, seed=0)
    cells = [assign_cells(x, centroids).numpy() for x in (train, test, near_copies, fresh)]
    for gen, gen_cells in ((near_copies, cells[2]), (fresh, cells[3])):
        ref = reference_ct(test.numpy(), cells[1], gen.numpy(), gen_cells, train.numpy(), cells[0], 20 / len(gen))
        assert M.data_copying(train, test, gen, cells=5) == pytest.approx(ref, rel=1e-9)
    assert M.data_copying(train, test, near_copies, cells=5) < -5 < 1 > abs(M.data_copying(train, test, fresh, 5))


def test_mann_whitney_z_counts_ties_like_scipy() -> None:
    q, p = torch.tensor([1.0, 2.0, 2.0, 5.0]), torch.tensor([2.0, 3.0, 0.5])
    u, _ = scipy.stats.mannwhitneyu(q.numpy(), p.numpy(), alternative="less")
    n, m = 3, 4
    assert mann_whitney_z(q, p) == pytest.approx((u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12))


def test_copy_rate_matches_a_direct_computation_and_ignores_chunk_size() -> None:
    train, held = gaussian(200, 5, seed=7), gaussian(100, 5, seed=8)
    fake = torch.cat([train[:30] + 1e-3, gaussian(70, 5, seed=9)])
    d = lambda x: torch.cdist(x, train).amin(1).numpy()  # noqa: E731
    tau = np.quantile(d(held), 0.05)
    expected = float((d(fake) <= tau).mean())
    assert M.copy_rate(train, held, fake, quantile=0.05) == pytest.approx(expected)
    assert M.copy_rate(train, held, fake, quantile=0.05, chunk_size=7) == M.copy_rate(train, held, fake, 0.05)
    assert 0.3 <= expected < 0.4
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\), got 1.5"):
        M.copy_rate(train, held, fake, quantile=1.5)


def test_kmeans_is_seeded_and_finds_separated_clusters() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    x = centres.repeat_interleave(50, 0) + 0.1 * gaussian(150, 2, seed=10)
    found = kmeans(x, 3, seed=0)
    assert torch.equal(found, kmeans(x, 3, seed=0))
    assert torch.cdist(found, centres).amin(0).max() < 0.1
    assert torch.bincount(assign_cells(x, found)).tolist() == [50, 50, 50]


# ---------------------------------------------------------------------------------------------------- class coverage
def one_hot_logits(labels: Tensor, classes: int = 10) -> Tensor:
    return 5 * torch.nn.functional.one_hot(labels, classes).double()


def test_a_generator_that_draws_some_classes_is_caught() -> None:
    real = one_hot_logits(torch.arange(1000) % 10)
    three = one_hot_logits(torch.arange(600) % 3)
    assert M.classes_covered(real, three) == 3 and M.classes_covered(real, real) == 10
    p_real = np.full(10, 0.1)
    p_fake = (np.bincount(np.arange(600) % 3, minlength=10) + 0.5) / (600 + 5)
    assert M.class_kl(real, three) == pytest.approx(scipy.stats.entropy(p_real, p_fake))
    assert M.class_kl(real, three) > 1.0 and M.class_kl(real, real) < 1e-2
    rare = one_hot_logits(torch.cat([torch.arange(990) % 9, torch.full((10,), 9)]))  # class 9 at a tenth of its share
    assert M.classes_covered(real, rare, min_share=0.2) == 9 and M.classes_covered(real, rare, min_share=0.1) == 10


# ------------------------------------------------------------------------------------------------------------- CAS
class Lookup(torch.nn.Module):
    """A "conditional generator" that returns real training images of the asked-for class (or of a random class
    when `shuffled`), for CAS's two anchors."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int, shuffled: bool = False) -> None:
        super().__init__()
        self.images, self.labels, self.shuffled, self.num_classes = images, labels, shuffled, num_classes
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def sample(self, n, labels=None, generator=None):
        if self.shuffled:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        pools = [torch.nonzero(self.labels == c).flatten() for c in labels.tolist()]
        picks = torch.stack([pool[torch.randint(0, len(pool), (1,), generator=generator)][0] for pool in pools])
        return self.images[picks].float() / 255


@pytest.mark.slow
def test_cas_of_real_images_is_the_real_classifier_and_shuffled_labels_are_chance() -> None:
    dm = SyntheticDataModule(num_samples=800, image_size=16, num_classes=4)
    dm.setup()
    evaluator = Evaluator(random_extractor, ["cas"], num_samples=640, progress=False, cas_epochs=15)
    train = dm.train_set
    real = evaluator.evaluate(dm, "cpu", model=Lookup(train.images, train.labels, 4)).metrics
    assert real["cas_real"] > 0.9 and abs(real["cas"] - real["cas_real"]) < 0.05, real
    shuffled = evaluator.evaluate(dm, "cpu", model=Lookup(train.images, train.labels, 4, shuffled=True)).metrics
    assert shuffled["cas"] < 0.45 and shuffled["cas_real"] == real["cas_real"], shuffled  # chance is 0.25


def test_cas_is_skipped_without_asked_for_labels(digits: MNISTDataModule, caplog) -> None:
    evaluator = Evaluator(random_extractor, ["fid", "cas"], num_samples=100, progress=False)
    with caplog.at_level("INFO", logger="genlab.evaluator"):
        scores = evaluator.evaluate(digits, "cpu", images=digits.val_set.images[:100]).metrics
    assert "cas" not in scores and "fid" in scores
    assert "cas skipped: needs a conditional model and labelled data" in caplog.text


# ---------------------------------------------------------------------------------------------- the evaluation path
@pytest.mark.slow
def test_scores_do_not_depend_on_the_batch_size(digits: MNISTDataModule) -> None:
    images = torch.roll(digits.train_set.images[-300:], shifts=2, dims=2)  # near the data, tied with no held-out one
    names = ["fid", "fid_heldout", "pr", "dc", "classes", "copy_rate", "authenticity", "ct"]
    big = Evaluator(random_extractor, names, num_samples=300, batch_size=500, progress=False)
    small = Evaluator(random_extractor, names, num_samples=300, batch_size=7, progress=False)
    a, b = (e.evaluate(digits, "cpu", images=images).metrics for e in (big, small))
    assert a.keys() == b.keys() and set(a) >= {"copy_rate", "class_kl", "classes_covered", "ct"}
    for key in a:
        # the extractor's float32 features differ in the last bits between batch sizes (BLAS blocking); C_T ranks
        # distances, so two near-equal ones may swap: it gets a tolerance of a hundredth of a z-unit
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-2 if key == "ct" else 1e-9), key
    features = big.evaluate(digits, "cpu", images=images).fake.features
    train, held = big.train.features, big.heldout.features
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))
    assert M.data_copying(train, held, features[order]) == pytest.approx(M.data_copying(train, held, features))


def test_real_feature_cache_is_keyed_on_the_images(tmp_path: Path) -> None:
    """Two synthetic datasets that differ only in their seed used to be served each other's cached features."""
    results = []
    for seed in (0, 1):
        dm = SyntheticDataModule(num_samples=200, image_size=16, seed=seed)
        evaluator = Evaluator(random_extractor, ["fid"], num_samples=100, progress=False, cache_dir=str(tmp_path))
        evaluator.setup(dm, "cpu")
        results.append(evaluator.train.features)
    assert not torch.equal(results[0], results[1])
    assert len(list((tmp_path / "features").glob("real-synthetic-train-*.pt"))) == 2


def test_nearest_neighbour_grid_puts_each_sample_beside_its_training_neighbours(digits: MNISTDataModule) -> None:
    evaluator = Evaluator(random_extractor, ["fid"], num_samples=100, progress=False)
    copies = digits.train_set.images[:100]
    scores = evaluator.evaluate(digits, "cpu", images=copies)
    grid = evaluator.nearest_neighbour_grid(scores.fake, rows=4, k=5)
    assert grid.shape == (3, 4 * 30 + 2, 6 * 30 + 2)  # 4 rows of a sample and 5 neighbours, 28 px + 2 px padding
    first_sample, first_neighbour = grid[:, 3:29, 3:29], grid[:, 3:29, 33:59]  # inside the sample's red ring
    assert torch.equal(first_sample, first_neighbour)  # a copy's nearest training image is itself
    assert grid[:, 2, 2].tolist() == [1.0, 0.0, 0.0] and grid[0, 2, 32] == grid[1, 2, 32]  # red only on samples
