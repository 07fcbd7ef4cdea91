"""The config check that runs before torch is imported (`genlab.preflight`, `genlab.signatures`): every group's keys,
types and counts against the targets' own parameters, the YAML defaults against the Python ones, and the
best-by-loss checkpoint per family. The command-line side and the property test are in test_config_cli.py."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

import genlab.checks
from genlab import metric_table
from genlab.checks import ConfigError
from genlab.evaluator import Evaluator
from genlab.models import VAEModule
from genlab.preflight import EXTRACTOR_WEIGHTS, check_class_count, check_train_config, eval_parameters
from genlab.signatures import NO_DEFAULT, module_constant, target_parameters
from genlab.train import CONFIG_DIR, data_shape_kwargs, training_callbacks

ROOT = Path(__file__).resolve().parents[1]
VAE_SETTINGS = sorted(inspect.signature(VAEModule).parameters)  # what the run accepts, read at run time


def rejected(cfg) -> str:
    with pytest.raises(ConfigError) as err:
        check_train_config(cfg)
    return str(err.value)


# --- genlab.preflight on composed configs --------------------------------------------------------------------
def listed_valid(error: str) -> list[str]:
    return ast.literal_eval(error.split("; valid: ", 1)[1])  # the list that the message prints


def test_misspelt_model_key_names_the_closest_setting_and_all_valid_ones(train_cfg) -> None:
    error = rejected(train_cfg("run", "+model.latnt_dim=8"))
    assert error.startswith("model.latnt_dim is not a setting of genlab.models.VAEModule (did you mean 'latent_dim'?)")
    assert listed_valid(error) == VAE_SETTINGS


def test_misspelt_eval_key_names_the_closest_setting_and_all_valid_ones(train_cfg) -> None:
    error = rejected(train_cfg("run", "eval=default", "+eval.kid_subset_sise=3"))
    assert error.startswith("eval.kid_subset_sise is not an eval setting (did you mean 'kid_subset_size'?)")
    evaluator = set(inspect.signature(Evaluator).parameters) - {"settings"}  # its **settings: the table's
    assert set(listed_valid(error)) == {*evaluator, *metric_table.SETTINGS, "every_n_epochs", "dirpath"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.beta=abc", "model.beta must be float (default 1.0), got 'abc'"),
        ("model.likelihood=3", "model.likelihood must be str (default 'bernoulli'), got 3"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("model.latent_dim=-1", "model.latent_dim must be a positive integer, got -1"),  # read from check_hparams
        ("data.num_workers=-1", "data.num_workers must be a non-negative integer, got -1"),
        (
            "callbacks.step_checkpoint.every_n_steps=0",
            "callbacks.step_checkpoint.every_n_steps must be a positive integer, got 0",
        ),
    ],
)
def test_wrong_types_and_counts_are_caught_statically(override: str, message: str, train_cfg) -> None:
    assert rejected(train_cfg("run", override)) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.metrics=[fid,kdi]"], "eval.metrics: unknown metric(s) ['kdi'] (did you mean 'kid'?); valid: ['fid'"),
        (["eval.num_samples=10"], "eval.kid_subset_size=1000 is more than eval.num_samples (10)"),
        (["eval.num_samples=10", "eval.kid_subset_size=5", "eval.pr_k=10"], "pr needs more than 10 samples"),
        (["eval.pr_k=0"], "eval.pr_k must be a positive integer, got 0"),
        (["eval.num_samples=0"], "eval.num_samples must be a positive integer, got 0"),
        (["eval.precision=fp16"], "eval.precision must be one of ['fp32', 'tf32', 'bf16'], got 'fp16'"),
        (
            ["eval.extractor=incepton"],
            "eval.extractor='incepton' is not an extractor config (did you mean 'inception'?): choose one with "
            "eval/extractor=<name>, one of ['domain', 'inception', 'random']",
        ),
    ],
)
def test_eval_settings_answer_to_the_metric_table(overrides: list[str], message: str, train_cfg) -> None:
    assert message in rejected(train_cfg("run", "eval=default", *overrides))


def test_eval_defaults_pass(train_cfg) -> None:
    check_train_config(train_cfg("run", "eval=default"))  # the checks above fail for their override alone


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network and an empty torch hub cache; returns the path where the cached InceptionV3 weights would be."""
    monkeypatch.setattr(genlab.checks, "can_reach", lambda url, timeout=3.0: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = module_constant(*EXTRACTOR_WEIGHTS)
    return tmp_path / "torch_home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]


def test_inception_without_weights_offline_says_how_to_get_them(offline: Path, train_cfg) -> None:
    cfg = train_cfg("run", "eval=default", "eval/extractor=inception")
    error = rejected(cfg)
    assert f"its weights are not in {offline}" in error and "cannot be reached" in error
    assert "eval.extractor.weights_path=<that file>" in error and "eval/extractor=domain" in error
    offline.parent.mkdir(parents=True)
    offline.write_bytes(b"")  # in torch's hub cache: no network needed
    check_train_config(cfg)


def test_inception_weights_path_must_exist(offline: Path, tmp_path: Path, train_cfg) -> None:
    missing = tmp_path / "inception.pth"
    cfg = train_cfg("run", "eval=default", "eval/extractor=inception", f"eval.extractor.weights_path={missing}")
    assert rejected(cfg).startswith(f"eval.extractor.weights_path={missing}: no such file (fetch it from https://")
    missing.write_bytes(b"")
    check_train_config(cfg)


@pytest.mark.slow
def test_checkpoint_path_is_checked_before_torch(tmp_path: Path, train_cfg) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "empty_run").mkdir()
    cases = {
        "missing.ckpt": ": no such file",
        "notes.txt": " is not a torch checkpoint (not a zip file): truncated or corrupt?",
        "empty_run": ": a folder without checkpoints/last.ckpt or on_exception.ckpt",
    }
    for name, message in cases.items():
        path = tmp_path / name
        assert rejected(train_cfg("run", f"ckpt_path={path}")) == f"ckpt_path={path}{message}"
    (tmp_path / "empty_run" / "checkpoints").mkdir()
    with zipfile.ZipFile(tmp_path / "empty_run" / "checkpoints" / "last.ckpt", "w") as f:
        f.writestr("data.pkl", b"")
    check_train_config(train_cfg("run", f"ckpt_path={tmp_path / 'empty_run'}"))  # a run folder to resume


@pytest.mark.parametrize(("logger", "package"), [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_missing_logger_package_fails_with_the_install_command(logger, package, train_cfg, monkeypatch) -> None:
    import importlib.util

    cfg = train_cfg("run", f"logger={logger}")
    check_train_config(cfg)  # installed here
    find_spec = importlib.util.find_spec
    absent = {"tensorboard", "tensorboardX", "wandb"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else find_spec(name, *a))
    assert rejected(cfg) == f"logger.{logger} needs {package}, which is not installed: pip install {package}"


def test_fixed_class_count_below_the_datas_fails(train_cfg) -> None:
    error = rejected(train_cfg("run", "model=gan", "model.num_classes=2"))  # synthetic data has 4 classes
    assert error.startswith("model.num_classes=2 is less than the 4 classes of genlab.data.SyntheticDataModule")
    check_train_config(train_cfg("run", "model=gan", "model.num_classes=4"))
    assert rejected(train_cfg("run", "model=gan", "model.num_classes=-1")).startswith("model.num_classes must be auto")
    mnist = OmegaConf.create({"_target_": "genlab.data.MNISTDataModule"})  # its 10 classes: a class attribute
    check_class_count(OmegaConf.create({"num_classes": 10}), mnist)
    with pytest.raises(ConfigError, match="the 10 classes of genlab.data.MNISTDataModule"):
        check_class_count(OmegaConf.create({"num_classes": 4}), mnist)


# --- genlab.signatures on real targets ------------------------------------------------------------------------
def runtime_defaults(obj: Any) -> dict[str, Any]:
    params = inspect.signature(obj).parameters.values()
    return {p.name: p.default for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def assert_static_matches_runtime(target: str, obj: Any) -> None:
    static, runtime = target_parameters(target), runtime_defaults(obj)
    assert set(static.defaults) == set(runtime)
    for name, default in static.defaults.items():
        expected = runtime[name]
        if default is NO_DEFAULT:
            continue
        assert default == (list(expected) if isinstance(default, list) else expected), name
    literal = [n for n, d in static.defaults.items() if d is not NO_DEFAULT]
    assert len(literal) >= len(runtime) // 2  # most defaults are literals: the comparison above is not empty


def test_signatures_follow_a_package_reexport_to_the_model() -> None:
    assert_static_matches_runtime("genlab.models.VAEModule", VAEModule)
    params = target_parameters("genlab.models.VAEModule")
    assert params.defaults["channels"] == (32, 64) and not params.var_keyword
    assert params.annotations["latent_dim"] == "int" and params.annotations["beta"] == "float"
    assert params.positive == {"image_channels": False, "latent_dim": False}  # from check_hparams' body


def test_signatures_follow_lightnings_reexport_of_the_trainer() -> None:
    assert_static_matches_runtime("lightning.pytorch.Trainer", L.Trainer)
    assert "gradient_clip_val" in target_parameters("lightning.pytorch.Trainer").defaults


def test_signatures_follow_an_aliased_base_class() -> None:
    from genlab.loggers import CSVLogger  # no __init__ of its own; its base is imported `as LightningCSVLogger`

    assert_static_matches_runtime("genlab.loggers.CSVLogger", CSVLogger)


def test_signatures_read_a_class_with_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "genlab_test_maker.py").write_text(
        "from genlab.checks import check_positive_int\n\n"
        "class Maker:\n"
        "    def __new__(cls, epoch: int, batch: 'int | None' = 3, name: str = 'x'):\n"
        "        check_positive_int('epoch', epoch, allow_zero=True)\n"
        "        return object.__new__(cls)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    params = target_parameters("genlab_test_maker.Maker")
    assert params.defaults == {"epoch": NO_DEFAULT, "batch": 3, "name": "x"}
    assert params.annotations == {"epoch": "int", "batch": "int | None", "name": "str"}
    assert params.positive == {"epoch": True}


@pytest.mark.slow
def test_the_check_does_not_import_torch(tmp_path: Path) -> None:
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from genlab.checks import ConfigError
from genlab.preflight import check_train_config
from genlab.train import CONFIG_DIR

def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=["data=synthetic", *overrides])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = {str(tmp_path / "run")!r}
    HydraConfig.instance().set_config(cfg)
    return cfg

check_train_config(composed("logger=tensorboard", "eval.kid_subset_size=400"))
for bad in ("model.latent_dim=-1", "+model.latnt_dim=8", "eval.precision=fp16", "ckpt_path=/nowhere.ckpt"):
    try:
        check_train_config(composed(bad))
        raise SystemExit("not rejected: " + bad)
    except ConfigError:
        pass
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "torchvision", "torch_fidelity")))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


# --- the YAML restates the Python defaults --------------------------------------------------------------------
PASSES_ON = {"genlab.callbacks.GenerativeEval": "genlab.evaluator.Evaluator"}  # its **evaluator: preflight's too
DELIBERATE = {  # (file, key): why the YAML differs from the Python default on purpose
    ("eval/default.yaml", "precision"): "the per-epoch callback extracts in TF32 for speed; evaluate.py keeps fp32",
    **{
        ("model/diffusion.yaml", key): "the config trains with the current recipe (docs/benchmark/diffusion-recipe"
        ".md); DiffusionModule keeps the former one, so that a checkpoint saved before these settings loads as trained"
        for key in ("channels", "schedule", "prediction", "loss_weighting", "stem_stride")
    },
}


def own_parameters(owner: Any) -> list[inspect.Parameter]:
    """The parameters of a function, or of a class's own __init__ (or __new__) less self; [] where it has none."""
    if not isinstance(owner, type):
        return list(inspect.signature(owner).parameters.values())
    init = owner.__dict__.get("__init__") or owner.__dict__.get("__new__")
    return list(inspect.signature(init).parameters.values())[1:] if init is not None else []


def genlab_defaults(target: str) -> dict[str, Any]:
    """The defaults of the parameters that genlab's own code sets: a function's, or a class's __init__ (or __new__)
    with those of the genlab bases it passes **kwargs on to. Lightning's defaults are Lightning's business."""
    obj = get_object(target)
    found: dict[str, Any] = {}
    for owner in obj.__mro__ if isinstance(obj, type) else [obj]:
        params = own_parameters(owner)
        if not params and isinstance(owner, type) and "__init__" not in owner.__dict__:
            continue  # no constructor of its own: its base's
        if not owner.__module__.startswith("genlab."):
            break
        found = {**{p.name: p.default for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}, **found}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return {**(genlab_defaults(PASSES_ON[target]) if target in PASSES_ON else {}), **found}


def genlab_nodes(node: Any, path: str = ""):
    if isinstance(node, dict):
        if str(node.get("_target_", "")).startswith("genlab."):
            yield path, node
        for key, value in node.items():
            yield from genlab_nodes(value, f"{path}{key}.")


def test_yaml_configs_restate_their_targets_python_defaults() -> None:
    drift, checked, deliberate = [], 0, set()
    for file in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = str(file.relative_to(CONFIG_DIR))
        for path, node in genlab_nodes(OmegaConf.to_container(OmegaConf.load(file), resolve=False)):
            target = node["_target_"]
            params = eval_parameters(OmegaConf.create(node)) if target in PASSES_ON else target_parameters(target)
            defaults, static = genlab_defaults(target), params.defaults
            for key, value in node.items():
                default = defaults.get(key, inspect.Parameter.empty)
                if key.startswith("_") or key == "defaults" or "${" in str(value) or default is inspect.Parameter.empty:
                    continue
                default = list(default) if isinstance(default, tuple) else default
                checked += 1
                same = value == default and isinstance(value, bool) == isinstance(default, bool)
                if not same and (name, key) in DELIBERATE:
                    deliberate.add((name, key))
                elif not same:
                    drift.append(f"{name}: {path}{key}={value!r} in the YAML, {default!r} in the code")
                literal = static.get(key, NO_DEFAULT)  # what the check reads and its messages quote
                if literal is not NO_DEFAULT and key in static:
                    assert (list(literal) if isinstance(literal, tuple) else literal) == default, (name, key)
    assert not drift, "\n".join(drift)
    assert deliberate == set(DELIBERATE)  # a stale exemption fails too
    assert checked > 80


# --- the GAN has no best-by-val/loss checkpoint ---------------------------------------------------------------
@pytest.mark.parametrize(("family", "monitors"), [("gan", []), ("cgan", []), ("vae", ["val/loss"])])
def test_best_by_loss_checkpoint_follows_the_family(family: str, monitors: list[str], train_cfg) -> None:
    cfg = train_cfg("run", f"model={family}")
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **data_shape_kwargs(cfg.model, datamodule), _convert_="all")
    checkpoints = [c for c in training_callbacks(cfg, model) if isinstance(c, ModelCheckpoint)]
    assert [c.monitor for c in checkpoints if c.monitor] == monitors
    assert [c.filename for c in checkpoints if c.monitor] == ["best-epoch{epoch:03d}"] * len(monitors)
    assert "last" in [c.filename for c in checkpoints]  # last.ckpt is kept for every family
