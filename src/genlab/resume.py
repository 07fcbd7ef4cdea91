"""Resuming a run: which checkpoint a run folder stands for, whether a checkpoint can be resumed (readable,
a Lightning training checkpoint, epochs or steps left), and the command lines that resume or train on. Torch is
imported only where a checkpoint is read in full."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab.checks import ConfigError

CHECKPOINT_KEYS = ("state_dict", "epoch", "global_step", "optimizer_states", "loops")


def check_checkpoint(path: str, trainer_cfg: DictConfig | None = None) -> None:
    """Raise a ConfigError unless `path` is a complete Lightning training checkpoint that still has epochs (or
    steps) left to train under `trainer_cfg`."""
    import torch

    from genlab.preflight import check_checkpoint_path

    check_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"ckpt_path={path} cannot be read; is it truncated or corrupt? ({err})") from None
    missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise ConfigError(f"ckpt_path={path} is not a Lightning training checkpoint: it has no {missing}")
    if trainer_cfg is not None:
        check_not_finished(path, checkpoint, trainer_cfg)


def check_not_finished(path: str, checkpoint: dict[str, Any], trainer_cfg: DictConfig) -> None:
    """A checkpoint whose run already reached max_epochs (or max_steps) would 'resume' into nothing."""
    progress = checkpoint["loops"].get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs, steps = progress.get("processed", 0), checkpoint["global_step"]  # processed: what Lightning resumes from
    max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps") or -1
    if max_steps != -1 and steps >= max_steps:
        raise ConfigError(
            f"ckpt_path={path}: that run already trained its {steps} step(s) (trainer.max_steps={max_steps}); "
            f"to train on, raise it: {train_on_command(path, f'trainer.max_steps={2 * steps}')}"
        )
    if max_steps == -1 and max_epochs not in (None, -1) and epochs >= max_epochs:
        raise ConfigError(
            f"ckpt_path={path}: that run already trained its {epochs} epoch(s) (trainer.max_epochs={max_epochs}); "
            f"to train on, raise it: {train_on_command(path, f'trainer.max_epochs={epochs + max(epochs, 1)}')}"
        )


def train_on_command(path: str, setting: str) -> str:
    """This command line resumed from `path` with `setting` (`trainer.max_epochs=4`) in place of its own value: a
    checkpoint holds no config, so the data and model overrides must come again."""
    key = setting.split("=", 1)[0]
    overrides = [o for o in task_overrides() if o.split("=", 1)[0].lstrip("+~") != key]
    return shlex.join(["python", "train.py", f"ckpt_path={path}", *overrides, setting])


def resolve_checkpoint(ckpt_path: str | None) -> str | None:
    """A run folder stands for its newest checkpoint (last.ckpt or on_exception.ckpt)."""
    from genlab.preflight import newest_checkpoint

    if ckpt_path and Path(ckpt_path).is_dir():
        return str(newest_checkpoint(Path(ckpt_path)))
    return ckpt_path


def task_overrides() -> list[str]:
    """The command line's overrides, less ckpt_path and hydra.run.dir (the resume command sets both)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
