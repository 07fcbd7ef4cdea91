"""Feature sets and how they are made: images (real, or sampled from a model in seeded batches) -> features,
logits, labels and the uint8 images, on one device; and the gather that puts several processes' batches back
in order. Used by `genlab.evaluator`.

Batch b of an evaluation is drawn with its own seeded generator and its own labels, so the sample set is the
same whatever the batch-to-process assignment: a DDP run scores exactly what one process scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genlab.features.base import FeatureExtractor, to_uint8


@dataclass
class FeatureSet:
    """What an extractor made of a set of images: features (N, D), logits (N, K) or None, labels (N,) or None,
    and the uint8 images (N, C, H, W) themselves or None."""

    features: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None
    images: Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def to(self, device: torch.device | str) -> FeatureSet:
        return FeatureSet(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})

    def __getitem__(self, index: Tensor | slice) -> FeatureSet:
        return FeatureSet(**{k: None if v is None else v[index] for k, v in vars(self).items()})

    def as_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if v is not None}

    @staticmethod
    def concat(sets: Sequence[FeatureSet]) -> FeatureSet:
        return FeatureSet(
            **{
                f.name: None if getattr(sets[0], f.name) is None else torch.cat([getattr(s, f.name) for s in sets])
                for f in fields(FeatureSet)
            }
        )


@torch.no_grad()
def extract(
    extractor: FeatureExtractor, batches: Iterable[tuple[Tensor, Tensor | None]], device: torch.device | str
) -> FeatureSet:
    """Run `extractor` over (images, labels or None) batches, images uint8 or floats in [0, 1]; the results and
    the uint8 images stay on `device`."""
    sets = []
    for x, y in batches:
        x = to_uint8(x.to(device))
        f, lg = extractor(x)
        sets.append(FeatureSet(f.float(), None if lg is None else lg.float(), None if y is None else y.to(device), x))
    return FeatureSet.concat(sets)


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
        (images[i : i + batch_size], None if labels is None else labels[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return extract(extractor, tqdm(chunks, desc=desc, leave=False, disable=not progress), device)


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


def gather_batches(
    mine: list[FeatureSet], num_samples: int, batch_size: int, rank: int, world_size: int, all_gather: Callable
) -> FeatureSet:
    """All processes' sample batches in batch order. Rank r holds batches r, r + W, r + 2W, ...; each rank pads
    to the same count of full batches so that `all_gather` (tensor -> (W, *tensor.shape)) sees equal shapes."""
    plan = batch_plan(num_samples, batch_size)
    if world_size == 1:
        return FeatureSet.concat(mine)
    per_rank = math.ceil(len(plan) / world_size)

    def padded(first: Tensor, get: Callable[[FeatureSet], Tensor]) -> Tensor:  # (per_rank, batch_size, ...)
        out = first.new_zeros(per_rank, batch_size, *first.shape[1:])
        for j, fs in enumerate(mine):
            out[j, : len(fs)] = get(fs)
        return out

    def reorder(t: Tensor) -> Tensor:  # (W, per_rank, batch_size, ...) -> (N, ...); batch b is at [b % W, b // W]
        return torch.cat([t[b % world_size, b // world_size, : end - start] for b, (start, end) in enumerate(plan)])

    gathered = {}
    for f in fields(FeatureSet):
        first = getattr(mine[0], f.name)
        if first is not None:
            gathered[f.name] = reorder(all_gather(padded(first, lambda fs, n=f.name: getattr(fs, n))))
    return FeatureSet(**gathered)
