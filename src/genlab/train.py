"""Training entry point: `python train.py model=vae data=mnist [trainer=cpu|gpu|ddp] [logger=csv|tensorboard|wandb]`.

Everything is built from the composed Hydra config here (the only place that calls `instantiate`), in the
order that lets bad input fail before anything is written: the whole config is checked before torch is imported
(`genlab.preflight`), then the checkpoint to resume from is read (`genlab.resume`), then the data and model
(whose constructors validate their arguments), the evaluation's counts against the data, then the loggers. A
mistake is one line (`genlab.cli`); Ctrl-C and SIGTERM are `interrupted` runs (`genlab.interrupt`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.resume import check_checkpoint, resolve_checkpoint, task_overrides, train_on_command

if TYPE_CHECKING:
    from collections.abc import Iterator

    import lightning as L

# torch and Lightning are imported inside the functions: a typo in a config choice or `--help` then
# answers in a second instead of after the framework's import time.

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def register_metric_settings() -> None:
    """Put the metric table's settings and defaults into Hydra's config store as `eval/metric_settings`, which
    `configs/eval/default.yaml` merges in: the defaults live in `genlab/metric_table.py` alone, and every
    setting is a key of the eval node (`eval.kid_subset_size=400` works; a misspelt one fails)."""
    from hydra.core.config_store import ConfigStore

    from genlab.metric_table import SETTINGS

    ConfigStore.instance().store(group="eval", name="metric_settings", node=dict(SETTINGS))


register_metric_settings()


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group (callbacks, loggers) that has a `_target_`."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def training_callbacks(cfg: DictConfig, model: Any) -> list[Any]:
    """The `callbacks` group; a ModelCheckpoint with `monitor: auto` ranks by the model family's
    `checkpoint_monitor`, and is left out for a family without one (the GAN)."""
    callbacks = []
    for name, entry in (cfg.get("callbacks") or {}).items():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        if entry.get("monitor") == "auto":
            monitor = getattr(model, "checkpoint_monitor", "val/loss")
            if monitor is None:
                log.info(f"callbacks.{name}: no best-by-loss checkpoint for {type(model).__name__}; last.ckpt is kept")
                continue
            entry = OmegaConf.merge(entry, {"monitor": monitor})
        callbacks.append(instantiate(entry))
    return callbacks


def eval_callbacks(cfg: DictConfig) -> list[Any]:
    """The GenerativeEval callback (unless eval=none) and, when it computes FID, a checkpoint of the best model
    by `eval/fid` beside last.ckpt: GANs often peak long before the end of training."""
    from genlab.callbacks import BestFIDCheckpoint

    if not cfg.get("eval") or "_target_" not in cfg.eval:
        return []
    evaluation = instantiate(cfg.eval)
    callbacks = [evaluation]
    if "fid" in [m.name for m in evaluation.evaluator.metrics]:
        best_fid = BestFIDCheckpoint(
            evaluation,
            dirpath=f"{cfg.paths.output_dir}/checkpoints",
            filename="best-fid-epoch{epoch:03d}",
            save_top_k=1,
            auto_insert_metric_name=False,
        )
        callbacks.append(best_fid)
    return callbacks


def sweep_job_device(trainer_cfg: DictConfig, job_num: int, gpu_count: int) -> list[int] | None:
    """The GPU of job `job_num` of a sweep, round-robin over `gpu_count` visible GPUs, for one-device runs only
    (parallel jobs from the joblib launcher then never share a GPU); None to leave the trainer config as it is."""
    ddp = str(trainer_cfg.get("strategy", "")).startswith("ddp")
    one_device = trainer_cfg.get("devices") in ("auto", 1, "1") and not ddp
    on_gpu = trainer_cfg.get("accelerator") in ("auto", "gpu", "cuda")
    if gpu_count < 2 or not (one_device and on_gpu):
        return None
    return [job_num % gpu_count]


def pin_sweep_job_to_gpu(cfg: DictConfig) -> None:
    """In a Hydra multirun on a machine with several GPUs, give each one-device job its own GPU."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    job_num = HydraConfig.get().job.num
    devices = sweep_job_device(cfg.trainer, job_num, torch.cuda.device_count())
    if devices is not None:
        with open_dict(cfg):
            cfg.trainer.devices = devices
        log.info(f"sweep job {job_num}: GPU {devices[0]} of {torch.cuda.device_count()}")


def data_shape_kwargs(model_cfg: DictConfig, datamodule: Any) -> dict[str, int]:
    """What the data decides for the model: the image shape, and the class count where the model config asks for
    `num_classes: auto` (a conditional model on this dataset)."""
    kwargs = {"image_channels": datamodule.channels, "image_size": datamodule.image_size}
    if model_cfg.get("num_classes") == "auto":
        kwargs["num_classes"] = datamodule.num_classes
    return kwargs


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model on the configured data; returns the last logged metrics."""
    from genlab.preflight import check_train_config

    check_train_config(cfg)  # keys, types, names and counts, before torch's import time
    import lightning as L

    from genlab import interrupt
    from genlab.atomic import AtomicCheckpointIO
    from genlab.callbacks import RNGState
    from genlab.loggers import finish_loggers, print_each_line_once, run_summary, summarize_run

    print_each_line_once()
    log.info(f"run folder: {cfg.paths.output_dir}")  # first, so that a long run's output is found at once
    interrupt.install()

    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"))
    if ckpt_path:
        check_checkpoint(ckpt_path, cfg.trainer)
    L.seed_everything(cfg.seed, workers=True)
    # With an OnExceptionCheckpoint, Lightning resumes from the run folder's newest checkpoint when there is
    # one (what a requeued job wants) and otherwise warns twice that there is none: a new run folder has none.
    warnings.filterwarnings("ignore", message=r".*\(ckpt_path=None\)` was called without a model")
    warnings.filterwarnings("ignore", message=r'.*\(ckpt_path="last"\) is set, but there is no last checkpoint')
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning itself
    if ckpt_path:  # a run resumed in its own folder writes on into checkpoints/, as it should
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

    pin_sweep_job_to_gpu(cfg)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model, **data_shape_kwargs(cfg.model, datamodule), _convert_="all")
    callbacks = [*training_callbacks(cfg, model), *eval_callbacks(cfg), RNGState()]
    check_evaluation_counts(callbacks, datamodule)
    loggers = instantiate_group(cfg.get("logger"))
    plugins = [AtomicCheckpointIO()]  # a kill while a checkpoint is written leaves the previous one whole
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    status = RunStatus(Path(cfg.paths.output_dir), enabled=trainer.is_global_zero)
    status.write("running", resumed_from=ckpt_path)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except BaseException as err:
        finish_loggers(loggers, failed=True)
        record_failure(status, err, trainer, cfg)
        raise
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
    metrics = final_metrics(trainer)
    lowest_fid = best_fid(callbacks)
    summarize_run(loggers, metrics, lowest_fid)
    finish_loggers(loggers)
    evaluation = evaluation_info(callbacks)  # once: status.json and the summary state the same figures
    status.write(
        "completed",
        metrics=metrics,
        evaluation=evaluation,
        best_checkpoint=best or None,
        best_fid=lowest_fid,
    )
    data_args = [o for o in task_overrides() if o.startswith(("data=", "data.", "paths."))]
    train_on = train_on_command(cfg.paths.output_dir, f"trainer.max_epochs={2 * trainer.current_epoch}")
    summary = run_summary(metrics, best_checkpoints(callbacks), cfg.paths.output_dir, data_args, train_on)
    log.info(summary + evaluation_line(evaluation))
    return metrics


def check_evaluation_counts(callbacks: list[Any], datamodule: Any) -> None:
    """The evaluation's sample counts against the FID reference's size, known once the data is loaded: found
    now, not after the first epoch."""
    from genlab import metric_table
    from genlab.callbacks import GenerativeEval

    for callback in callbacks:
        if isinstance(callback, GenerativeEval):
            e = callback.evaluator
            datamodule.prepare_data()
            datamodule.setup("fit")
            metric_table.check_sample_counts(e.metric_names, e.settings, e.num_samples, len(datamodule.train_set))


def record_failure(status: RunStatus, err: BaseException, trainer: Any, cfg: DictConfig) -> None:
    """status.json after an exception: `interrupted` (Ctrl-C, SIGTERM) with the command that resumes, or `failed`
    with the error. An interrupted run exits with 128 + the signal's number."""
    from genlab import interrupt

    code = interrupt.exit_code()
    if code is None:
        status.write("failed", error=f"{type(err).__name__}: {err}", metrics=final_metrics(trainer))
        return
    resume = shlex.join(["python", "train.py", f"ckpt_path={cfg.paths.output_dir}", *task_overrides()])  # pastes as is
    status.write("interrupted", signal=code - 128, resume=resume, metrics=final_metrics(trainer))
    log.warning(f"interrupted ({interrupt.Interrupted(code - 128)}); resume with: {resume}")
    raise SystemExit(code) from None


def best_checkpoints(callbacks: list[Any]) -> list[tuple[str, float | None, str]]:
    """(what it ranks by, its score, path) of each checkpoint callback that kept a best model."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    found = []
    for c in callbacks:
        if isinstance(c, ModelCheckpoint) and c.monitor and c.best_model_path:
            score = float(c.best_model_score) if c.best_model_score is not None else None
            found.append((c.monitor, score, c.best_model_path))
    return found


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


def best_fid(callbacks: list[Any]) -> float | None:
    """The lowest `eval/fid` of the run (from its best-FID checkpoint callback), None without one."""
    from genlab.callbacks import BestFIDCheckpoint

    scores = [
        c.best_model_score for c in callbacks if isinstance(c, BestFIDCheckpoint) and c.best_model_score is not None
    ]
    return float(scores[0]) if scores else None


def evaluation_info(callbacks: list[Any]) -> dict[str, Any] | None:
    """Which extractor (name, weights hash, precision) produced the run's eval/* numbers, if any, and the
    evaluations' wall time and share of the fit's (`GenerativeEval.overhead`)."""
    from genlab.callbacks import GenerativeEval

    for callback in callbacks:
        if isinstance(callback, GenerativeEval) and callback.extractor is not None:
            e = callback.extractor
            info = {"extractor": e.name, "extractor_hash": e.weights_hash(), "precision": e.precision}
            return info | (callback.overhead() or {})
    return None


def evaluation_line(info: dict[str, Any] | None) -> str:
    """The summary's last line: how many evaluations, their time and their share of the fit ('' without)."""
    if not info or "seconds" not in info:
        return ""
    n, seconds, fit = info["evaluations"], info["seconds"], info["fit_seconds"]
    return f"\nevaluation: {n} in {seconds:.1f} s, {100 * info['share']:.0f}% of the fit's {fit:.0f} s"


class RunStatus:
    """`<run folder>/status.json`: running, completed or failed, with times and the final metrics, rewritten
    atomically at each change; a run whose file still says `running` after its process is gone crashed."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path, self.enabled = run_dir / "status.json", enabled
        self.record: dict[str, Any] = {"started": now(), "pid": os.getpid(), "host": socket.gethostname()}

    def write(self, status: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self.record.update(status=status, **fields)
        if status != "running":
            self.record["finished"] = now()
        from genlab.atomic import atomic_write

        text = json.dumps(self.record, indent=2).encode()
        atomic_write(self.path, lambda f: f.write(text))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Hydra plugins behind config choices: (override prefix, choice) -> (plugin module, PyPI package).
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    ("hparams_search", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
}


def missing_plugins(argv: list[str]) -> list[str]:
    """The PyPI packages that the command line's launcher or search choices need and that are not installed."""
    import importlib.util

    missing = []
    for arg in argv:
        key, _, choice = arg.lstrip("+~").partition("=")
        module, package = PLUGINS.get((key.removeprefix("override "), choice), (None, None))
        if module and importlib.util.find_spec(module) is None and package not in missing:
            missing.append(package)
    return missing


def check_plugins(argv: list[str]) -> None:
    """Exit with the install command when a launcher or sweeper plugin on the command line is missing (Hydra
    itself would only say that it cannot find the config)."""
    missing = missing_plugins(argv)
    if missing:
        raise SystemExit(
            f"{' '.join(missing)} is not installed, and the command line asks for it: "
            f"pip install {' '.join(missing)}  (or: pip install -e '.[launchers]')"
        )


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric a hyperparameter search minimises (`optimized_metric`), with a clear error if the run did not
    log it (evaluation off, or not run at the last epoch)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name} was not logged by this run; logged: {sorted(metrics)}")
    return metrics[name]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    from genlab.cli import one_line_errors

    with one_line_errors(cfg.paths.output_dir, stop_at=cfg.paths.log_dir):
        return optimized_value(cfg, train(cfg))


def main() -> float | None:
    import sys

    from genlab.cli import install_override_check, resume_folder, resume_in_place

    check_plugins(sys.argv[1:])
    install_override_check()
    run = resume_folder(sys.argv[1:])
    sys.argv[1:] = resume_in_place(sys.argv[1:])
    with unchanged_unless_started(run):
        return _main()


@contextlib.contextmanager
def unchanged_unless_started(run_dir: Path | None) -> Iterator[None]:
    """A resume in `run_dir` that stops before it starts training (a finished run, a bad checkpoint) leaves the
    folder as it was: Hydra has rewritten its .hydra/ record and added to train.log before any check could run."""
    if run_dir is None:
        yield
        return
    record = {p: p.read_bytes() for p in (run_dir / ".hydra").glob("*")}
    log_file, status = run_dir / "train.log", run_dir / "status.json"
    log_size = log_file.stat().st_size if log_file.is_file() else 0
    status_before = status.read_bytes() if status.is_file() else None
    try:
        yield
    except SystemExit as err:
        started = (status.read_bytes() if status.is_file() else None) != status_before  # it wrote `running`
        if err.code not in (None, 0) and not started:
            for path in set((run_dir / ".hydra").glob("*")) - set(record):
                path.unlink()
            for path, data in record.items():
                path.write_bytes(data)
            if log_file.is_file():
                os.truncate(log_file, log_size)
        raise
