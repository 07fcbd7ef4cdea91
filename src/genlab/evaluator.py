"""Score a generative model, or a set of images, against a datamodule: the one evaluation path of genlab.

`Evaluator.evaluate` is what both the `GenerativeEval` callback and `evaluate.py` call. Features are extracted
once per side and every metric of `genlab.metric_table` is computed from them (torch-fidelity's layering:
features -> statistics -> metric):

- real side: the whole training split and the held-out split (the test split where the dataset has one, else
  the validation split), extracted once and cached on disk under a hash of the images themselves, the
  extractor, its weights hash and the precision; FID, KID, P&R and D&C use a fixed random subset of the
  training split as large as the generated set. What the metrics derive from the real side alone (FID's
  statistics and covariance factor, the k-NN radii, KID's real-real kernel sums, the novelty thresholds) is
  computed once per real side (`Evaluator.memo`) and cached on disk beside its features, the translated training
  features of the copy rate too where they fit in 256 MiB;
- fake side: `sample()` in seeded batches (`genlab.feature_sets`), split across DDP ranks and gathered; batches
  that run out of GPU memory are redone in halves.

Nothing is scored from NaN or inf: generated samples or features that are not finite raise a
`genlab.feature_sets.NonFiniteError` (the callback logs it and training goes on), and a metric that comes out
non-finite is left out of the results with an error line naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab import metric_table
from genlab.feature_sets import (
    FeatureSet,
    batch_plan,
    check_finite,
    extract_images,
    gather_batches,
    sample_features,
)
from genlab.features.base import ExtractorFactory, FeatureExtractor
from genlab.features.cache import atomic_save, checked_load, load_or_compute, tensors_hash
from genlab.metrics.frechet import FidReference
from genlab.metrics.knn import nearest
from genlab.speed import speed_up

log = logging.getLogger(__name__)

MAX_CACHED_BYTES = 2**28  # real-side results up to 256 MiB are cached on disk (see `Evaluator.memo`)


def reference_index(n_total: int, n: int) -> Tensor:
    """Indices of `n` of `n_total` images (all if n >= n_total), chosen by a fixed seed and kept in order: datasets
    are often stored sorted by class, so the first n would miss classes."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(0))[:n].sort().values


def translated(images: Tensor, pixels: int) -> list[Tensor]:
    """Every translation of uint8 images (N, C, H, W) by (dy, dx) in [-pixels, pixels]^2, the identity first,
    with the border pixels repeated into the uncovered margin."""
    if pixels == 0:
        return [images]
    shifts = [(0, 0)] + [(dy, dx) for dy in range(-pixels, pixels + 1) for dx in range(-pixels, pixels + 1) if dy or dx]
    h, w = images.shape[-2:]
    padded = F.pad(images.float(), [pixels] * 4, mode="replicate")
    return [
        padded[..., pixels + dy : pixels + dy + h, pixels + dx : pixels + dx + w].to(torch.uint8) for dy, dx in shifts
    ]


def compute_metrics(real: FeatureSet, fake: FeatureSet, metrics: Sequence[str], **settings: Any) -> dict[str, float]:
    """The table's `metrics` from two feature sets alone (real is both the FID reference and the training split;
    no held-out split): for features computed elsewhere. A metric whose needs are not met raises."""
    inputs = metric_table.Inputs(real=real, fake=fake, train=real)
    num_classes = real.logits.shape[1] if real.logits is not None else 0
    chosen = metric_table.select(list(metrics))
    return metric_table.compute(chosen, inputs, metric_table.check_settings(settings), num_classes)


def finite_only(results: dict[str, float]) -> dict[str, float]:
    """`results` without its NaN and inf values, each one dropped named in an error line: no number computed from
    NaN is ever reported."""
    for key, value in results.items():
        if not math.isfinite(value):
            log.error(f"eval: {key} came out as {value}; it is not reported")
    return {key: value for key, value in results.items() if math.isfinite(value)}


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in `obj` (as `on_device` walks it)."""
    if isinstance(obj, Tensor):
        return obj.nbytes
    if isinstance(obj, FidReference):
        return sum(t.nbytes for t in (obj.mean, obj.covariance, obj.factor))
    if isinstance(obj, tuple | list):
        return sum(tensor_bytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(x) for x in obj.values())
    return 0


def on_device(obj: Any, device: torch.device) -> Any:
    """`obj` (a tensor, a FidReference, a number, or tuples, lists and dicts of them) with its tensors on `device`."""
    if isinstance(obj, Tensor | FidReference):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(on_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: on_device(v, device) for k, v in obj.items()}
    return obj


@dataclass
class Scores:
    """What one evaluation produced: the metrics, and the generated side (features, logits, labels, images)."""

    metrics: dict[str, float]
    fake: FeatureSet


class Evaluator:
    """Every setting of an evaluation, and what it keeps between evaluations (the extractor, the real features).

    Args:
        extractor: an extractor factory (an extractor config with `_partial_: true`, see
            `genlab.features.base.ExtractorFactory`).
        metrics: `default` (the per-epoch metrics of `genlab.metric_table`), `all`, or a list of metric names.
        num_samples: generated images per evaluation; the FID reference is as many training images (or all).
        batch_size: images per `sample()` call and per extractor batch.
        precision: the arithmetic of feature extraction, fp32 | tf32 | bf16 (`genlab.features.precision`);
            recorded with every number.
        channels_last, compile: the extractor in channels_last memory format, compiled (`genlab.speed`).
        cache_dir: where real features and trained extractors are cached (None: no cache).
        seed: seed of the sampling noise (the same samples every evaluation for the same weights).
        progress: progress bars while sampling and extracting.
        **settings: metric settings (`genlab.metric_table.SETTINGS`); an unknown name is an error.
    """

    def __init__(
        self,
        extractor: ExtractorFactory,
        metrics: str | Sequence[str] = "default",
        num_samples: int = 5000,
        batch_size: int = 500,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
        progress: bool = True,
        **settings: Any,
    ) -> None:
        from genlab.checks import ConfigError, check_positive_int

        check_positive_int("num_samples", num_samples)
        check_positive_int("batch_size", batch_size)
        if not callable(extractor):
            from genlab.preflight import extractor_names

            names = extractor_names()
            raise ConfigError(
                f"eval.extractor={extractor!r} is not an extractor config: choose one with eval/extractor=<name>, "
                f"one of {names} (configs/eval/extractor/)"
            )
        chosen = metric_table.select(list(metrics) if not isinstance(metrics, str) else metrics)
        self.factory, self.metric_names = extractor, [m.name for m in chosen]  # names: the table's rows don't pickle
        self.settings = metric_table.check_settings(settings)
        # found now, not after the first training epoch; against the reference's size again in `setup`
        metric_table.check_sample_counts(self.metric_names, self.settings, num_samples, num_real=None)
        self.num_samples, self.batch_size, self.precision = num_samples, batch_size, precision
        self.channels_last, self.compile = channels_last, compile
        self.cache_dir, self.seed, self.progress = cache_dir, seed, progress
        self.extractor: FeatureExtractor | None = None
        self._data: Any = None
        self._train: FeatureSet | None = None
        self._heldout: FeatureSet | None = None
        self._reference: FeatureSet | None = None
        self._memo: dict[Any, Any] = {}
        self._real_keys: list[dict] = []  # the cache keys of the real splits that the memo's results derive from
        self.skipped: dict[str, str] = {}  # metric name -> why it could not be computed (logged once)

    @property
    def metrics(self) -> list[metric_table.Metric]:
        return [metric_table.BY_NAME[name] for name in self.metric_names]

    # ------------------------------------------------------------------------------------------------ set-up
    def setup(self, datamodule, device: torch.device | str, progress: bool | None = None) -> None:
        """Build the extractor and the real side for `datamodule` (once; again for another datamodule)."""
        progress = self.progress if progress is None else progress
        if self.extractor is None:
            folder = str(Path(self.cache_dir) / "extractors") if self.cache_dir else None
            with torch.inference_mode(False), torch.enable_grad():  # a trained extractor may train here
                self.extractor = self.factory(
                    datamodule=datamodule, cache_dir=folder, precision=self.precision, progress=progress
                )
            self.extractor = self.extractor.to(device).eval()
            speed_up(self.extractor, self.channels_last, self.compile, "eval: extractor", device)
        if self._data is not datamodule:
            datamodule.setup("fit")
            held = datamodule.test_set if datamodule.test_set is not None else datamodule.val_set
            self._real_keys = []
            self._train = self.real_features(datamodule, datamodule.train_set, "train", device, progress)
            self._heldout = self.real_features(datamodule, held, "heldout", device, progress) if held else None
            self._data, self._memo = datamodule, {}
        self._train, self._heldout = self._train.to(device), None if self._heldout is None else self._heldout.to(device)
        metric_table.check_sample_counts(self.metric_names, self.settings, self.num_samples, len(self._train))
        self._reference = self._train[reference_index(len(self._train), self.num_samples).to(device)]
        self.extractor.to(device)

    def real_features(self, datamodule, split, name: str, device, progress: bool) -> FeatureSet:
        """Features, logits and labels of a real split, cached on disk under a hash of its images."""
        e = self.extractor
        key = {
            "data": datamodule.name,
            "split": name,
            "images": tensors_hash(split.images, split.labels),
            "n": len(split.images),
            "extractor": e.name,
            "hash": e.weights_hash(),
            "precision": e.precision,
        }
        # channels_last and compile change the arithmetic too: the real side must come from the same one as the
        # generated side, or a copied image no longer has exactly its original's features
        switches = [s for s, on in (("channels_last", self.channels_last), ("compile", self.compile)) if on]
        if switches:
            key["switches"] = switches
        self._real_keys.append(key)
        path = None
        if self.cache_dir:
            suffix = "".join(f"-{s}" for s in switches)
            path = (
                Path(self.cache_dir)
                / "features"
                / f"real-{datamodule.name}-{name}-{key['images']}-{e.name}-{key['hash']}-{e.precision}{suffix}.pt"
            )

        def compute() -> dict[str, Tensor]:
            found = extract_images(
                split.images, split.labels, e, device, self.batch_size, progress, f"eval: {name} features"
            )
            return {k: v.cpu() for k, v in found.as_dict().items() if k != "images"}

        saved, _ = load_or_compute(path, key, compute)  # recomputed if corrupt or stale; one process computes
        return FeatureSet(**saved, images=split.images).to(device)

    @property
    def train(self) -> FeatureSet | None:
        """The whole training split's features, logits, labels and images (after `setup`)."""
        return self._train

    @property
    def heldout(self) -> FeatureSet | None:
        """The held-out split's (the test split where the dataset has one, else validation), after `setup`."""
        return self._heldout

    @property
    def reference(self) -> FeatureSet:
        """The FID reference: a fixed random subset of the training split, as large as the generated set (after
        `setup`)."""
        return self._reference

    # --------------------------------------------------------------------------------------------- fake side
    def model_features(
        self, model, image_shape, rank: int = 0, world: int = 1, all_gather=None, progress=None
    ) -> FeatureSet:
        """The generated side of `model`: this process's share of the sample batches, gathered from all (checked
        for NaN and inf by `evaluate`, after the gather, so that all processes agree)."""
        batch_size = min(self.batch_size, math.ceil(self.num_samples / world))  # every rank gets a batch
        mine = list(range(rank, len(batch_plan(self.num_samples, batch_size)), world))
        progress = self.progress if progress is None else progress
        sets = sample_features(
            model, self.extractor, self.num_samples, batch_size, self.seed, image_shape, mine, progress, check=False
        )
        return gather_batches(sets, self.num_samples, batch_size, rank, world, all_gather)

    # ---------------------------------------------------------------------------------------------- scoring
    def evaluate(
        self,
        datamodule,
        device: torch.device | str,
        model=None,
        images: Tensor | None = None,
        rank: int = 0,
        world: int = 1,
        all_gather: Callable | None = None,
        progress: bool | None = None,
    ) -> Scores:
        """Score `model` (sampled) or uint8 `images` (N, C, H, W) against `datamodule`: the one scoring function.
        Raises a NonFiniteError, naming how many, if generated samples or their features hold NaN or inf."""
        if (model is None) == (images is None):
            raise ValueError("give exactly one of model=<a genlab model> or images=<uint8 tensor>")
        progress = self.progress if progress is None else progress
        self.setup(datamodule, device, progress)
        with torch.no_grad():
            if model is not None:
                fake = self.model_features(model, tuple(datamodule.image_shape), rank, world, all_gather, progress)
            else:
                fake = extract_images(images, None, self.extractor, device, self.batch_size, progress, "eval: images")
            check_finite(fake)
            return Scores(self.score(fake, datamodule.num_classes), fake)

    def score(self, fake: FeatureSet, num_classes: int) -> dict[str, float]:
        """Every selected metric whose needs are met, as a flat dict of finite floats (the others are logged once;
        a non-finite value is dropped with an error line)."""
        inputs = metric_table.Inputs(
            real=self.reference,
            fake=fake,
            train=self._train,
            heldout=self._heldout,
            train_translations=self.train_translations,
            fit=lambda epochs: self.classifier_trainer(num_classes, epochs),
            memo=self.memo,
        )
        return finite_only(metric_table.compute(self.metrics, inputs, self.settings, num_classes, self.log_skip))

    def log_skip(self, name: str, why: str) -> None:
        if name not in self.skipped:  # once per evaluator, not at every evaluation
            self.skipped[name] = why
            log.info(f"eval: {name} skipped: {why}")

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """`compute()` once per real side: for results that depend on real data only (`key`: a tuple naming the
        result and its settings). Kept in memory, and on disk beside the real features when there is a cache and
        the result is at most MAX_CACHED_BYTES (the translated training features of a large dataset are not)."""
        if key not in self._memo:
            path, cache_key = None, {"real": self._real_keys, "num_samples": self.num_samples, "memo": repr(key)}
            if self.cache_dir:
                digest = hashlib.sha256(json.dumps(cache_key, sort_keys=True).encode()).hexdigest()[:16]
                path = Path(self.cache_dir) / "features" / f"derived-{self._data.name}-{key[0]}-{digest}.pt"
            found = checked_load(path, cache_key, classes=(FidReference,)) if path else None
            if found is not None:
                found = on_device(found, self._train.features.device)
            else:
                found = compute()
                if path and tensor_bytes(found) <= MAX_CACHED_BYTES:
                    atomic_save(on_device(found, torch.device("cpu")), path, cache_key)
            self._memo[key] = found
        return self._memo[key]

    def train_translations(self, pixels: int) -> Tensor:
        """(V N_t, D) features of the training images and of their translations by up to `pixels` in each
        direction (V = (2 pixels + 1)^2), the untranslated ones first."""
        train = self._train
        views = [
            extract_images(x, None, self.extractor, train.features.device, self.batch_size, False).features
            for x in translated(train.images, pixels)[1:]
        ]
        return torch.cat([train.features, *views])

    def classifier_trainer(self, num_classes: int, epochs: int):
        from genlab.features.domain import fit_classifier

        return lambda images, labels: fit_classifier(images, labels, num_classes, epochs, seed=self.seed)

    # ------------------------------------------------------------------------------------------------ grids
    def nearest_neighbour_grid(self, fake: FeatureSet, rows: int = 16, k: int = 5) -> Tensor:
        """A (3, H', W') RGB image in [0, 1]: `rows` generated samples, each followed by its k nearest training
        images in the extractor's feature space (nearest first), one sample per row; each sample's outermost
        pixel ring is drawn red, so that the sample column cannot be mistaken for a neighbour."""
        from torchvision.utils import make_grid

        n = min(rows, len(fake))
        _, index = nearest(fake.features[:n], self._train.features, k)
        samples = fake.images[:n].float().cpu().expand(-1, 3, -1, -1) / 255  # grey or RGB -> (n, 3, H, W)
        ring = torch.ones(samples.shape[2:], dtype=torch.bool)
        ring[1:-1, 1:-1] = False
        samples = samples.clone()
        samples[:, :, ring] = torch.tensor([1.0, 0.0, 0.0])[:, None]  # (n, 3, ring pixels) <- red
        neighbours = self._train.images[index.flatten().to(self._train.images.device)].float().cpu() / 255
        neighbours = neighbours.expand(-1, 3, -1, -1).reshape(n, k, 3, *samples.shape[2:])
        tiles = torch.cat([samples[:, None], neighbours], dim=1).flatten(0, 1)  # (n * (k + 1), 3, H, W)
        return make_grid(tiles, nrow=k + 1, padding=2, pad_value=0.5)

    def describe(self) -> str:
        e = self.extractor
        return f"{e.name} {e.weights_hash()} {e.precision}, {self.num_samples} samples"
