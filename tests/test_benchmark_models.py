"""scripts/benchmark_models.py: its training overrides compose with the real config, and its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import compose_train
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("benchmark_models", ROOT / "scripts" / "benchmark_models.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


@pytest.mark.parametrize(
    ("budget", "max_epochs", "max_time"),
    [(["--minutes", "2.5"], -1, "00:00:02:30"), (["--epochs", "7"], 7, None), ([], -1, "00:00:03:00")],
)
def test_training_overrides_compose_with_train_yaml(tmp_path: Path, budget, max_epochs, max_time) -> None:
    args = benchmark.parse_args(["--models", "cgan", "--data", "synthetic", "--extra", "model.lr_g=5e-4", *budget])
    overrides = benchmark.train_overrides(args, "cgan", 3)
    cfg = compose_train(tmp_path / "run", *overrides)
    GlobalHydra.instance().clear()
    assert cfg.model._target_ == "genlab.models.gan.GANModule" and cfg.model.lr_g == 5e-4
    assert cfg.seed == 3 and "_target_" not in cfg.eval  # eval=none: no in-run evaluation (the budget keys alone)
    assert (cfg.trainer.max_epochs, cfg.trainer.max_time) == (max_epochs, max_time)


def test_unknown_model_names_the_valid_ones(capsys) -> None:
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--models", "vae", "flow"])
    err = capsys.readouterr().err
    assert "unknown model config(s) ['flow']" in err and "'diffusion'" in err


def record(model: str, seed: int, fid: float, **metrics: float) -> dict:
    extractor = {"extractor": "domain-mnist", "extractor_hash": "abc", "num_fake": 100, "num_real": 100}
    return {"model": model, "seed": seed, "metrics": {"fid": fid, **metrics}, **extractor} | {
        "train_s": 10.0 * (seed + 1),
        "epochs": 5,
        "samples_per_s": 1000.0,
    }


def test_table_sorts_by_fid_with_mean_and_std_over_seeds() -> None:
    args = benchmark.parse_args(["--epochs", "5", "--seeds", "0", "1"])
    records = [record("gan", 0, 20.0), record("gan", 1, 30.0), record("cgan", 0, 10.0, accuracy=0.9)]
    lines = benchmark.table(records, args).splitlines()
    assert lines[0].startswith("data=mnist, 5 epochs per run, seeds 0, 1; 100 generated vs 100 real")
    assert lines[2] == "| model | fid | accuracy | epochs | train (s) | samples/s |"
    assert lines[4] == "| cgan | 10.00 | 0.900 | 5 | 10 | 1000 |"
    assert lines[5] == "| gan | 25.00 ± 7.07 | – | 5 ± 0 | 15 ± 7 | 1000 ± 0 |"


def test_merge_replaces_the_same_model_and_seed_only(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(benchmark.json.dumps([record("gan", 0, 20.0), record("vae", 0, 50.0)]))
    merged = benchmark.merge(path, [record("gan", 0, 15.0), record("gan", 1, 16.0)])
    assert sorted((r["model"], r["seed"], r["metrics"]["fid"]) for r in merged) == [
        ("gan", 0, 15.0),
        ("gan", 1, 16.0),
        ("vae", 0, 50.0),
    ]
