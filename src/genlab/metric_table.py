"""The metric table: every metric genlab computes, in one place.

Per metric: the name used in `eval.metrics`, the keys it writes (logged as `eval/<key>`, in metrics.json, the
report and the benchmark table), what it needs, its settings with their defaults, whether the per-epoch
callback computes it by default, and the digits tables show. The callback, `evaluate.py` (both through
`genlab.evaluator.Evaluator`), the config (`eval/metric_settings`, stored by `genlab.train`), the report and the
benchmark read it.

Adding a metric: its function in `genlab/metrics/`, its row here, its test.

Needs:
- `logits`: the extractor gives logits (IS).
- `class_logits`: logits over the dataset's own classes (the domain classifier; not InceptionV3's 1008).
- `conditional`: a class-conditional model (labels asked for) and labelled real data.
- `heldout`: the held-out split (the test split where the dataset has one, else the validation split).
- `images`: the generated images themselves, not only their features (always kept).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from genlab.checks import ConfigError, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

    from genlab.feature_sets import FeatureSet
    from genlab.metrics.cas import Fit


class _Lazy:
    """`genlab.metrics`, imported on first use: reading the table (names, keys, settings for the config) must not
    cost torch's import time, so that a mistyped command line still answers in a second."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("genlab.metrics"), name)


M = _Lazy()

NEEDS = ("logits", "class_logits", "conditional", "heldout", "images")


@dataclass
class Inputs:
    """What a metric may read. `real` is the FID reference (a fixed subset of `train` of the evaluation's size),
    `train` the whole training split, `heldout` the held-out split; each with features, logits, labels, images.

    `train_translations(pixels)` gives (V N_t, D) features of the training images and their translations by up to
    `pixels` (V = (2 pixels + 1)^2, the untranslated images first);
    `fit(epochs)` a classifier trainer for CAS; `memo(key, compute)` keeps what does not change between
    evaluations (real-only results) for the evaluator's lifetime.
    """

    real: FeatureSet
    fake: FeatureSet
    train: FeatureSet
    heldout: FeatureSet | None = None
    train_translations: Callable[[int], Tensor] | None = None
    fit: Callable[[int], Fit] | None = None
    memo: Callable[[Any, Callable[[], Any]], Any] = lambda key, compute: compute()  # noqa: E731
    chosen: tuple[str, ...] = ()  # the names of this evaluation's metrics (`compute` sets them)
    shared: dict[Any, Any] = field(default_factory=dict)  # what metrics of this one evaluation share


Compute = Callable[[Inputs, dict[str, Any]], "float | tuple[float, ...]"]


Rule = tuple[Callable[[Any], bool], str]  # (is the value allowed?, what is allowed, for the error)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


COUNT: Rule = (lambda v: _is_int(v) and v >= 1, "a positive integer")
NON_NEGATIVE: Rule = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
SEED: Rule = (lambda v: v is None or _is_int(v), "an integer seed, or null")


@dataclass(frozen=True)
class Setting:
    """A metric setting: its default and the rule its values must follow."""

    default: Any
    rule: Rule


@dataclass(frozen=True)
class Metric:
    """One row of the table: see the module docstring."""

    name: str
    keys: tuple[str, ...]
    compute: Compute
    needs: tuple[str, ...] = ()
    settings: dict[str, Setting] = field(default_factory=dict)
    per_epoch: bool = True
    digits: int | tuple[int, ...] = 2  # decimals in tables: one for all keys, or one per key

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric {self.name!r} needs {sorted(unknown)}; known needs: {list(NEEDS)}")


# The real side's share of each metric (FID's statistics and covariance factor, the k-NN radii, KID's real-real
# kernel sums) depends on the real features alone: computed once per real side through `Inputs.memo`.


def _fid(real: FeatureSet, name: str, i: Inputs) -> float:
    reference = i.memo(("fid-factor", name), lambda: M.fid_reference(real.features))
    return M.fid(real.features, i.fake.features, reference=reference)


def _kid(i: Inputs, s: dict[str, Any]) -> tuple[float, float]:
    size = s["kid_subset_size"]
    if min(len(i.real), len(i.fake)) < size:
        raise ValueError(
            f"KID subsets of {size} need at least that many real and fake samples, got {len(i.real)} real and "
            f"{len(i.fake)} fake: lower eval.kid_subset_size or raise eval.num_samples"
        )
    draws = (len(i.fake), s["kid_subsets"], size, s["kid_seed"])
    real_sums = i.memo(("kid-real-sums", *draws), lambda: M.kid_real_sums(i.real.features, *draws))
    return M.kid(i.real.features, i.fake.features, s["kid_subsets"], size, s["kid_seed"], real_sums=real_sums)


def _knn(i: Inputs, s: dict[str, Any], keys: tuple[str, str]) -> tuple[float, float]:
    """Two of the k-NN metrics: P&R and D&C of one evaluation come from one `knn_metrics` pass over the real-fake
    distances (computed by whichever is asked first), the real radii for both k from one pass over the real ones."""
    pr_k, dc_k = (s["pr_k"] if "pr" in i.chosen else None), (s["dc_k"] if "dc" in i.chosen else None)
    if keys[0] == "precision":
        pr_k = s["pr_k"]
    else:
        dc_k = s["dc_k"]
    if ("knn", pr_k, dc_k) not in i.shared:
        ks = tuple(dict.fromkeys(k for k in (pr_k, dc_k) if k is not None))
        radii = i.memo(("knn-radii", *ks), lambda: M.knn_radii(i.real.features, ks, squared=True))
        i.shared["knn", pr_k, dc_k] = M.knn_metrics(
            i.real.features, i.fake.features, pr_k, dc_k, real_radii=dict(zip(ks, radii, strict=True))
        )
    out = i.shared["knn", pr_k, dc_k]
    return out[keys[0]], out[keys[1]]


def _copy_rate(i: Inputs, s: dict[str, Any]) -> float:
    pixels = s["copy_shift"]  # the training images and their translations by up to this many pixels, once
    train = i.memo(("train-translations", pixels), lambda: i.train_translations(pixels))
    q = s["copy_quantile"]
    tau = i.memo(("copy-threshold", pixels, q), lambda: M.copy_threshold(train, i.heldout.features, q))
    return M.copy_rate(train, i.heldout.features, i.fake.features, q, threshold=tau)


def _authenticity(i: Inputs, s: dict[str, Any]) -> float:
    radius = i.memo(("train-nearest-other",), lambda: M.nearest_other_distance(i.train.features))
    return M.authenticity(i.train.features, i.fake.features, train_radius=radius)


def _ct(i: Inputs, s: dict[str, Any]) -> float:
    cells = s["ct_cells"]
    centroids = i.memo(("train-kmeans", cells), lambda: M.kmeans(i.train.features, cells))
    return M.data_copying(
        i.train.features, i.heldout.features, i.fake.features, cells, s["ct_min_per_cell"], centroids=centroids
    )


def _cas(i: Inputs, s: dict[str, Any]) -> tuple[float, float]:
    held = i.heldout
    fit = i.fit(s["cas_epochs"])
    real = i.memo(
        ("cas_real", s["cas_epochs"]),
        lambda: M.classification_accuracy_score(i.real.images, i.real.labels, held.images, held.labels, fit),
    )
    fake = M.classification_accuracy_score(i.fake.images, i.fake.labels, held.images, held.labels, fit)
    return fake, real


TABLE: tuple[Metric, ...] = (
    Metric("fid", ("fid",), lambda i, s: _fid(i.real, "reference", i)),
    Metric(
        "fid_heldout",
        ("fid_heldout",),
        lambda i, s: _fid(i.heldout, "heldout", i),
        needs=("heldout",),  # far above `fid`: the samples are closer to the training images than to new ones
    ),
    Metric(
        "is",
        ("is", "is_std"),
        lambda i, s: M.inception_score(i.fake.logits, s["is_splits"], s["is_shuffle_seed"]),
        needs=("logits",),
        settings={"is_splits": Setting(10, COUNT), "is_shuffle_seed": Setting(2020, SEED)},  # torch-fidelity's
    ),
    Metric(
        "kid",
        ("kid", "kid_std"),
        _kid,
        settings={  # torch-fidelity's defaults
            "kid_subsets": Setting(100, COUNT),
            "kid_subset_size": Setting(1000, (lambda v: _is_int(v) and v >= 2, "an integer >= 2")),
            "kid_seed": Setting(2020, SEED),
        },
        digits=3,
    ),
    Metric(
        "pr",
        ("precision", "recall"),
        lambda i, s: _knn(i, s, ("precision", "recall")),
        settings={"pr_k": Setting(3, COUNT)},
        digits=3,
    ),
    Metric(
        "dc",
        ("density", "coverage"),
        lambda i, s: _knn(i, s, ("density", "coverage")),
        settings={"dc_k": Setting(5, COUNT)},
        digits=3,
    ),
    Metric(
        "intra_fid",
        ("intra_fid",),
        lambda i, s: M.intra_fid(i.real.features, i.real.labels, i.fake.features, i.fake.labels),
        needs=("conditional",),
    ),
    Metric(
        "accuracy",
        ("accuracy",),
        lambda i, s: M.classifier_accuracy(i.fake.logits, i.fake.labels),
        needs=("conditional", "class_logits"),
        digits=3,
    ),
    Metric(
        "classes",
        ("class_kl", "classes_covered"),
        lambda i, s: (
            M.class_kl(i.train.logits, i.fake.logits),
            M.classes_covered(i.train.logits, i.fake.logits, s["classes_min_share"]),
        ),
        needs=("class_logits",),
        settings={"classes_min_share": Setting(0.1, (lambda v: _is_number(v) and 0 < v <= 1, "a share in (0, 1]"))},
        digits=(3, 0),
    ),
    Metric(
        "copy_rate",
        ("copy_rate",),
        _copy_rate,
        needs=("heldout", "images"),
        settings={
            "copy_quantile": Setting(0.02, (lambda v: _is_number(v) and 0 < v < 1, "a share in (0, 1)")),
            "copy_shift": Setting(1, NON_NEGATIVE),  # training images translated by up to 1 pixel; 0: none
        },
        digits=3,
    ),
    Metric(
        "authenticity",
        ("authenticity",),
        _authenticity,
        digits=3,
    ),
    Metric(
        "ct",
        ("ct",),
        _ct,
        needs=("heldout",),
        settings={"ct_cells": Setting(10, COUNT), "ct_min_per_cell": Setting(20, NON_NEGATIVE)},
    ),
    Metric(
        "cas",
        ("cas", "cas_real"),
        _cas,
        needs=("conditional", "heldout", "images"),
        settings={"cas_epochs": Setting(8, COUNT)},
        per_epoch=False,
        digits=3,
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in TABLE}
KEYS: tuple[str, ...] = tuple(key for m in TABLE for key in m.keys)  # every output key, in table order
DIGITS: dict[str, int] = {
    key: m.digits[j] if isinstance(m.digits, tuple) else m.digits for m in TABLE for j, key in enumerate(m.keys)
}
SETTINGS: dict[str, Any] = {name: setting.default for m in TABLE for name, setting in m.settings.items()}
RULES: dict[str, Rule] = {name: setting.rule for m in TABLE for name, setting in m.settings.items()}


NOVELTY_KEYS = ("fid_heldout", "copy_rate", "authenticity", "ct")
NOVELTY_GUIDE = (
    "FID, precision and recall reward a model that returns its training images, so read them beside the novelty "
    "columns, all measured against the training split with a held-out split (real images no model saw) as the "
    "yardstick. fid_heldout well above fid means the samples sit closer to the training images than to new real "
    "ones. copy_rate is the share of samples at least as close to a training image (allowing a 1-pixel shift) as "
    "the closest 2% of held-out images are: about 0.02 for a model that makes new images, 1 for a copy of the "
    "training set. authenticity is the share of samples farther from their nearest training image than that "
    "image is from its own nearest neighbour: about 0.5 for held-out images, 0 for copies. ct is the "
    "data-copying z-score: below -3 flags copying, near 0 is healthy, clearly positive means under-fitting. A "
    "model ranks first honestly only with low fid and a copy rate and ct near held-out data's."
)


def select(metrics: str | list[str] | tuple[str, ...]) -> list[Metric]:
    """The metrics asked for: `default` (the per-epoch ones), `all`, or a list of names, validated."""
    if isinstance(metrics, str):
        if metrics == "default":
            return [m for m in TABLE if m.per_epoch]
        if metrics == "all":
            return list(TABLE)
        metrics = [metrics]
    unknown = [name for name in metrics if name not in BY_NAME]
    if unknown:
        hint = "".join(did_you_mean(name, BY_NAME) for name in unknown)
        raise ConfigError(
            f"eval.metrics: unknown metric(s) {unknown}{hint}; valid: {list(BY_NAME)}, or 'default' or 'all'"
        )
    return [BY_NAME[name] for name in dict.fromkeys(metrics)]


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The table's defaults updated with `settings`; an unknown name or a value its rule forbids raises, naming
    the valid names or values."""
    unknown = [name for name in settings if name not in SETTINGS]
    if unknown:
        hint = "".join(did_you_mean(name, SETTINGS) for name in unknown)
        raise ConfigError(f"unknown metric setting(s) {unknown}{hint}; valid: {sorted(SETTINGS)}")
    for name, value in settings.items():
        allowed, what = RULES[name]
        if not allowed(value):
            raise ConfigError(f"eval.{name} must be {what}, got {value!r}")
    return {**SETTINGS, **settings}


def check_sample_counts(names: list[str], settings: dict[str, Any], num_samples: int, num_real: int | None) -> None:
    """Raise a ConfigError where a chosen metric needs more samples than an evaluation has: KID's subsets, the
    k of the k-NN metrics (`num_real`, the FID reference's size, where known: then both sides count)."""
    n = num_samples if num_real is None else min(num_samples, num_real)
    side = "eval.num_samples" if num_real is None or num_samples <= num_real else f"the {num_real} reference images"
    size = settings["kid_subset_size"]
    if "kid" in names and size > n:
        raise ConfigError(
            f"eval.kid_subset_size={size} is more than {side} ({n}): KID draws subsets of that many samples. "
            f"Lower eval.kid_subset_size (e.g. eval.kid_subset_size={max(2, n // 2)}) or raise eval.num_samples"
        )
    for metric, key in (("pr", "pr_k"), ("dc", "dc_k"), ("authenticity", None), ("copy_rate", None)):
        k = settings[key] if key else 1
        if metric in names and k >= n:
            what = f"eval.{key}={k}" if key else "a nearest neighbour other than itself"
            raise ConfigError(f"{metric} needs more than {k} samples for {what}, and {side} is {n}: raise it")


def unmet_needs(metric: Metric, i: Inputs, num_classes: int) -> str | None:
    """Why `metric` cannot be computed from `i` (for data with `num_classes` classes), or None."""
    reasons = {
        "logits": (i.fake.logits is None, "the extractor gives no logits"),
        "class_logits": (
            i.fake.logits is None or num_classes < 2 or i.fake.logits.shape[1] != num_classes,
            f"logits over the data's {num_classes} classes (the domain extractor's)",
        ),
        "conditional": (i.fake.labels is None or i.real.labels is None, "a conditional model and labelled data"),
        "heldout": (i.heldout is None, "a held-out split"),
        "images": (i.fake.images is None or i.train_translations is None, "the generated images"),
    }
    unmet = [text for need in metric.needs for bad, text in [reasons[need]] if bad]
    return ("needs " + "; ".join(unmet)) if unmet else None


def compute(
    metrics: list[Metric],
    inputs: Inputs,
    settings: dict[str, Any],
    num_classes: int = 0,
    skip: Callable[[str, str], None] | None = None,
) -> dict[str, float]:
    """Every metric of `metrics` whose needs `inputs` meet, as a flat {key: float}. A metric that cannot be
    computed (an unmet need, or too few samples where it needs them) is passed to `skip(name, why)`, or raises a
    ValueError when `skip` is None."""
    from genlab.metrics._checks import TooFewSamplesError

    inputs = replace(inputs, chosen=tuple(m.name for m in metrics), shared={})
    out: dict[str, float] = {}
    for metric in metrics:
        why = unmet_needs(metric, inputs, num_classes)
        if why is None:
            try:
                value = metric.compute(inputs, settings)
            except TooFewSamplesError as err:
                why = str(err)
        if why is not None:
            if skip is None:
                raise ValueError(f"metric {metric.name!r} cannot be computed: {why}")
            skip(metric.name, why)
            continue
        values = value if isinstance(value, tuple | list) else (value,)
        out.update({key: float(v) for key, v in zip(metric.keys, values, strict=True)})
    return out
