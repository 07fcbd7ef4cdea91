"""The config check as the user meets it (`genlab.cli`): from the command line a mistake is one line naming the bad
value and the valid ones, exit code 2, no run folder; and a property test that draws configs and builds them up to
`trainer.fit`: every failure must be a ConfigError, never an exception from deep inside torch or Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Started, compose_train
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from genlab.checks import ConfigError
from genlab.preflight import DATA_DECIDES, check_train_config
from genlab.signatures import target_parameters
from genlab.train import CONFIG_DIR, check_evaluation_counts, data_shape_kwargs, eval_callbacks, training_callbacks


# --- the command line -----------------------------------------------------------------------------------------
def run(entry: str, tmp_path: Path, *overrides: str, full_error: str = "0") -> subprocess.CompletedProcess:
    command = [sys.executable, entry, *overrides, f"paths.root_dir={tmp_path}"]
    return Started(command, {"HYDRA_FULL_ERROR": full_error}).result()


def assert_one_line_error(result: subprocess.CompletedProcess, message: str, tmp_path: Path) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert not list((tmp_path / "outputs").rglob("*"))  # no run folder, no empty date folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.latnt_dim=8"], "model.latnt_dim is not a setting of genlab.models.VAEModule (did you mean"),
        (["eval=default", "eval.kid_subset_sise=3"], "(did you mean 'kid_subset_size'?)"),  # no + either
        (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
        (["model.channels=[9,16]"], "channels=[9, 16] give a width that GroupNorm cannot split"),  # after torch
    ],
)
def test_train_config_error_is_one_line_and_leaves_no_run_folder(overrides, message, tmp_path: Path) -> None:
    result = run("train.py", tmp_path, "data=synthetic", "eval=none", *overrides)
    assert_one_line_error(result, message, tmp_path)
    if "channels" not in overrides[-1]:
        assert result.stderr.strip() == result.stderr.strip().splitlines()[0]  # nothing else printed at all


@pytest.mark.slow
@pytest.mark.parametrize("override", ["data.batch_size=0", "model.latnt_dim=8"])
def test_hydra_full_error_shows_the_traceback(override: str, tmp_path: Path) -> None:
    result = run("train.py", tmp_path, "data=synthetic", override, full_error="1")
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert ("ConfigError" if "batch" in override else "ConfigCompositionException") in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ckpt_path={}/missing.ckpt", "missing.ckpt: no such file"),
        ("ckpt_path={}/notes.txt", "notes.txt is not a torch checkpoint (not a zip file)"),
        ("eval.fake_dir={}/no_folder", "no_folder: no such folder"),
    ],
)
def test_evaluate_config_error_is_one_line(target: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    result = run("evaluate.py", tmp_path, "data=synthetic", target.format(tmp_path))
    assert_one_line_error(result, message, tmp_path)


# --- property: whatever the draw, a ConfigError or a built run ------------------------------------------------
FAMILIES = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
TYPOS = ["+model.latnt_dim=8", "+data.batch_sise=4", "+trainer.max_epoch=2", "+callbacks.sample_grid.num_sample=4"]


def model_target(family: str) -> str:
    node = OmegaConf.load(CONFIG_DIR / "model" / f"{family}.yaml")
    return node._target_ if "_target_" in node else model_target(node.defaults[0])  # cgan: the gan's


def int_settings(family: str) -> list[str]:
    annotations = target_parameters(model_target(family)).annotations
    return sorted(k for k, a in annotations.items() if a.startswith("int") and k not in DATA_DECIDES)


def mostly(draw: st.DrawFn, good: list[Any], bad: list[Any]) -> tuple[Any, bool]:
    """(a value, whether it is from `bad`): one of `good`, or about one time in eight one of `bad`."""
    wrong = draw(st.integers(0, 7)) == 7
    return draw(st.sampled_from(bad if wrong else good)), wrong


@st.composite
def train_overrides(draw: st.DrawFn) -> tuple[list[str], bool]:
    """(overrides, whether one of them is wrong in a way that the static check alone must catch)."""
    family = draw(st.sampled_from(FAMILIES))
    params = target_parameters(model_target(family))
    (num_samples, bad_n), (batch_size, bad_b) = mostly(draw, [1, 2, 3, 12, 40], [-1, 0]), mostly(draw, [1, 4, 16], [0])
    out = [f"model={family}", f"data.num_samples={num_samples}", f"data.batch_size={batch_size}"]
    static_bad = bad_n or bad_b
    if draw(st.booleans()):
        out.append(f"data.image_size={draw(st.sampled_from([4, 8, 12, 16, 30]))}")
    key = draw(st.sampled_from(int_settings(family)))
    value, _ = mostly(draw, [1, 2, 3, 8, 16], [-1, 0])
    out.append(f"model.{key}={value}")
    static_bad |= key in params.positive and value < (0 if params.positive[key] else 1)
    if "num_classes" in params.defaults and draw(st.booleans()):
        classes, static = mostly(draw, [0, 4, "auto", 5], [-1, 2])  # the synthetic data has 4
        out.append(f"model.num_classes={classes}")
        static_bad |= static
    if family != "gmm" and draw(st.booleans()):
        widths = draw(st.lists(st.sampled_from([1, 4, 8, 9, 13, 16]), min_size=1, max_size=3))
        out.append(f"model.channels=[{','.join(map(str, widths))}]")
    if draw(st.booleans()):
        metrics = mostly(draw, ["default", "all", "[fid]", "[fid,kid]", "[pr,dc]", "[ct]", "[authenticity]"], ["[kdi]"])
        drawn = {
            "metrics": metrics,
            "num_samples": mostly(draw, [1, 2, 3, 10, 64], [-1, 0]),
            "kid_subset_size": mostly(draw, [2, 3, 50], [1]),
            "pr_k": mostly(draw, [1, 3, 100], [0]),
            "precision": mostly(draw, ["fp32", "tf32", "bf16"], ["fp16"]),
        }
        out += ["eval=default", "eval/extractor=random", *(f"eval.{k}={v}" for k, (v, _) in drawn.items())]
        static_bad |= any(wrong for _, wrong in drawn.values())
    if draw(st.integers(0, 5)) == 0:
        out.append(draw(st.sampled_from(TYPOS)))
        static_bad = True
    return out, static_bad


def build(cfg) -> tuple[Any, Any]:
    """What `genlab.train.train` builds before `trainer.fit`, in the same order."""
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **data_shape_kwargs(cfg.model, datamodule), _convert_="all")
    callbacks = [*training_callbacks(cfg, model), *eval_callbacks(cfg)]
    check_evaluation_counts(callbacks, datamodule)
    instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    return datamodule, model


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(drawn=train_overrides())
@example(drawn=(["model=vae", "model.channels=[9,16]"], False))  # holes found by this test, kept as examples
@example(drawn=(["model=diffusion", "model.channels=[1,16,16]"], False))  # 1 + 16 on the way up
@example(drawn=(["data.num_samples=1"], False))  # no training image after the validation split
@example(drawn=(["model=gan", "model.num_classes=2"], True))  # fewer classes than the data's 4
def test_any_config_fails_with_a_config_error_or_builds(drawn: tuple[list[str], bool], tmp_path_factory) -> None:
    overrides, static_bad = drawn
    note(" ".join(overrides))
    cfg = compose_train(tmp_path_factory.mktemp("draw") / "run", *overrides)
    stage = "preflight"
    try:
        check_train_config(cfg)
        assert not static_bad, "the static check let a wrong value through"
        stage = "build"
        datamodule, model = build(cfg)
    except ConfigError as err:
        note(f"{stage}: {err}")
        return
    except InstantiationException as err:  # a constructor's own check, wrapped by Hydra
        if not isinstance(err.__cause__, ConfigError):
            raise
        note(f"{stage}: {err.__cause__}")
        return
    finally:
        GlobalHydra.instance().clear()
    datamodule.setup("fit")  # what fit needs of a config that built: batches to train on, labels that fit
    assert len(datamodule.train_dataloader()) >= 1 and len(datamodule.val_dataloader()) >= 1
    assert model.num_classes == 0 or model.num_classes >= datamodule.num_classes
