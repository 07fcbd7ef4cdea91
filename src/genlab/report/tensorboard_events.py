"""The scalars of a run logged with Lightning's TensorBoardLogger (configs/logger/tensorboard.yaml), by epoch.

TensorBoardLogger writes every `log_metrics` call as one scalar event per key, in the call's order, into
`events.out.tfevents.*` files (with `hparams.yaml` beside them). Lightning adds an `epoch` key last to every call
(`scalar_metrics.setdefault("epoch", ...)` in its logger connector), at the call's step: the fact the CSV logger
writes as a row's `epoch` column. Several calls can share a step (an epoch's last training step, its validation
end and its epoch-end metrics all land on that step), so a value's epoch is that of the first `epoch` event at its
step written at or after it: the one its own call wrote. The files are read with tensorboard's `EventAccumulator`,
the reader behind `tensorboard --logdir`; values are float32, as TensorBoard stores them.
"""

from __future__ import annotations

from pathlib import Path

EVENT_FILES = "events.out.tfevents.*"
INSTALL = "pip install tensorboard"  # the package that reads event files; a genlab dependency

ScalarEvent = tuple[float, int, float]  # (wall time, step, value)


def event_dirs(root: Path) -> list[Path]:
    """The folders at or below `root` that hold event files (one per logger version), in name order."""
    return sorted({path.parent for path in root.rglob(EVENT_FILES) if path.is_file()})


def read_scalars(folders: list[Path]) -> dict[str, list[ScalarEvent]]:
    """Every scalar event in the event files of `folders`, by tag, each tag's events in logging order.

    Raises ImportError when the `tensorboard` package is not installed. A cut-off or damaged file is read up to
    the damage (EventAccumulator stops there), as TensorBoard itself shows it.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    scalars: dict[str, list[ScalarEvent]] = {}
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: every event, not a sample
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            events = accumulator.Scalars(tag)
            scalars.setdefault(tag, []).extend((e.wall_time, e.step, e.value) for e in events)
    return scalars


def epoch_points(scalars: dict[str, list[ScalarEvent]]) -> list[tuple[str, int, float]]:
    """(tag, epoch, value) for every event but the `epoch` ones, each tag in logging order.

    A value with no `epoch` event at its step is left out, as a CSV row with no epoch is.
    """
    epochs: dict[int, list[tuple[float, int]]] = {}  # step -> [(wall time, epoch), ...]
    for wall_time, step, value in sorted(scalars.get("epoch", [])):  # in time order, across folders
        epochs.setdefault(step, []).append((wall_time, int(value)))
    points = []
    for tag, events in scalars.items():
        if tag == "epoch":
            continue
        for wall_time, step, value in events:
            epoch = epoch_at(epochs.get(step, []), wall_time)
            if epoch is not None:
                points.append((tag, epoch, value))
    return points


def epoch_at(candidates: list[tuple[float, int]], wall_time: float) -> int | None:
    """The epoch of the first (wall time, epoch) event written at or after `wall_time`, else of the last one
    before it; None when there is none."""
    written_with = (epoch for time, epoch in candidates if time >= wall_time)
    return next(written_with, candidates[-1][1] if candidates else None)
