"""Offline report of a run or a sweep folder: `write_report(folder)` writes `report.html` and its PNGs.

The page has the final metrics per configuration (mean ± std over seeds), metric-versus-epoch plots, the last
sample grid of each run and each run's config and extractor; failed, crashed and half-written runs are flagged
with their error. Runs logged with the csv or the tensorboard logger are both read (runs.py). Command line:
`python scripts/report.py <run or sweep folder> [--out DIR]`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from genlab.report.html import Page, render
from genlab.report.plots import plot_metrics, slug
from genlab.report.runs import NoRunsError, Run, load_runs, read_run, sweep_notes
from genlab.report.summary import Group, extractors, group_runs

__all__ = ["NoRunsError", "OutFolderError", "Run", "Group", "load_runs", "read_run", "group_runs", "write_report"]

FILES = "report_files"  # the folder beside report.html that holds its PNGs


class OutFolderError(OSError):
    """The folder the report should go into cannot be created or written to."""


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (and `report_files/*.png`) for the runs under `folder` into `out` (default: `folder`).

    Returns the page's path; raises NoRunsError when `folder` holds no run and OutFolderError when `out` cannot
    be written to.
    """
    folder = Path(folder)
    runs = load_runs(folder)
    out = Path(out) if out is not None else folder
    check_writable(out)
    files = out / FILES
    files.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    plots = plot_metrics(groups, files / "plots", show_extractor=len(extractors(groups)) > 1)
    page = Page(
        title=f"genlab report: {folder.resolve().name}",
        runs=runs,
        groups=groups,
        plots=[(metric, relative(path, out)) for metric, path in plots],
        grids={run.name: copy_grids(run, files / "grids", out) for run in runs},
        notes=sweep_notes(folder),
    )
    path = out / "report.html"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render(page), encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a page
    return path


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write a scratch file into it; raise OutFolderError naming it if that fails."""
    if folder.exists() and not folder.is_dir():
        raise OutFolderError(f"{folder}: cannot write the report there (it is a file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutFolderError(f"{folder}: cannot write the report there ({err.strerror or err})") from None


def copy_grids(run: Run, folder: Path, out: Path) -> list[tuple[str, str]]:
    """Copy the run's last sample, reconstruction and nearest-neighbour grids beside the page:
    [(caption, relative path), ...]."""
    folder.mkdir(parents=True, exist_ok=True)
    grids = []
    kinds = (
        ("samples", "samples", run.samples),
        ("reconstructions", "reconstructions", run.reconstructions),
        ("nearest", "nearest training images (left: sample)", run.nearest),
    )
    for kind, caption, source in kinds:
        if source is not None:
            target = folder / f"{slug(run.name)}-{kind}-{source.name}"
            shutil.copyfile(source, target)
            grids.append((f"{caption}, {source.stem.replace('_', ' ')}", relative(target, out)))
    return grids


def relative(path: Path, start: Path) -> str:
    """`path` relative to `start`, with forward slashes (a URL path)."""
    return Path(os.path.relpath(path, start)).as_posix()
