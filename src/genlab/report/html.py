"""Render the report as one self-contained HTML page: inline CSS, no scripts, images as relative PNG paths.

Every text that comes from a run (config, overrides, errors, names) goes through `html.escape`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from html import escape

from genlab.metric_table import NOVELTY_GUIDE, NOVELTY_KEYS
from genlab.report.runs import Run
from genlab.report.summary import Group, extractors, table_metrics

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; } code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } .scroll { overflow-x: auto; }
caption { text-align: left; color: #666; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bad td { background: #fdecea; } tr.warn td { background: #fff8e1; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; color: #fff; }
.completed { background: #2e7d32; } .failed, .crashed, .incomplete { background: #c62828; }
.running, .unknown { background: #ef8f00; }
.box { border-left: 4px solid; padding: 0.5em 1em; margin: 1em 0; }
.box.bad { border-color: #c62828; background: #fdecea; } .box.warn { border-color: #ef8f00; background: #fff8e1; }
.error { color: #b71c1c; white-space: pre-wrap; }
.plots, .grids { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figcaption { color: #666; font-size: 12px; }
img { border: 1px solid #eee; max-width: 100%; } .grids img { image-rendering: pixelated; width: 256px; }
pre { background: #f7f7f9; padding: 0.8em; overflow-x: auto; max-height: 30em; }
section.run { margin-bottom: 2em; }
"""


@dataclass
class Page:
    """What the page shows, with image paths already relative to the page."""

    title: str
    runs: list[Run]
    groups: list[Group]
    plots: list[tuple[str, str]] = field(default_factory=list)
    grids: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)


def render(page: Page) -> str:
    """The whole HTML document."""
    anchors = {run.name: f"run-{i}" for i, run in enumerate(page.runs)}
    body = [
        header(page),
        problems(page.runs, anchors),
        extractor_warning(page.groups),
        notes(page.notes),
        metrics_table(page.groups, anchors),
        novelty_guide(page.groups),
        runs_table(page.runs, anchors, table_metrics(page.groups)),
        plots(page.plots),
        *(run_section(run, anchors[run.name], page.grids.get(run.name, [])) for run in page.runs),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(page.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )


def header(page: Page) -> str:
    counts: dict[str, int] = {}
    for run in page.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    when = datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"<h1>{escape(page.title)}</h1>\n"
        f'<p class="meta">{len(page.runs)} run(s): {escape(summary)}. Generated {escape(when)}.</p>'
    )


def badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status)}</span>'


def link(run: Run, anchors: dict[str, str]) -> str:
    return f'<a href="#{anchors[run.name]}">{escape(run.name)}</a>'


def problems(runs: list[Run], anchors: dict[str, str]) -> str:
    """A box listing every run that failed, crashed or is half-written, with its error; one for running runs."""
    parts = []
    bad = [run for run in runs if run.is_bad]
    if bad:
        items = "".join(
            f'<li>{link(r, anchors)} {badge(r.status)} <span class="error">{escape(r.error or "")}</span></li>'
            for r in bad
        )
        parts.append(f'<div class="box bad"><strong>{len(bad)} run(s) did not finish:</strong><ul>{items}</ul></div>')
    running = [run for run in runs if run.status == "running"]
    if running:
        names = ", ".join(link(r, anchors) for r in running)
        parts.append(
            f'<div class="box warn">Still running (or on another host, which this report cannot check): {names}. '
            "Their numbers are not final and are left out of the means.</div>"
        )
    return "\n".join(parts)


def extractor_warning(groups: list[Group]) -> str:
    used = extractors(groups)
    if len(used) < 2:
        return ""
    names = ", ".join(f"<code>{escape(e)}</code>" for e in used)
    return (
        f'<div class="box warn"><strong>Different feature extractors:</strong> the eval/* numbers below come from '
        f"{names}. Numbers from different extractors are not comparable; each configuration is shown once per "
        "extractor.</div>"
    )


def novelty_guide(groups: list[Group]) -> str:
    """How to read the novelty columns, where the table has any."""
    if not any(metric.removeprefix("eval/") in NOVELTY_KEYS for metric in table_metrics(groups)):
        return ""
    return f'<div class="box"><strong>Reading the novelty axis.</strong> {escape(NOVELTY_GUIDE)}</div>'


def notes(items: list[tuple[str, str]]) -> str:
    if not items:
        return ""
    rows = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in items)
    return f"<h2>Sweep</h2>\n<table>{rows}</table>"


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def metrics_table(groups: list[Group], anchors: dict[str, str]) -> str:
    """Mean ± std over seeds of each final metric, one row per configuration (and extractor)."""
    metrics = table_metrics(groups)
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    rows = []
    for group in groups:
        cells = []
        for metric in metrics:
            stats = group.stats(metric)
            mean, std = (stats[0], stats[1]) if stats else (None, None)
            cells.append(f'<td class="num">{number(mean)}{f" ± {std:.2g}" if std is not None else ""}</td>')
        seeds = ", ".join(str(s) for s in group.seeds)
        flags = "".join(f"<br>{link(r, anchors)} {badge(r.status)}" for r in group.others)
        row_class = ' class="bad"' if any(r.is_bad for r in group.others) else ""
        rows.append(
            f"<tr{row_class}><td><code>{escape(group.configuration)}</code></td>"
            f"<td>{escape(group.extractor or '')}</td><td>{len(group.runs)} (seeds {escape(seeds) or '-'}){flags}</td>"
            + "".join(cells)
            + "</tr>"
        )
    return (
        '<h2>Final metrics per configuration</h2>\n<div class="scroll"><table id="metrics">'
        "<caption>Mean ± sample standard deviation over the finished seeds of each configuration (the final value "
        "of each run). Runs that did not finish are listed but not averaged.</caption>"
        f"<tr><th>configuration</th><th>extractor</th><th>runs</th>{head}</tr>\n" + "\n".join(rows) + "</table></div>"
    )


def runs_table(runs: list[Run], anchors: dict[str, str], metrics: list[str]) -> str:
    """Every run, one row each: status, error and its own final metrics."""
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics)
    rows = []
    for run in runs:
        row_class = ' class="bad"' if run.is_bad else ' class="warn"' if run.status != "completed" else ""
        cells = "".join(f'<td class="num">{number(run.final.get(m))}</td>' for m in metrics)
        error = f'<span class="error">{escape(run.error)}</span>' if run.error else ""
        rows.append(
            f"<tr{row_class}><td>{link(run, anchors)}</td><td><code>{escape(run.configuration)}</code></td>"
            f"<td>{escape(str(run.seed))}</td><td>{badge(run.status)}</td><td>{error}</td>"
            f"<td>{escape(run.extractor or '')}</td>{cells}</tr>"
        )
    return (
        '<h2>Runs</h2>\n<div class="scroll"><table id="runs"><tr><th>run</th><th>configuration</th><th>seed</th>'
        f"<th>status</th><th>error</th><th>extractor</th>{head}</tr>\n" + "\n".join(rows) + "</table></div>"
    )


def plots(items: list[tuple[str, str]]) -> str:
    if not items:
        return "<h2>Metrics over epochs</h2>\n<p>No run logged any metric.</p>"
    figures = "".join(
        f'<figure><img src="{escape(src)}" alt="{escape(metric)} against epoch"></figure>' for metric, src in items
    )
    caption = (
        "<p>One line per configuration: the mean over its finished seeds, with a band of ± one standard deviation; "
        "dashed lines are runs that did not finish. train/* values are the mean of each epoch's logged steps.</p>"
    )
    return f'<h2>Metrics over epochs</h2>\n{caption}\n<div class="plots">{figures}</div>'


def run_section(run: Run, anchor: str, grids: list[tuple[str, str]]) -> str:
    """One run: what it is, its error, its last sample grid(s) and its config."""
    facts = [
        ("status", badge(run.status)),
        ("model / data", escape(f"{run.model} / {run.data}")),
        ("seed", escape(str(run.seed))),
        ("overrides", f"<code>{escape(' '.join(run.overrides) or '(none)')}</code>"),
        ("extractor", escape(run.extractor or "none (no eval/* numbers)")),
        ("started / finished", escape(f"{run.started or '?'} / {run.finished or '?'}")),
        ("folder", f"<code>{escape(str(run.path))}</code>"),
    ]
    if run.error:
        facts.append(("error", f'<span class="error">{escape(run.error)}</span>'))
    facts += [("problem", f'<span class="error">{escape(p)}</span>') for p in run.problems if p != run.error]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    figures = "".join(
        f'<figure><img src="{escape(src)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'
        for caption, src in grids
    )
    images = f'<div class="grids">{figures}</div>' if figures else "<p>No sample grid.</p>"
    config = escape(run.config_text) if run.config_text else "(no config found)"
    return (
        f'<section class="run" id="{anchor}">\n<h2>Run {escape(run.name)}</h2>\n<table>{rows}</table>\n{images}\n'
        f"<details><summary>config</summary><pre>{config}</pre></details>\n</section>"
    )
