"""Sweeps on Hydra's engines: multirun folders, the joblib and submitit launchers, the Optuna search, GPU pinning
of parallel jobs, and clear messages when a plugin package is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST, TINY_MODELS, Started, train_py
from omegaconf import OmegaConf

from genlab.train import check_plugins, missing_plugins, optimized_value, sweep_job_device

TINY = [*FAST, *TINY_MODELS["vae"]]


def statuses(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/status.json"))}


@pytest.mark.parametrize(
    ("trainer", "gpus", "expected"),
    [
        ({"accelerator": "auto", "devices": "auto"}, 4, [[0], [1], [2], [3], [0], [1]]),
        ({"accelerator": "gpu", "devices": 1}, 2, [[0], [1], [0], [1], [0], [1]]),
        ({"accelerator": "auto", "devices": "auto"}, 1, [None] * 6),  # one GPU (or a Slurm job's own): as is
        ({"accelerator": "auto", "devices": "auto"}, 0, [None] * 6),
        ({"accelerator": "cpu", "devices": 1}, 4, [None] * 6),
        ({"accelerator": "gpu", "devices": 2}, 4, [None] * 6),  # a multi-GPU run chooses its own devices
        ({"accelerator": "auto", "devices": "auto", "strategy": "ddp"}, 4, [None] * 6),
    ],
)
def test_parallel_sweep_jobs_get_their_own_gpu_round_robin(trainer: dict, gpus: int, expected: list) -> None:
    cfg = OmegaConf.create(trainer)
    assert [sweep_job_device(cfg, job, gpus) for job in range(6)] == expected


def test_missing_launcher_or_sweeper_names_the_package(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if "hydra_plugins" in name else real_find_spec(name)
    )
    assert missing_plugins(["model=gan", "hydra/launcher=joblib", "hparams_search=optuna"]) == [
        "hydra-joblib-launcher",
        "hydra-optuna-sweeper",
    ]
    assert missing_plugins(["hydra/launcher=submitit_slurm"]) == ["hydra-submitit-launcher"]
    assert missing_plugins(["model=gan", "seed=1,2"]) == []
    with pytest.raises(SystemExit, match=r"hydra-submitit-launcher is not installed.*pip install"):
        check_plugins(["-m", "hydra/launcher=submitit_local"])


def test_a_search_without_its_metric_says_what_was_logged() -> None:
    cfg = OmegaConf.create({"optimized_metric": "eval/fid"})
    assert optimized_value(cfg, {"eval/fid": 3.5, "val/loss": 1.0}) == 3.5
    with pytest.raises(KeyError, match=r"optimized_metric=eval/fid was not logged.*'val/loss'"):
        optimized_value(cfg, {"val/loss": 1.0})
    assert optimized_value(OmegaConf.create({"optimized_metric": None}), {}) is None


EVALUATION = ["eval=default", "eval/extractor=random", "eval.num_samples=32", "eval.batch_size=16"]
EVALUATION += ["eval.kid_subsets=5", "eval.kid_subset_size=16", "eval.progress=false"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Started, Path]]:
    """The three sweeps of this module, started together; each one's process and sweep folder."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("joblib", "submitit", "optuna")}
    joblib = ["-m", *TINY, "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    submitit = ["-m", *TINY, "seed=3", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    submitit += ["hydra.launcher.gpus_per_node=0"]
    optuna = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"]
    optuna += [o for o in TINY if not o.startswith(("eval=", "model.latent_dim"))]  # latent_dim is searched
    optuna += [*EVALUATION, f"eval.cache_dir={folders['optuna'] / 'cache'}"]
    overrides = {"joblib": joblib, "submitit": submitit, "optuna": optuna}
    started = {
        name: (train_py(root, *overrides[name], f"hydra.sweep.dir={root / 'sweep'}"), root / "sweep")
        for name, root in folders.items()
    }
    yield started
    for process, _ in started.values():
        process.stop()


@pytest.mark.slow
def test_multirun_with_joblib_runs_jobs_in_parallel_processes(sweeps: dict[str, tuple[Started, Path]]) -> None:
    started, sweep = sweeps["joblib"]
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = statuses(sweep)
    assert list(jobs) == ["0", "1"] and all(job["status"] == "completed" for job in jobs.values())
    assert jobs["0"]["pid"] != jobs["1"]["pid"]  # two worker processes, not one after the other in the same one
    seeds = [yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["seed"] for job in jobs]
    assert seeds == [1, 2]
    assert (sweep / "multirun.yaml").is_file()


@pytest.mark.slow
def test_multirun_with_submitit_local_runs_each_job_as_a_submitit_job(sweeps: dict[str, tuple[Started, Path]]) -> None:
    started, sweep = sweeps["submitit"]
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert statuses(sweep)["0"]["status"] == "completed"
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit ran it and stored its result


@pytest.mark.slow
def test_optuna_search_minimises_eval_fid(sweeps: dict[str, tuple[Started, Path]]) -> None:
    started, sweep = sweeps["optuna"]
    result = started.result()
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    fids = [job["metrics"]["eval/fid"] for job in statuses(sweep).values()]
    assert len(fids) == 2 and best["best_value"] == pytest.approx(min(fids))
    assert {"model.lr", "model.latent_dim", "model.beta"} <= set(best["best_params"])


def test_slurm_preset_configures_the_submitit_slurm_launcher(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from genlab.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.max_num_timeout == 3 and launcher.signal_delay_s == 120
