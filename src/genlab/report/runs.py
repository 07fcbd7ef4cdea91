"""Find the runs under a run or sweep folder and read each one, damaged or not, into a `Run`.

A run folder is what `train.py` writes (see configs/hydra/default.yaml): `.hydra/` (config.yaml,
overrides.yaml, hydra.yaml), `csv/metrics.csv` and `csv/hparams.yaml` from Lightning's CSVLogger,
`samples/epoch_XXX.png`, `reconstructions/epoch_XXX.png` and `status.json` (genlab.train.RunStatus). With
`logger=tensorboard` the metrics are TensorBoard event files under `tensorboard/` (with `hparams.yaml` beside them)
instead of `csv/`; a run with both is read from its csv. A sweep folder (Hydra multirun) holds one run folder per
job: `0/`, `1/`, ...

Reading never raises on a damaged run: a crash, a half-written file or a run still `running` after its process
died becomes the run's `status` and `error`, so the report shows it instead of skipping it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genlab.report.tensorboard_events import INSTALL, epoch_points, event_dirs, read_scalars

TENSORBOARD = "tensorboard"  # TensorBoardLogger's folder in a run (configs/logger/tensorboard.yaml: name)
RUN_MARKERS = (".hydra", "status.json", "csv", TENSORBOARD, "train.log")
COUNTERS = ("epoch", "step")  # what loggers write beside the metrics to place them, not metrics
MAX_DEPTH = 4  # how deep below the given folder runs are looked for (outputs/multiruns/<date>/<time>/<job>)
GOOD = ("completed", "unknown")  # final metrics of these runs count in the means over seeds
BAD = ("failed", "crashed", "incomplete")


class NoRunsError(FileNotFoundError):
    """The folder given to the report holds no run folder."""


@dataclass
class Run:
    """One run folder as the report sees it.

    `status` is completed | failed | crashed (status.json says running but its process is gone) | running |
    incomplete (no status.json and no whole metrics.csv) | unknown (no status.json, whole metrics.csv);
    `history` maps each metric to its per-epoch values [(epoch, value), ...].
    """

    path: Path
    name: str
    overrides: list[str] = field(default_factory=list)
    seed: int | None = None
    model: str = "?"
    data: str = "?"
    status: str = "unknown"
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    extractor: str | None = None
    config_text: str = ""
    samples: Path | None = None
    reconstructions: Path | None = None
    nearest: Path | None = None  # generated samples beside their nearest training images

    @property
    def configuration(self) -> str:
        """The overrides without the seed: runs that differ only in seed are one configuration."""
        kept = [o for o in self.overrides if o.lstrip("+~").split("=", 1)[0] != "seed"]
        return " ".join(kept) if kept else "(defaults)"

    @property
    def is_bad(self) -> bool:
        return self.status in BAD


def is_run_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def natural_key(path: Path) -> list[Any]:
    """Sort key that puts job folders 2 before 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_run_dirs(folder: Path, depth: int = 0) -> list[Path]:
    """`folder` itself if it is a run folder, else the run folders below it (not below a run folder)."""
    if is_run_dir(folder):
        return [folder]
    if depth >= MAX_DEPTH:
        return []
    children = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    return [run for child in children for run in find_run_dirs(child, depth + 1)]


def load_runs(folder: str | Path) -> list[Run]:
    """Every run under `folder` (a run or a sweep folder), read; raises NoRunsError if there is none."""
    folder = Path(folder)
    if folder.is_file():
        raise NoRunsError(f"{folder}: is a file, not a run or sweep folder")
    if not folder.is_dir():
        raise NoRunsError(f"{folder}: no such folder")
    dirs = find_run_dirs(folder)
    if not dirs:
        raise NoRunsError(
            f"{folder}: no runs found (a run folder has one of {', '.join(RUN_MARKERS)}; "
            f"a sweep folder has run folders 0/, 1/, ... below it)"
        )
    return [read_run(d, name=str(d.relative_to(folder)) if d != folder else d.name) for d in dirs]


def read_run(path: Path, name: str | None = None) -> Run:
    """Read one run folder; damage goes into `status`, `error` and `problems`, never into an exception."""
    run = Run(path=path, name=name or path.name)
    read_hydra(run)
    status = read_status(run)
    read_metrics(run)
    settle_status(run, status)
    metrics = status.get("metrics")
    if isinstance(metrics, dict):  # the final callback metrics: they agree with the csv's last values
        run.final.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
    run.extractor = describe_extractor(status.get("evaluation")) or hparams_extractor(run)
    run.samples = last_grid(path / "samples")
    run.reconstructions = last_grid(path / "reconstructions")
    run.nearest = last_grid(path / "nearest")
    return run


def load_yaml(path: Path, run: Run) -> Any:
    """The parsed file, or None (noting the problem) if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        run.problems.append(f"{path.relative_to(run.path)} cannot be read: {err}")
        return None


def read_hydra(run: Run) -> None:
    """Overrides, seed, model and data names and the config text from `.hydra/`."""
    hydra_dir = run.path / ".hydra"
    overrides = load_yaml(hydra_dir / "overrides.yaml", run)
    run.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    config_path = hydra_dir / "config.yaml" if (hydra_dir / "config.yaml").is_file() else hparams_path(run)
    config = load_yaml(config_path, run)
    config = config if isinstance(config, dict) else {}
    run.config_text = config_path.read_text(errors="replace") if config_path.is_file() else ""
    chosen = dict(o.lstrip("+~").split("=", 1) for o in run.overrides if "=" in o)
    hydra_cfg = load_yaml(hydra_dir / "hydra.yaml", run)
    choices = dig(hydra_cfg, "hydra", "runtime", "choices") or {}
    for group in ("model", "data"):
        target = str(dig(config, group, "_target_") or "?").rsplit(".", 1)[-1]
        setattr(run, group, str(choices.get(group) or chosen.get(group) or target))
    seed = chosen.get("seed", config.get("seed"))
    run.seed = int(seed) if str(seed).lstrip("-").isdigit() else None


def dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def read_status(run: Run) -> dict[str, Any]:
    """status.json as a dict ({} when missing or unreadable, noted in `problems`)."""
    path = run.path / "status.json"
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        run.problems.append(f"status.json cannot be read (half-written?): {err}")
        return {}
    if not isinstance(status, dict):
        run.problems.append(f"status.json holds {type(status).__name__}, not an object")
        return {}
    run.started, run.finished = status.get("started"), status.get("finished")
    return status


def settle_status(run: Run, status: dict[str, Any]) -> None:
    """Decide `run.status` and `run.error` from status.json and what the metrics file looked like."""
    state = status.get("status")
    if state == "running":
        pid, host = status.get("pid"), status.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
            run.status, run.error = "crashed", f"status.json says running, but its process {pid} on {host} is gone"
        else:
            run.status = "running"
    elif state in ("completed", "failed"):
        run.status, run.error = state, status.get("error")
    elif status:
        run.status, run.error = "incomplete", f"status.json has an unknown status {state!r}"
    elif any(p.startswith("status.json") for p in run.problems):  # RunStatus writes atomically: this is damage
        run.status = "incomplete"
    elif not run.history or any("metrics.csv" in p for p in run.problems):
        run.status = "incomplete"
        run.error = "no status.json and " + next((p for p in run.problems if "metrics.csv" in p), "no metrics")
    else:  # whole metrics and no status.json: a run from before status files (status stays "unknown")
        run.problems.append("no status.json: whether this run finished is not known")
    if run.problems and run.error is None and run.status in BAD:
        run.error = "; ".join(run.problems)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def read_metrics(run: Run) -> None:
    """Per-epoch history and last values from csv/metrics.csv, else from the TensorBoard event files."""
    folders = event_dirs(run.path / TENSORBOARD)
    if (run.path / "csv" / "metrics.csv").is_file() or not folders:
        read_csv_metrics(run)
    else:
        read_tensorboard_metrics(run, folders)


def read_csv_metrics(run: Run) -> None:
    """Metrics from csv/metrics.csv; a cut-off last line is dropped and noted."""
    path = run.path / "csv" / "metrics.csv"
    if not path.is_file():
        run.problems.append(f"csv/metrics.csv is missing (and {TENSORBOARD}/ holds no TensorBoard event files)")
        return
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        run.problems.append(f"csv/metrics.csv is truncated: line {len(lines)} is cut short")
        lines = lines[:-1]
    rows = list(csv.reader(lines))
    if len(rows) < 2:
        run.problems.append("csv/metrics.csv is empty" if not rows else "csv/metrics.csv has a header and no rows")
        return
    header, body = rows[0], rows[1:]
    points = []
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            run.problems.append(f"csv/metrics.csv line {number} has {len(row)} fields, not {len(header)}")
            continue
        record = dict(zip(header, row, strict=True))
        epoch = parse_float(record.get("epoch", ""))
        if epoch is None:
            continue
        for key, cell in record.items():
            value = parse_float(cell)
            if value is not None:
                points.append((key, int(epoch), value))
    keep_points(run, points)


def read_tensorboard_metrics(run: Run, folders: list[Path]) -> None:
    """Metrics from the event files in `folders` (under tensorboard/), placed by their `epoch` scalar."""
    try:
        scalars = read_scalars(folders)
    except ImportError:
        missing = f"the tensorboard package is not installed: {INSTALL}"
        run.problems.append(f"{TENSORBOARD}/ holds TensorBoard event files, but {missing}")
        return
    if not any(tag not in COUNTERS for tag in scalars):
        run.problems.append(f"the TensorBoard event files in {TENSORBOARD}/ hold no metrics")
        return
    keep_points(run, epoch_points(scalars))


def keep_points(run: Run, points: Iterable[tuple[str, int, float]]) -> None:
    """Set `history` and `final` from (metric, epoch, value) points, each metric's points in logging order."""
    per_epoch: dict[str, dict[int, list[float]]] = {}
    for key, epoch, value in points:
        if key not in COUNTERS:
            per_epoch.setdefault(key, {}).setdefault(epoch, []).append(value)
            run.final[key] = value
    # Step-logged metrics (train/*) have several values an epoch: the plot shows their epoch mean.
    run.history = {k: [(e, math.fsum(v) / len(v)) for e, v in sorted(d.items())] for k, d in per_epoch.items()}


def parse_float(text: str) -> float | None:
    try:
        return float(text) if text != "" else None
    except ValueError:
        return None


def describe_extractor(evaluation: Any) -> str | None:
    """'random 543907ee94de (tf32)' from status.json's `evaluation` (or the logger's hparams.yaml keys)."""
    if not isinstance(evaluation, dict) or not evaluation.get("extractor"):
        return None
    text = f"{evaluation['extractor']} {evaluation.get('extractor_hash') or '?'}"
    return f"{text} ({evaluation['precision']})" if evaluation.get("precision") else text


def hparams_path(run: Run) -> Path:
    """The logger's hparams.yaml: csv/hparams.yaml, else the one beside the TensorBoard event files."""
    beside_events = [folder / "hparams.yaml" for folder in event_dirs(run.path / TENSORBOARD)]
    candidates = [run.path / "csv" / "hparams.yaml", *beside_events]
    return next((path for path in candidates if path.is_file()), candidates[0])


def hparams_extractor(run: Run) -> str | None:
    hparams = load_yaml(hparams_path(run), run)
    if not isinstance(hparams, dict):
        return None
    keys = ("extractor", "extractor_hash", "precision")
    return describe_extractor({key: hparams.get(f"eval/{key}") for key in keys})


def last_grid(folder: Path) -> Path | None:
    """The grid of the latest epoch (`epoch_XXX.png`) in `folder`, if any."""
    grids = [p for p in folder.glob("epoch_*.png") if p.stem[6:].isdigit() and p.stat().st_size > 0]
    return max(grids, key=lambda p: int(p.stem[6:]), default=None)


def sweep_notes(folder: Path) -> list[tuple[str, str]]:
    """What the sweep folder itself says: the multirun's overrides and an Optuna sweep's best result."""
    notes: list[tuple[str, str]] = []
    scratch = Run(path=folder, name=folder.name)  # collects read problems of these files
    multirun = load_yaml(folder / "multirun.yaml", scratch)
    task = dig(multirun, "hydra", "overrides", "task")
    if isinstance(task, list):
        notes.append(("sweep overrides", " ".join(str(o) for o in task) or "(none)"))
    optuna = load_yaml(folder / "optimization_results.yaml", scratch)
    if isinstance(optuna, dict) and "best_value" in optuna:
        params = ", ".join(f"{k}={v}" for k, v in (optuna.get("best_params") or {}).items())
        notes.append(("Optuna best", f"{optuna['best_value']} with {params or 'no parameters'}"))
    notes.extend(("sweep file problem", problem) for problem in scratch.problems)
    return notes
