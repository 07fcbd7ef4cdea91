"""The config check that runs before torch is imported: every group's keys, types and counts, in well under a
second, so that a typo costs one line instead of an epoch.

Each node with a `_target_` (model, data, trainer, every callback and logger, eval and its extractor) is checked
against the parameters of the class it builds, read from that class's source (`genlab.signatures`): an unknown
key fails with the closest valid one and the list, a value of the wrong type or a count below one fails with
the value. A fixed `model.num_classes` must cover the data's classes. The eval node also answers to the metric
table (names, settings and their rules, sample counts), and an extractor's weights must be on disk or
downloadable. What needs the framework (reading the checkpoint, the
constructors' own checks, the reference split's size) is checked by the entry point right after, still before
the first batch.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab.checks import ConfigError, check_positive_int, did_you_mean
from genlab.signatures import NO_DEFAULT, Parameters, class_attribute, module_constant, target_parameters

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
DATA_DECIDES = ("image_channels", "image_size", "num_classes")  # the entry point fills these from the data
EXTRACTOR_CALL = ("datamodule", "cache_dir", "precision", "progress")  # the evaluator passes these itself
EXTRACTOR_WEIGHTS = ("torch_fidelity.feature_extractor_inceptionv3", "URL_INCEPTION_V3")
TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_train_config(cfg: DictConfig) -> None:
    """Raise a ConfigError for the first problem of a composed training config."""
    for group in ("data", "model", "trainer"):
        check_node(group, cfg.get(group), skip_types=DATA_DECIDES if group == "model" else ())
    check_class_count(cfg.get("model"), cfg.get("data"))
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            check_node(f"{group}.{name}", node)
            check_logger_installed(f"{group}.{name}", node)
    if cfg.get("eval") and "_target_" in cfg.eval:
        check_eval(cfg.eval)
    check_checkpoint_path(cfg.get("ckpt_path"), cfg.trainer)
    check_writable(cfg.paths.output_dir)


def check_evaluate_config(cfg: DictConfig) -> None:
    """Raise a ConfigError for the first problem of a composed `evaluate.py` config."""
    check_node("data", cfg.get("data"))
    check_eval(cfg.eval, own_keys=("fake_dir", "on_bad_file"))
    ckpt_path, fake_dir = cfg.get("ckpt_path"), cfg.eval.get("fake_dir")
    if bool(ckpt_path) == bool(fake_dir):
        raise ConfigError("give exactly one of ckpt_path=<model.ckpt> or eval.fake_dir=<folder of images>")
    if ckpt_path:
        check_checkpoint_path(ckpt_path)
    else:
        from genlab.image_folder import ON_BAD, check_image_folder

        check_image_folder(fake_dir)
        if cfg.eval.get("on_bad_file", "skip") not in ON_BAD:
            raise ConfigError(f"eval.on_bad_file must be one of {list(ON_BAD)}, got {cfg.eval.on_bad_file!r}")
    check_writable(cfg.paths.output_dir)


def check_node(path: str, node: Any, extra: Iterable[str] = (), skip_types: Iterable[str] = ()) -> None:
    """Every key of a `_target_` node is a parameter of its target (or in `extra`), of the annotated type."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    params = target_parameters(node._target_)
    if params is None:
        return
    valid = sorted({*params.defaults, *extra} - set(EXTRACTOR_CALL if node.get("_partial_") else ()))
    values = OmegaConf.to_container(node, resolve=True)
    for key, value in values.items():
        if key in HYDRA_KEYS or isinstance(value, dict):
            continue
        if key not in valid and not params.var_keyword:
            raise ConfigError(
                f"{path}.{key} is not a setting of {node._target_}{did_you_mean(key, valid)}; valid: {valid}"
            )
        if key not in skip_types:
            check_value(f"{path}.{key}", value, params, key)


def check_value(full_key: str, value: Any, params: Parameters, key: str) -> None:
    """The annotation's type (int, float, bool, str, or None where optional) and the constructor's own
    `check_positive_int` calls, read from its source."""
    annotation = params.annotations.get(key)
    if annotation and not (value is None and annotation.endswith("| None")):
        types = TYPES[annotation.removesuffix(" | None")]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            default = params.defaults.get(key, NO_DEFAULT)
            example = "" if default is NO_DEFAULT else f" (default {default!r})"
            raise ConfigError(f"{full_key} must be {annotation}{example}, got {value!r}")
    if key in params.positive and value is not None:
        check_positive_int(full_key, value, allow_zero=params.positive[key])


def check_class_count(model: Any, data: Any) -> None:
    """`model.num_classes` is `auto` (the data's count) or a count: 0 for an unconditional model, else at least
    the data's classes, whose labels a smaller one could not embed."""
    classes = model.get("num_classes") if isinstance(model, DictConfig) else None
    if classes is None or classes == "auto":
        return
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise ConfigError(f"model.num_classes must be auto (the data's), 0 (unconditional) or a count, got {classes!r}")
    data_classes = data_class_count(data)
    if 0 < classes < data_classes:
        raise ConfigError(
            f"model.num_classes={classes} is less than the {data_classes} classes of {data._target_}: their labels "
            f"would not fit; use model.num_classes=auto (the data's count)"
        )


def data_class_count(data: Any) -> int:
    """The data's class count, from its config or its class (`num_classes = 10`, read statically); 0 if unknown."""
    if not isinstance(data, DictConfig) or "_target_" not in data:
        return 0
    count = data.get("num_classes")
    if count is None:
        params = target_parameters(data._target_)
        count = params.defaults.get("num_classes", NO_DEFAULT) if params else NO_DEFAULT
    if count is NO_DEFAULT or count is None:
        count = class_attribute(data._target_, "num_classes")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def eval_parameters(node: DictConfig) -> Parameters:
    """The eval node's keys: the callback's, the evaluator's (which it passes on) and the metric settings."""
    from genlab.metric_table import SETTINGS

    callback = target_parameters(node._target_) or Parameters(defaults={})
    evaluator = target_parameters("genlab.evaluator.Evaluator") or Parameters(defaults={})
    return Parameters(
        defaults={**evaluator.defaults, **callback.defaults, **SETTINGS},
        annotations={**evaluator.annotations, **callback.annotations},
        positive={**evaluator.positive, **callback.positive},
    )


def check_eval(node: DictConfig, own_keys: Iterable[str] = ()) -> None:
    """The eval node: its keys and types, the metric names and settings, sample counts and the extractor."""
    from genlab import metric_table

    params = eval_parameters(node)
    values = OmegaConf.to_container(node, resolve=True)
    valid = sorted({*params.defaults, *own_keys})
    for key, value in values.items():
        if key in HYDRA_KEYS or key in own_keys or key == "extractor":
            continue
        if key not in params.defaults:
            raise ConfigError(f"eval.{key} is not an eval setting{did_you_mean(key, valid)}; valid: {valid}")
        if key not in metric_table.SETTINGS:
            check_value(f"eval.{key}", value, params, key)
    metrics = values.get("metrics", "default")
    names = [m.name for m in metric_table.select(list(metrics) if isinstance(metrics, list) else metrics)]
    settings = metric_table.check_settings({k: v for k, v in values.items() if k in metric_table.SETTINGS})
    metric_table.check_sample_counts(names, settings, values.get("num_samples", 1), num_real=None)
    precisions = module_constant("genlab.features.precision", "PRECISIONS")  # read, not imported: no torch
    if precisions and values.get("precision", "fp32") not in precisions:
        raise ConfigError(f"eval.precision must be one of {list(precisions)}, got {values['precision']!r}")
    check_extractor(node.get("extractor"))


def extractor_names() -> list[str]:
    """The choices of eval/extractor=<name>: the files of configs/eval/extractor/."""
    from genlab.train import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / "eval" / "extractor").glob("*.yaml"))


def check_extractor(node: Any) -> None:
    """An extractor config chosen with eval/extractor=<name>, whose weights are on disk or downloadable."""
    names = extractor_names()
    if not isinstance(node, DictConfig) or "_target_" not in node:
        hint = did_you_mean(str(node), names)
        raise ConfigError(
            f"eval.extractor={node!r} is not an extractor config{hint}: choose one with eval/extractor=<name>, "
            f"one of {names}"
        )
    check_node("eval.extractor", node)
    if "weights_path" in node:
        check_weights(node.get("weights_path"))


def check_weights(weights_path: str | None) -> None:
    """The InceptionV3 weights: the given file, or torch's hub cache, or a reachable download."""
    url = module_constant(*EXTRACTOR_WEIGHTS)
    if weights_path:
        if not Path(weights_path).expanduser().is_file():
            raise ConfigError(f"eval.extractor.weights_path={weights_path}: no such file (fetch it from {url})")
        return
    if url is None:  # torch-fidelity not installed: its import says so, with the install command
        raise ConfigError("eval/extractor=inception needs torch-fidelity: pip install torch-fidelity")
    cached = hub_dir() / "checkpoints" / url.rsplit("/", 1)[-1]
    from genlab.checks import can_reach

    if not cached.is_file() and not can_reach(url, timeout=3.0):
        raise ConfigError(
            f"eval/extractor=inception: its weights are not in {cached} and {url.split('/')[2]} cannot be reached. "
            f"Fetch {url} where there is a network and pass eval.extractor.weights_path=<that file>, "
            "or use the offline default eval/extractor=domain"
        )


def hub_dir() -> Path:
    """torch.hub.get_dir(), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(torch_home).expanduser() / "hub"


def check_logger_installed(path: str, node: Any) -> None:
    """A logger whose package is missing fails now, with the install command, not after the data is loaded."""
    import importlib.util

    target = node.get("_target_", "") if isinstance(node, DictConfig) else ""
    needs = {"TensorBoardLogger": ("tensorboard", "tensorboardX"), "wandb_logger": ("wandb",)}
    for suffix, packages in needs.items():
        if target.endswith(suffix) and not any(importlib.util.find_spec(p) for p in packages):
            raise ConfigError(f"{path} needs {packages[0]}, which is not installed: pip install {packages[0]}")


def check_checkpoint_path(ckpt_path: str | None, trainer_cfg: DictConfig | None = None) -> None:
    """A checkpoint file that exists and is in torch's zip format (the full read comes after torch's import),
    and, given the trainer config, whose run has epochs or steps left; a folder is a run folder whose newest
    checkpoint is resumed (see `newest_checkpoint`)."""
    if not ckpt_path:
        return
    path = Path(ckpt_path)
    if path.is_dir():
        path = newest_checkpoint(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"ckpt_path={ckpt_path} is not a torch checkpoint (not a zip file): truncated or corrupt?")
    checkpoint = peek_checkpoint(path) if trainer_cfg is not None else None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("loops"), dict) and "global_step" in checkpoint:
        from genlab.resume import check_not_finished

        check_not_finished(str(path), checkpoint, trainer_cfg)


def peek_checkpoint(path: Path) -> Any:
    """A torch checkpoint's dict with every tensor and foreign object left out (an empty dict in its place), read
    from its zip without importing torch: enough for its counters. None where it cannot be read so."""
    import pickle

    class Anything(dict):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

        def __setstate__(self, state: Any) -> None:
            pass

    class CountersOnly(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> None:  # a tensor's storage
            return None

        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(module, name) if module in ("builtins", "collections", "_codecs") else Anything

    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
            with archive.open(name) as f:
                return CountersOnly(f).load()
    except Exception:  # the full read after torch's import says what is wrong
        return None


def newest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to resume a run folder from: the newest of its last.ckpt and on_exception.ckpt."""
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    found = [p for p in (folder / "last.ckpt", folder / "on_exception.ckpt") if p.is_file()]
    if not found:
        raise ConfigError(f"ckpt_path={run_dir}: a folder without checkpoints/last.ckpt or on_exception.ckpt")
    return max(found, key=lambda p: p.stat().st_mtime)


def check_writable(folder: str) -> None:
    """The run folder (Hydra made it) or its nearest existing parent can be written."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    if not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write to {path}: choose another paths.root_dir or paths.log_dir")
