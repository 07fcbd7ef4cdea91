"""What the entry points share around Hydra: a user's mistake is one line on stderr and exit code 2, a start that
failed leaves no run folder, and an override of a key the config file does not list is answered from the
target's parameters (`model.beta=2` works; `model.latnt_dim=8` says "did you mean 'latent_dim'?").

HYDRA_FULL_ERROR=1 shows the full traceback instead, as it does for Hydra's own errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab.checks import ConfigError, RunError, did_you_mean

EXIT_CONFIG_ERROR = 2


def full_trace() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextlib.contextmanager
def one_line_errors(run_dir: str | Path | None, stop_at: str | Path | None = None) -> Iterator[None]:
    """Print a ConfigError as `error: <message>` and exit 2 (a RunError: exit 1); remove `run_dir` when the run
    never started (it has no status.json), and its parents up to `stop_at` that are left empty."""
    from hydra.errors import InstantiationException

    try:
        try:
            yield
        except InstantiationException as err:  # a constructor's own check, wrapped by Hydra's instantiate
            if isinstance(err.__cause__, (ConfigError, RunError)):
                raise err.__cause__ from None
            if is_misconfiguration(err.__cause__):
                raise ConfigError(f"{err.__cause__}") from None
            raise
        except Exception as err:
            if is_misconfiguration(err):  # Lightning's word for a setting it cannot use (at fit's start too)
                raise ConfigError(f"{err}") from None
            raise
    except (ConfigError, RunError) as err:
        if full_trace():
            raise
        if run_dir is not None:
            remove_unstarted(Path(run_dir), Path(stop_at) if stop_at else None)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR if isinstance(err, ConfigError) else 1) from None


def is_misconfiguration(err: BaseException | None) -> bool:
    """Lightning's MisconfigurationException (`trainer.max_epochs=-5`, clipping a manual-optimization model),
    recognised without importing Lightning."""
    return type(err).__name__ == "MisconfigurationException"


def remove_unstarted(run_dir: Path, stop_at: Path | None) -> None:
    """Delete a run folder that holds only what Hydra wrote before the check failed (.hydra/, the log)."""
    if not run_dir.is_dir() or (run_dir / "status.json").exists() or (run_dir / "checkpoints").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    while stop_at is not None and parent != stop_at.resolve() and parent.resolve() != stop_at.resolve():
        with contextlib.suppress(OSError):
            parent.rmdir()  # only when empty
        if parent.exists() or parent == parent.parent:
            break
        parent = parent.parent


def resume_in_place(argv: list[str]) -> list[str]:
    """`ckpt_path=<run folder>` (or a checkpoint in its checkpoints/) continues in that folder: `hydra.run.dir`
    is set to it, unless the command line sets it or runs a sweep. Its csv log and status.json carry on."""
    run = resume_folder(argv)
    return argv if run is None else [*argv, f"hydra.run.dir='{run}'"]


def resume_folder(argv: list[str]) -> Path | None:
    """The run folder that `resume_in_place` continues in, None where it leaves the command line as it is."""
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("ckpt_path=")), None)
    if not ckpt or any(a.startswith("hydra.run.dir=") for a in argv) or {"-m", "--multirun"} & set(argv):
        return None
    path = Path(ckpt)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    return run if run is not None and (run / ".hydra").is_dir() else None


def unknown_key_message(key: str, cfg: DictConfig) -> str | None:
    """For an override `key=value` of a key that `cfg` lacks: None when the key's node has a `_target_` that
    takes it (it is then added), else the one-line error with the closest valid key."""
    from genlab.preflight import EXTRACTOR_CALL, HYDRA_KEYS, eval_parameters
    from genlab.signatures import target_parameters

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        return None  # Hydra's own message is right: the parent is missing or not a group
    target = parent.get("_target_")
    params = (eval_parameters(parent) if parent_key == "eval" else target_parameters(target)) if target else None
    valid = sorted({*(params.defaults if params else ()), *parent.keys()} - set(HYDRA_KEYS))
    if parent.get("_partial_"):
        valid = [v for v in valid if v not in EXTRACTOR_CALL]
    if params is not None and (leaf in valid or params.var_keyword):
        return None
    return f"{key} is not a setting{f' of {target}' if target else ''}{did_you_mean(leaf, valid)}; valid: {valid}"


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted `key` is in `cfg`, without resolving any interpolation on the way."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return False
        node = node._get_node(part, validate_access=False)  # struct mode would raise for a missing key
        if node is None:
            return False
    return True


def install_override_check() -> None:
    """Wrap Hydra's override step: `group.key=value` for a parameter of the group's target that its YAML does
    not list is added as if written `+group.key=value`; any other missing key fails with `unknown_key_message`."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import ConfigCompositionException

    original = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(original, "genlab", False):
        return

    def apply(overrides: list[Any], cfg: DictConfig) -> None:
        for override in overrides:
            key = override.key_or_group
            if override.type != OverrideType.CHANGE or override.package or has_key(cfg, key):
                continue
            message = unknown_key_message(key, cfg)
            if message is not None and full_trace():
                raise ConfigCompositionException(message)
            if message is not None:  # as `one_line_errors` does; Hydra would add a hint and exit 1
                print(f"error: {message}", file=sys.stderr)
                raise SystemExit(EXIT_CONFIG_ERROR)
            override.type = OverrideType.ADD
        original(overrides, cfg)

    apply.genlab = True  # type: ignore[attr-defined]
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply)
