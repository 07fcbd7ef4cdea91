"""Loggers that Hydra configs point at. wandb runs online when an API key is set up, else offline; the CSV
logger appends to a resumed run's metrics.csv instead of deleting it. And `print_each_line_once`, for the
console.

An offline run writes `<save_dir>/wandb/offline-run-*` that `wandb sync <that folder>` uploads later; it
never prompts for a login and never waits on the network.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from genlab.checks import ConfigError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def print_each_line_once() -> None:
    """Lightning gives the `lightning` logger a console handler of its own and lets it propagate to the root
    logger, which Hydra has configured (the console and the run's train.log): every Lightning line printed
    twice. Where the root logger has handlers, Lightning's own console handler is removed; its lines still
    reach the console and train.log once, through Hydra's."""
    if not logging.getLogger().handlers:
        return
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_logger.removeHandler(handler)


def wandb_api_key_available() -> bool:
    """True if wandb would find an API key without asking: WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str = "auto") -> str:
    """`auto` -> WANDB_MODE if set, else `online` with an API key and `offline` without one."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"wandb mode must be one of {list(WANDB_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env_mode == "dryrun" else env_mode
    return "online" if wandb_api_key_available() else "offline"


def sweep_group() -> str | None:
    """The sweep a run belongs to (its multirun folder, e.g. `multiruns/2026-11-24/10-00-00`), None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep_dir = os.path.normpath(HydraConfig.get().sweep.dir)
    return "/".join(sweep_dir.split(os.sep)[-3:])


def wandb_logger(mode: str = "auto", group: str | None = "auto", **kwargs) -> WandbLogger:
    """A Lightning `WandbLogger` in the resolved mode; `group="auto"` groups the runs of one sweep together.
    `kwargs` go to `WandbLogger` (and on to `wandb.init`)."""
    group = sweep_group() if group == "auto" else group
    return WandbLogger(mode=resolve_wandb_mode(mode), group=group, **kwargs)


def summarize_run(loggers: list, metrics: dict[str, float], best_fid: float | None) -> None:
    """At the end of a run, put the best `eval/fid` in each wandb run's summary and log a table of the final
    metrics (one row per metric), so that a sweep's runs compare at a glance in the dashboard."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        if best_fid is not None:
            logger.experiment.summary["best/eval_fid"] = best_fid
        rows = [[name, value] for name, value in sorted(metrics.items()) if name.split("/")[0] in ("eval", "val")]
        logger.log_table(key="final_metrics", columns=["metric", "value"], data=rows)


def run_summary(
    metrics: dict[str, float],
    best: list[tuple[str, float | None, str]],
    run_dir: str,
    data_args: list[str],
    train_on: str,
) -> str:
    """The end of a run on the terminal: its final eval/* numbers and losses, the best checkpoints and the
    commands that train on or evaluate it."""
    shown = {k: v for k, v in sorted(metrics.items()) if k.startswith("eval/") or k in ("train/loss", "val/loss")}
    width = max((len(k) for k in shown), default=0)
    lines = [f"run finished: {run_dir}", *(f"  {k:<{width}}  {v:12.5g}" for k, v in shown.items())]
    for monitor, score, path in best:
        lines.append(f"best by {monitor}" + (f" ({score:.5g})" if score is not None else "") + f": {path}")
    chosen = best[-1][2] if best else f"{run_dir}/checkpoints/last.ckpt"
    lines.append(f"train on:  {train_on}")
    lines.append(f"evaluate:  python evaluate.py ckpt_path={chosen} {' '.join(data_args)}".rstrip())
    return "\n".join(lines)


def finish_loggers(loggers: list, failed: bool = False) -> None:
    """Close runs that outlive `Trainer.fit`: a wandb run must end before the next run of a multirun starts,
    and an offline run's files are only complete once it has."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps its rows and header and appends.

    A requeued or resumed job writing into its old run folder then keeps the curves of its earlier part. Rows
    logged after the checkpoint it resumed from appear twice (once from each attempt); readers keep the last."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(csv.DictReader(file).fieldnames or [])


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, appending to the run folder's metrics.csv when it already exists."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
