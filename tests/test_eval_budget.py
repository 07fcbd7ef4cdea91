"""Per-family settings: configs/eval/budget/<model>.yaml sets eval.num_samples and eval.every_n_epochs for that
model choice (configs/data/family/ its data settings), a command-line setting still wins, and the README states them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import genlab.train  # noqa: F401  (registers eval/metric_settings, which configs/eval/default.yaml merges in)

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))


def compose_train(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def budget(family: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "eval" / "budget" / f"{family}.yaml"))


@pytest.mark.slow  # composes every family's config: over a second
def test_every_family_has_a_budget_that_the_composed_config_uses() -> None:
    for family in FAMILIES:
        chosen = budget(family)
        assert {"num_samples", "every_n_epochs"} <= set(chosen), family
        cfg = compose_train(f"model={family}", "eval=default")
        for key, value in chosen.items():
            assert cfg.eval[key] == value, (family, key)
        assert cfg.eval.kid_subset_size <= cfg.eval.num_samples, family  # KID's subsets fit in the generated set


def test_a_command_line_setting_wins_over_the_budget_and_eval_none_stays_off() -> None:
    cfg = compose_train("model=diffusion", "eval=default", "eval.num_samples=77")
    assert cfg.eval.num_samples == 77 and cfg.eval.every_n_epochs == budget("diffusion")["every_n_epochs"]
    assert "_target_" not in compose_train("model=diffusion", "eval=none").eval  # no callback is built


@pytest.mark.parametrize("family", FAMILIES)
def test_the_readme_states_each_familys_budget(family: str) -> None:
    readme = (ROOT / "README.md").read_text()
    row = re.search(rf"^\| `model={family}` \| ([\d,]+) \| (\d+) \|", readme, re.MULTILINE)
    assert row, f"no row for model={family} in the README's evaluation budget table"
    chosen = budget(family)
    assert (int(row[1].replace(",", "")), int(row[2])) == (chosen["num_samples"], chosen["every_n_epochs"])


def test_the_gmm_trains_on_its_own_batch_size_and_the_others_on_the_datas() -> None:
    assert compose_train("model=gmm").data.batch_size == 1024  # configs/data/family/gmm.yaml
    assert compose_train("model=vae").data.batch_size == 128
    assert compose_train("model=gmm", "data.batch_size=64").data.batch_size == 64  # the command line wins
