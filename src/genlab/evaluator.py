"""Score a generative model: features are extracted once, and every metric is computed from them.

The real side (the dataset's train split) is extracted once per dataset/count/extractor/precision and
cached on disk; the fake side is sampled through the model's `sample()` in batches. Batch b is drawn with
its own seeded generator and its own labels, so the sample set is the same whatever the batch-to-process
assignment: a DDP run scores exactly what one process scores. Used by the `GenerativeEval` callback and by
`evaluate.py`; follows torch-fidelity's layering (features -> statistics -> metric).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genlab import metrics as M
from genlab.features.base import FeatureExtractor
from genlab.features.cache import load_or_compute

log = logging.getLogger(__name__)

METRIC_GROUPS = {
    "fid": ("fid",),
    "is": ("is", "is_std"),
    "kid": ("kid", "kid_std"),
    "pr": ("precision", "recall"),
    "dc": ("density", "coverage"),
    "intra_fid": ("intra_fid",),
    "accuracy": ("accuracy",),
}
CONDITIONAL_GROUPS = ("intra_fid", "accuracy")
NEEDS_LOGITS = ("is", "accuracy")


def check_metric_names(names: Sequence[str]) -> list[str]:
    """The metric groups asked for, validated; an unknown name raises a ValueError listing the valid ones."""
    unknown = [name for name in names if name not in METRIC_GROUPS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {list(METRIC_GROUPS)}")
    return list(dict.fromkeys(names))


@dataclass
class FeatureSet:
    """What an extractor made of a set of images: features (N, D), logits (N, K) or None, labels (N,) or None."""

    features: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def to(self, device: torch.device | str) -> FeatureSet:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FeatureSet(move(self.features), move(self.logits), move(self.labels))

    def as_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @staticmethod
    def concat(sets: Sequence[FeatureSet]) -> FeatureSet:
        cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
        return FeatureSet(cat([s.features for s in sets]), cat([s.logits for s in sets]), cat([s.labels for s in sets]))


@torch.no_grad()
def extract(
    extractor: FeatureExtractor, batches: Iterable[tuple[Tensor, Tensor | None]], device: torch.device | str
) -> FeatureSet:
    """Run `extractor` over (images in [0, 1], labels or None) batches; results stay on `device`."""
    sets = []
    for x, y in batches:
        f, lg = extractor(x.to(device))
        sets.append(FeatureSet(f.float(), None if lg is None else lg.float(), None if y is None else y.to(device)))
    return FeatureSet.concat(sets)


def batch_plan(num_samples: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of every sample batch; batch b always covers the same sample indices."""
    return [(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


def sample_batch(model, start: int, end: int, seed: int, image_shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """Samples start..end-1 of the evaluation set: seeded by (seed, start), labels cycling over the classes."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
    labels = torch.arange(start, end, device=model.device) % model.num_classes if model.num_classes else None
    x = model.sample(end - start, labels=labels, generator=generator)
    if tuple(x.shape) != (end - start, *image_shape):
        raise ValueError(
            f"{type(model).__name__}.sample({end - start}) returned shape {tuple(x.shape)}, "
            f"expected {(end - start, *image_shape)} (the data's image shape)"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{type(model).__name__}.sample() returned NaN or inf values: the model has diverged")
    return x, labels


def sample_features(
    model,
    extractor: FeatureExtractor,
    num_samples: int,
    batch_size: int,
    seed: int,
    image_shape: tuple[int, ...],
    batches: Sequence[int] | None = None,
    progress: bool = True,
) -> list[FeatureSet]:
    """Features of the sample batches `batches` (all by default), one FeatureSet per batch."""
    plan = batch_plan(num_samples, batch_size)
    chosen = range(len(plan)) if batches is None else batches
    out = []
    for b in tqdm(chosen, desc="eval: sampling", leave=False, disable=not progress):
        start, end = plan[b]
        out.append(extract(extractor, [sample_batch(model, start, end, seed, image_shape)], model.device))
    return out


def dataset_features(
    datamodule,
    extractor: FeatureExtractor,
    n: int,
    precision: str,
    cache_dir: str | Path | None,
    device: torch.device | str,
    batch_size: int = 500,
    progress: bool = True,
) -> FeatureSet:
    """Features of `n` training images of `datamodule` (the reference side), cached on disk. The images are a
    seeded random subset when n is smaller than the split: datasets are often stored sorted by class."""
    images, labels = reference_subset(datamodule.train_set.images, datamodule.train_set.labels, n)
    key = {
        "data": datamodule.name,
        "split": "train",
        "n": len(images),
        "subset": "randperm0",
        "shape": "x".join(map(str, images.shape[1:])),
        "extractor": extractor.name,
        "hash": extractor.weights_hash(),
        "precision": precision,
    }
    name = "real-" + "-".join(str(v) for v in key.values()).replace("/", "_") + ".pt"
    path = Path(cache_dir) / "features" / name if cache_dir else None

    def compute() -> dict[str, Tensor]:
        found = extract_images(images, labels, extractor, device, batch_size, progress, "eval: real features")
        return {k: v.cpu() for k, v in found.as_dict().items()}

    # recomputed if corrupt or stale; of several processes, one computes and the others read its file
    saved, _ = load_or_compute(path, key, compute)
    return FeatureSet(**saved).to(device)


def reference_subset(images: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """`n` of the images (all if n >= N), chosen by a fixed seed and kept in dataset order."""
    if n >= len(images):
        return images, labels
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return images[index], labels[index]


def make_extractor(
    name: str,
    datamodule,
    cache_dir: str | None,
    weights_path: str | None = None,
    precision: str = "fp32",
    progress: bool = True,
) -> FeatureExtractor:
    """The extractor called `name` for this dataset: domain (trained on it, cached), inception or random."""
    from genlab.features import build_extractor, load_or_train_domain_extractor

    if name == "domain":
        folder = Path(cache_dir) / "domain" if cache_dir else None
        return load_or_train_domain_extractor(datamodule, folder, progress=progress)
    if name == "inception":
        return build_extractor("inception", weights_path=weights_path, precision=precision)
    if name == "random":
        return build_extractor("random", image_shape=tuple(datamodule.image_shape))
    return build_extractor(name)  # raises, listing the valid names


def extract_images(
    images: Tensor,
    labels: Tensor | None,
    extractor: FeatureExtractor,
    device: torch.device | str,
    batch_size: int = 500,
    progress: bool = True,
    desc: str = "eval: features",
) -> FeatureSet:
    """Features of uint8 images (N, C, H, W) (and their labels, if any), `batch_size` at a time."""
    chunks = [
        (images[i : i + batch_size].float() / 255, None if labels is None else labels[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return extract(extractor, tqdm(chunks, desc=desc, leave=False, disable=not progress), device)


@dataclass
class MetricSettings:
    """Arguments of the metric functions (see `genlab.metrics`)."""

    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    dc_k: int = 5


def compute_metrics(
    real: FeatureSet, fake: FeatureSet, groups: Sequence[str], settings: MetricSettings | None = None
) -> dict[str, float]:
    """Every metric of `groups` from the two feature sets (same device), as a flat dict of floats."""
    s = settings or MetricSettings()
    for group in groups:
        if group in NEEDS_LOGITS and fake.logits is None:
            raise ValueError(f"metric '{group}' needs an extractor with logits (inception or domain)")
        if group in CONDITIONAL_GROUPS and (fake.labels is None or real.labels is None):
            raise ValueError(f"metric '{group}' needs a conditional model (num_classes > 0) and labelled real data")
    kid_size = s.kid_subset_size
    if "kid" in groups and min(len(real), len(fake)) < kid_size:
        raise ValueError(
            f"KID subsets of {kid_size} need at least that many real and fake samples, got {len(real)} real and "
            f"{len(fake)} fake: lower eval.kid_subset_size or raise eval.num_samples"
        )
    results: dict[str, Callable[[], Sequence[float] | float]] = {
        "fid": lambda: M.fid(real.features, fake.features),
        "is": lambda: M.inception_score(fake.logits, splits=s.is_splits),
        "kid": lambda: M.kid(real.features, fake.features, subsets=s.kid_subsets, subset_size=kid_size),
        "pr": lambda: M.precision_recall(real.features, fake.features, k=s.pr_k),
        "dc": lambda: M.density_coverage(real.features, fake.features, k=s.dc_k),
        "intra_fid": lambda: M.intra_fid(real.features, real.labels, fake.features, fake.labels),
        "accuracy": lambda: M.classifier_accuracy(fake.logits, fake.labels),
    }
    out: dict[str, float] = {}
    for group in groups:
        value = results[group]()
        values = value if isinstance(value, tuple | list) else (value,)
        out.update({name: float(v) for name, v in zip(METRIC_GROUPS[group], values, strict=True)})
    return out


def gather_batches(
    mine: list[FeatureSet], num_samples: int, batch_size: int, rank: int, world_size: int, all_gather: Callable
) -> FeatureSet:
    """All processes' sample batches in batch order. Rank r holds batches r, r + W, r + 2W, ...; each rank pads
    to the same count of full batches so that `all_gather` (tensor -> (W, *tensor.shape)) sees equal shapes."""
    plan = batch_plan(num_samples, batch_size)
    if world_size == 1:
        return FeatureSet.concat(mine)
    per_rank = math.ceil(len(plan) / world_size)

    def padded(get: Callable[[FeatureSet], Tensor]) -> Tensor:  # (per_rank, batch_size, ...) for this rank
        first = get(mine[0]) if mine else None
        out = first.new_zeros(per_rank, batch_size, *first.shape[1:]) if first is not None else None
        for j, fs in enumerate(mine):
            out[j, : len(fs)] = get(fs)
        return out

    def reorder(t: Tensor) -> Tensor:  # (W, per_rank, batch_size, ...) -> (N, ...); batch b is at [b % W, b // W]
        return torch.cat([t[b % world_size, b // world_size, : end - start] for b, (start, end) in enumerate(plan)])

    features = reorder(all_gather(padded(lambda fs: fs.features)))
    logits = reorder(all_gather(padded(lambda fs: fs.logits))) if mine and mine[0].logits is not None else None
    labels = reorder(all_gather(padded(lambda fs: fs.labels))) if mine and mine[0].labels is not None else None
    return FeatureSet(features, logits, labels)
