"""Final metrics per configuration: mean ± std over the seeds of each configuration.

A configuration is a run's overrides without `seed=...`. Only runs that finished (status completed, or old runs
with whole metrics and no status.json) are averaged; failed, crashed, half-written and running runs are kept
beside their configuration so the table can flag them. Numbers from different feature extractors are never
averaged together: a configuration scored by two extractors is two rows (DESIGN.md, Evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from genlab.metric_table import KEYS
from genlab.report.runs import GOOD, Run

METRICS = (*(f"eval/{key}" for key in KEYS), "val/loss")  # every metric of the table, in table order
NOT_RECORDED = "not recorded"  # eval/* numbers whose extractor the run did not write down


@dataclass
class Group:
    """The runs of one configuration scored by one extractor: `runs` are averaged, `others` only listed."""

    configuration: str
    extractor: str | None
    runs: list[Run] = field(default_factory=list)
    others: list[Run] = field(default_factory=list)

    def stats(self, metric: str) -> tuple[float, float | None, int] | None:
        """(mean, sample std or None for one run, number of runs) of a final metric; None if no run has it.
        A NaN or inf value (a diverged run) makes the mean NaN or inf: it is shown, not dropped."""
        values = [run.final[metric] for run in self.runs if metric in run.final]
        return (*mean_std(values), len(values)) if values else None

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value). Unlike `statistics`, NaN and inf propagate
    instead of raising."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def scored_by(run: Run) -> str | None:
    """The extractor behind the run's eval/* numbers; None when it has none."""
    if not any(key.startswith("eval/") for key in run.final):
        return None
    return run.extractor or NOT_RECORDED


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in the order their first run appears; an unfinished run joins its configuration's first group."""
    groups: dict[tuple[str, str | None], Group] = {}
    for run in runs:
        if run.status in GOOD:
            key = (run.configuration, scored_by(run))
            groups.setdefault(key, Group(*key)).runs.append(run)
    for run in runs:
        if run.status not in GOOD:
            same = [g for g in groups.values() if g.configuration == run.configuration]
            group = same[0] if same else groups.setdefault((run.configuration, None), Group(run.configuration, None))
            group.others.append(run)
    return list(groups.values())


def table_metrics(groups: list[Group]) -> list[str]:
    """The METRICS that at least one averaged run has, in METRICS order."""
    return [m for m in METRICS if any(g.stats(m) is not None for g in groups)]


def extractors(groups: list[Group]) -> list[str]:
    """The distinct extractors behind the table's eval/* numbers; more than one means they are not comparable."""
    return sorted({g.extractor for g in groups if g.extractor is not None and g.runs})
