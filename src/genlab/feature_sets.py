"""Feature sets and how they are made: images (real, or sampled from a model in seeded batches) -> features,
logits, labels and the uint8 images, on one device; and the gather that puts several processes' batches back
in order. Used by `genlab.evaluator`.

Batch b of an evaluation is drawn with its own seeded generator and its own labels, so the sample set is the
same whatever the batch-to-process assignment: a DDP run scores exactly what one process scores. A batch that runs
out of GPU memory is redone in halves (`BatchSize`), each half seeded by its own first index: the same samples as
an evaluation run with the smaller batch size from the start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genlab.features.base import FeatureExtractor, to_uint8

log = logging.getLogger(__name__)


class NonFiniteError(ValueError):
    """Generated samples, or their features, hold NaN or inf values: nothing can be scored from them.

    `samples` and `features` count the samples whose pixels, and whose features or logits, are not finite."""

    def __init__(self, message: str, samples: int = 0, features: int = 0) -> None:
        super().__init__(message)
        self.samples, self.features = samples, features


@dataclass
class FeatureSet:
    """What an extractor made of a set of images: features (N, D), logits (N, K) or None, labels (N,) or None,
    the uint8 images (N, C, H, W) themselves or None, and for generated images `finite` (N,) bool, whether each
    sample came out of `sample()` free of NaN and inf (a non-finite one is stored as a black image), else None."""

    features: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None
    images: Tensor | None = None
    finite: Tensor | None = None

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
    """Features of uint8 images (N, C, H, W) (and their labels, if any), `batch_size` at a time (fewer after an
    out-of-memory error, see `BatchSize`)."""

    def work(start: int, end: int) -> FeatureSet:
        return extract(extractor, [(images[start:end], None if labels is None else labels[start:end])], device)

    size = BatchSize(batch_size)
    with tqdm(total=len(images), desc=desc, unit="img", leave=False, disable=not progress) as bar:
        return FeatureSet.concat([size.run(work, a, b, bar) for a, b in batch_plan(len(images), batch_size)])


class BatchSize:
    """The batch size of one pass over images: halved at each out-of-memory error, and kept so for the rest of
    the pass (the memory that one batch lacked, the next lacks too)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def run(self, work: Callable[[int, int], FeatureSet], start: int, end: int, bar=None) -> FeatureSet:
        """`work(a, b)` over the indices start..end-1 in consecutive pieces of at most `size`, concatenated in
        order; a piece that raises torch.OutOfMemoryError is redone in halves, down to one image. `bar` (a tqdm)
        advances by the images of each piece done."""
        pieces = []
        while start < end:
            stop = min(start + self.size, end)
            piece = attempt(work, start, stop)
            if piece is None:
                self.halve(stop - start)  # out of the except block: the failed batch's tensors are released
                continue
            pieces.append(piece)
            if bar is not None:
                bar.update(stop - start)
            start = stop
        return FeatureSet.concat(pieces)

    def halve(self, failed: int) -> None:
        """Half of the batch of `failed` images that ran out of memory, with the CUDA cache emptied."""
        self.size = failed // 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning(f"eval: out of memory at batch {failed}; retrying with {self.size}")


def attempt(work: Callable[[int, int], FeatureSet], start: int, end: int) -> FeatureSet | None:
    """`work(start, end)`, or None if it ran out of memory; out of memory with one image is an error."""
    try:
        return work(start, end)
    except torch.OutOfMemoryError as err:
        if end - start > 1:
            return None
        raise torch.OutOfMemoryError(
            f"eval: out of memory even with a batch of 1 image ({err}): the model and the extractor do not fit in "
            "this device's free memory"
        ) from err


def batch_plan(num_samples: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of every sample batch; batch b always covers the same sample indices."""
    return [(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


def sample_batch(model, start: int, end: int, seed: int, image_shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """Samples start..end-1 of the evaluation set: seeded by (seed, start), labels cycling over the classes. The
    shape is checked here; NaN and inf values are flagged by `sample_piece`."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
    labels = torch.arange(start, end, device=model.device) % model.num_classes if model.num_classes else None
    x = model.sample(end - start, labels=labels, generator=generator)
    if tuple(x.shape) != (end - start, *image_shape):
        raise ValueError(
            f"{type(model).__name__}.sample({end - start}) returned shape {tuple(x.shape)}, "
            f"expected {(end - start, *image_shape)} (the data's image shape)"
        )
    return x, labels


def sample_piece(
    model, extractor: FeatureExtractor, start: int, end: int, seed: int, image_shape: tuple[int, ...]
) -> FeatureSet:
    """Samples start..end-1 and their features, with `finite` flags. A sample with any NaN or inf pixel is
    replaced by a black image before extraction, so that it keeps its place and the batches their shapes."""
    x, labels = sample_batch(model, start, end, seed, image_shape)
    finite = torch.isfinite(x).flatten(1).all(1)  # (B,)
    x = x.masked_fill(~finite.view(-1, 1, 1, 1), 0)  # (B, C, H, W): non-finite samples -> black
    found = extract(extractor, [(x, labels)], model.device)
    found.finite = finite.to(found.features.device)
    return found


@contextmanager
def sampling_progress(model, enabled: bool) -> Iterator[None]:
    """Show or hide, for the duration, the inner progress bar of a model whose `sample()` runs many steps (the
    solver steps of `DiffusionModule`): such a model has a `sample_progress` attribute; other models are left as
    they are."""
    if not hasattr(model, "sample_progress"):
        yield
        return
    before, model.sample_progress = model.sample_progress, enabled
    try:
        yield
    finally:
        model.sample_progress = before


def sample_features(
    model,
    extractor: FeatureExtractor,
    num_samples: int,
    batch_size: int,
    seed: int,
    image_shape: tuple[int, ...],
    batches: Sequence[int] | None = None,
    progress: bool = True,
    check: bool = True,
) -> list[FeatureSet]:
    """Features of the sample batches `batches` (all by default), one FeatureSet per batch, with `finite` flags.
    `check`: raise a NonFiniteError if a sample or a feature is NaN or inf (off where the batches of several
    processes are checked together, after the gather, so that every process stops or none does)."""
    plan = batch_plan(num_samples, batch_size)
    chosen = range(len(plan)) if batches is None else batches
    size = BatchSize(batch_size)

    def work(start: int, end: int) -> FeatureSet:
        return sample_piece(model, extractor, start, end, seed, image_shape)

    total = sum(plan[b][1] - plan[b][0] for b in chosen)
    bar = tqdm(total=total, desc="eval: sampling", unit="img", leave=False, disable=not progress)
    with bar, sampling_progress(model, progress):
        out = [size.run(work, *plan[b], bar) for b in chosen]
    if check and out:
        check_finite(FeatureSet.concat(out))
    return out


def check_finite(fake: FeatureSet) -> None:
    """Raise a NonFiniteError saying how many generated samples, and how many feature rows, hold NaN or inf."""
    n = len(fake)
    samples = 0 if fake.finite is None else int((~fake.finite).sum())
    rows = torch.isfinite(fake.features).all(1)
    if fake.logits is not None:
        rows &= torch.isfinite(fake.logits).all(1)
    features = int((~rows).sum())
    problems = []
    if samples:
        problems.append(f"{samples} of {n} generated samples hold NaN or inf values (the model has diverged)")
    if features:
        problems.append(f"{features} of {n} samples have NaN or inf features or logits")
    if problems:
        raise NonFiniteError("; ".join(problems), samples, features)


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
