"""Metric-versus-epoch plots for the report: one PNG per metric, one line per configuration.

A configuration's line is the mean over its finished seeds at each epoch, with a band of ± one standard
deviation where two or more seeds logged that epoch. Failed, crashed and unfinished runs are drawn as their own
dashed lines, so a diverging run is visible rather than averaged in. Uses matplotlib's `Figure` directly (no
pyplot): no global figure state and no display backend, so it runs headless.
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from genlab.report.summary import METRICS, Group, mean_std

ORDER = ("eval/", "val/", "train/")
LEGEND_WIDTH = 48  # characters of a configuration shown in a legend


def slug(text: str) -> str:
    """A file-name-safe version of a metric or run name ('eval/fid' -> 'eval_fid')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"


def plotted_metrics(groups: list[Group]) -> list[str]:
    """Every metric some run logged, except spreads (`*_std`): the table's metrics first, then eval/, val/, train/."""
    names = {m for g in groups for run in [*g.runs, *g.others] for m in run.history if not m.endswith("_std")}

    def rank(name: str) -> tuple[int, int, str]:
        prefix = next((i for i, p in enumerate(ORDER) if name.startswith(p)), len(ORDER))
        return (METRICS.index(name) if name in METRICS else len(METRICS), prefix, name)

    return sorted(names, key=rank)


def mean_curve(histories: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) over runs at each epoch that any run logged; std is 0 where one run did."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for epoch, value in history:
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [mean for mean, _ in stats], [std or 0.0 for _, std in stats]


def group_label(group: Group, show_extractor: bool) -> str:
    label = group.configuration
    label = label if len(label) <= LEGEND_WIDTH else label[: LEGEND_WIDTH - 1] + "…"
    label += f" (n={len(group.runs)})"
    return f"{label} [{group.extractor}]" if show_extractor and group.extractor else label


def plot_metric(metric: str, groups: list[Group], path: Path, show_extractor: bool = False) -> Path:
    """Write the plot of `metric` against epoch to `path` (PNG)."""
    fig = Figure(figsize=(5.2, 3.4), dpi=100)
    ax = fig.subplots()
    for index, group in enumerate(groups):
        color = f"C{index % 10}"
        epochs, means, stds = mean_curve([run.history.get(metric, []) for run in group.runs])
        if epochs:
            ax.plot(epochs, means, color=color, marker="o", markersize=3, label=group_label(group, show_extractor))
            if any(s > 0 for s in stds):
                low, high = (
                    [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)],
                )
                ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        for run in group.others:
            points = run.history.get(metric)
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, color=color, linestyle="--", marker="x", label=f"{run.name} ({run.status})")
    ax.set(title=metric, xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_metrics(groups: list[Group], folder: Path, show_extractor: bool = False) -> list[tuple[str, Path]]:
    """One PNG per metric in `folder`: [(metric, path), ...]."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = plotted_metrics(groups)
    return [(m, plot_metric(m, groups, folder / f"{slug(m)}.png", show_extractor)) for m in metrics]
