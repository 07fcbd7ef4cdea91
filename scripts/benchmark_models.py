"""Quality against training compute for every model family: curves over seeds, scored from budget checkpoints.

    python scripts/benchmark_models.py                  # every family x seeds 0 1 2, 3 min each; diffusion 15 min
    python scripts/benchmark_models.py --models vae gan --seeds 0 --minutes 1 --long-minutes 0
    python scripts/benchmark_models.py --inception-weights <weights.pth> --docs docs/benchmark   # + InceptionV3 FID

Each (family, seed) trains once, `python train.py model=<family> data=<data> seed=<seed> eval=none
callbacks.budget.seconds=<budget> callbacks.budget.points=<points> trainer.max_epochs=-1`: the same wall clock for
every family, counting training alone (`genlab.callbacks.TrainingBudget`: validation, checkpoint saving and, with
eval=none, evaluation are off the clock), with a checkpoint at each budget point. Every checkpoint is then scored
in this process by one evaluator (the training callback's: the same extractor, sample count, reference and
sampling seed for all; the real side computed once), so each family gets FID, precision, recall and the novelty
metrics against training seconds and against training images seen. The VAE trains with an ex-post latent density
and is scored twice from the same checkpoints: decoding its N(0, I) prior (`vae`) and the fitted density
(`vae+density`, Ghosh et al. 2020). One longer single-seed diffusion run (`--long-minutes`) sits beside the curves.

Resumable: a run whose budget.json says done (with the same overrides) is not trained again, a point already in
curves.json is not scored again; stop it at any time and run the same command to go on (an unfinished run is
trained again from the start). Delete a run's folder, or its points in curves.json, to redo them.

Under --out: runs/, logs/, curves.json (every scored point), curves.md (mean ± std over seeds at each budget point,
the machine in the caption), curves.png (FID against training seconds and images seen, one line per family,
shaded by the seeds' spread), grids/<family>.png (64 samples of seed 0's last checkpoint) and
grids/diffusion-strip.png (16 samples at each point of the long run). `--docs <folder>` copies the table, plot and
grids there. With `--inception-weights`, each family's last checkpoints are also scored with InceptionV3 on
`--inception-samples` samples beside the published MNIST numbers; without them the column is absent and the
caption says why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = tuple(sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")))  # every model config
# Families trained with extra overrides, and scored in several ways from the same checkpoints: label -> the
# model attributes set before sampling.
TRAIN_EXTRA = {"vae": ["model.latent_density=gmm"]}
SCORINGS = {"vae": {"vae": {"sample_latent": "prior"}, "vae+density": {"sample_latent": "density"}}}
LONG = "long"  # the run name of the longer single-seed curve
# Published InceptionV3 FIDs on MNIST for the nearest genlab family (Ghosh et al. 2020, Table 1: VAE, 2-stage VAE,
# RAE + latent GMM for the AE with its latent mixture; Lucic et al. 2018 "Are GANs Created Equal?": NS-GAN).
PUBLISHED = {"gan": ("NS-GAN", 6.8), "vae": ("VAE", 16.6), "vae+density": ("2-stage VAE", 12.6), "ae": ("RAE+GMM", 9.1)}
FINAL_COLUMNS = ("fid", "precision", "recall", "density", "coverage", "fid_heldout", "copy_rate", "authenticity", "ct")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), help="model configs (configs/model/*.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-clock budget per run")
    parser.add_argument("--points", type=int, default=4, help="budget points per run, evenly spaced")
    parser.add_argument("--long-model", default="diffusion", help="the family of the longer single-seed run")
    parser.add_argument("--long-minutes", type=float, default=15.0, help="its budget; 0: no long run")
    parser.add_argument("--long-points", type=int, default=6)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--num-samples", type=int, default=1000, help="generated images scored per point")
    parser.add_argument("--extractor", default="domain", help="domain | inception | random")
    parser.add_argument("--inception-weights", type=Path, help="torch-fidelity's InceptionV3 weights file")
    parser.add_argument("--inception-samples", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark")
    parser.add_argument("--docs", type=Path, help="also copy curves.md, curves.png and the grids into this folder")
    more = "more Hydra overrides: data.* for training and scoring, eval.* for scoring, the rest for training"
    parser.add_argument("--extra", nargs="*", default=[], help=more)
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="no training or scoring: rewrite the table, plot and grids from what --out holds (after a stopped run)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(FAMILIES)) + ([args.long_model] if args.long_model not in FAMILIES else [])
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; valid: {list(FAMILIES)}")
    for name in ("minutes", "points", "num_samples", "long_points", "inception_samples"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.long_minutes < 0:
        parser.error(f"--long-minutes must be >= 0 (0: no long run), got {args.long_minutes}")
    if args.inception_weights is not None and not args.inception_weights.is_file():
        parser.error(f"--inception-weights {args.inception_weights}: no such file")
    return args


@dataclass(frozen=True)
class Run:
    """One training run: a family, a seed and a budget."""

    model: str
    seed: int
    minutes: float
    points: int
    name: str = "main"

    @property
    def key(self) -> str:
        return f"{self.model}-seed{self.seed}" + ("" if self.name == "main" else f"-{self.name}")

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.key

    def labels(self) -> dict[str, dict[str, Any]]:
        """The labels this run is scored under, each with the model attributes set before sampling."""
        return SCORINGS.get(self.model, {self.model: {}})


def runs(args: argparse.Namespace) -> list[Run]:
    found = [Run(m, s, args.minutes, args.points) for m in args.models for s in args.seeds]
    if args.long_minutes > 0:
        found.append(Run(args.long_model, args.seeds[0], args.long_minutes, args.long_points, LONG))
    return found


def train_overrides(args: argparse.Namespace, run: Run) -> list[str]:
    """The Hydra overrides of one training run: the family, data, seed and budget, no in-run evaluation, no
    per-epoch sample grids (their sampling would be timed as training)."""
    budget = [f"callbacks.budget.seconds={run.minutes * 60:g}", f"callbacks.budget.points={run.points}"]
    return [
        f"model={run.model}",
        f"data={args.data}",
        f"seed={run.seed}",
        "eval=none",
        "~callbacks.sample_grid",
        "trainer.max_epochs=-1",
        *budget,
        *TRAIN_EXTRA.get(run.model, []),
        *(o for o in args.extra if group(o) != "eval"),  # training runs with eval=none
    ]


def group(override: str) -> str:
    """The config group an override sets: 'data' for data.num_samples=160 or +data.x=1."""
    return override.lstrip("+~").split(".", 1)[0]


def budget_file(args: argparse.Namespace, run: Run) -> Path:
    return run.folder(args.out) / "checkpoints" / "budget.json"


def trained(args: argparse.Namespace, run: Run) -> dict | None:
    """The run's budget.json if it finished with the overrides it would be trained with now, else None."""
    path, command = budget_file(args, run), run.folder(args.out) / "overrides.json"
    if not (path.is_file() and command.is_file()) or json.loads(command.read_text()) != train_overrides(args, run):
        return None
    found = json.loads(path.read_text())
    return found if found.get("done") and found.get("points") == run.points else None


def train(args: argparse.Namespace, run: Run, records: list[dict]) -> dict:
    """Train `run` from the start (unless finished before with the same overrides; then its scored points stay
    in `records`, otherwise they are dropped); returns its budget.json."""
    found = trained(args, run)
    if found is not None:
        print(f"[{run.key}] trained before: {budget_file(args, run)}", flush=True)
        return found
    records[:] = [r for r in records if (r["model"], r["seed"], r["run"]) != (run.model, run.seed, run.name)]
    folder = run.folder(args.out)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "overrides.json").write_text(json.dumps(train_overrides(args, run)))  # another setting: trained again
    command = [sys.executable, "train.py", *train_overrides(args, run), f"hydra.run.dir={folder}"]
    print(f"[{run.key}] training {run.minutes:g} min: {' '.join(command[1:])}", flush=True)
    log = args.out / "logs" / f"{run.key}-train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    found = trained(args, run)
    if code or found is None:
        sys.exit(f"[{run.key}] training failed (exit {code}); the end of {log}:\n{log.read_text()[-3000:]}")
    return found


# ------------------------------------------------------------------------------------------------------ scoring
@dataclass
class Scorer:
    """One evaluator and data module for every checkpoint: the real side's features and statistics once."""

    evaluator: Any
    datamodule: Any
    device: Any
    extractor: str = ""

    @classmethod
    def build(cls, args: argparse.Namespace, overrides: list[str]) -> Scorer:
        import torch
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from genlab.train import CONFIG_DIR

        GlobalHydra.instance().clear()
        settings = [f"data={args.data}", "eval.progress=false", "eval.metrics=default", f"paths.root_dir={ROOT}"]
        scoring = [o for o in args.extra if group(o) in ("data", "eval")]  # data.*: the data it trained on
        settings += [f"paths.output_dir={args.out / 'eval'}", *scoring, *overrides]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="evaluate", overrides=settings)
        node = OmegaConf.to_container(cfg.eval, resolve=True)
        for key in ("on_bad_file", "fake_dir"):
            node.pop(key, None)
        evaluator = instantiate(node).evaluator
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return cls(evaluator, datamodule, torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    def score(self, ckpt: Path, attributes: dict[str, Any]) -> tuple[dict[str, float], Any]:
        """(metrics, the generated images) of a checkpoint sampled with `attributes` set on the model."""
        from genlab.models import load_model

        model = load_model(ckpt, map_location=self.device)
        for name, value in attributes.items():
            setattr(model, name, value)
        scores = self.evaluator.evaluate(self.datamodule, self.device, model=model)
        e = self.evaluator.extractor
        self.extractor = f"{e.name} ({e.weights_hash()})"
        return scores.metrics, model


def scoring_overrides(num_samples: int, extractor: str) -> list[str]:
    """The evaluation settings of every point: the sample count (KID's subsets at most that large) and extractor."""
    kid = min(1000, num_samples)
    return [f"eval.num_samples={num_samples}", f"eval.kid_subset_size={kid}", f"eval/extractor={extractor}"]


def load_records(path: Path) -> list[dict]:
    return json.loads(path.read_text())["points"] if path.is_file() else []


def load_meta(path: Path) -> dict:
    return json.loads(path.read_text())["meta"] if path.is_file() else {}


def save_records(path: Path, records: list[dict], meta: dict) -> None:
    from genlab.atomic import atomic_write

    text = json.dumps({"meta": meta, "points": records}, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))  # a kill leaves the last whole file: resumable


def score_run(scorer: Scorer, args: argparse.Namespace, run: Run, budget: dict, records: list[dict], meta: dict):
    """Score every budget point of `run` under each of its labels that curves.json does not hold yet."""
    done = {(r["label"], r["seed"], r["run"], r["point"]) for r in records}
    for saved in budget["saved"]:
        for label, attributes in run.labels().items():
            if (label, run.seed, run.name, saved["point"]) in done:
                continue
            start = time.perf_counter()
            metrics, _ = scorer.score(run.folder(args.out) / "checkpoints" / "budget" / saved["ckpt"], attributes)
            seconds = time.perf_counter() - start
            keep = ("point", "fraction", "budget_seconds", "train_seconds", "images", "epoch", "step")
            record = {"label": label, "model": run.model, "seed": run.seed, "run": run.name}
            records.append({**record, **{k: saved[k] for k in keep}, "metrics": metrics, "eval_seconds": seconds})
            meta["extractor"] = scorer.extractor
            save_records(args.out / "curves.json", records, meta)
            print(
                f"[{run.key}] {label} point {saved['point']}/{run.points} ({saved['train_seconds']:.0f} s, "
                f"{saved['images']} images): fid {metrics.get('fid', float('nan')):.2f} ({seconds:.1f} s)",
                flush=True,
            )


# ------------------------------------------------------------------------------------------ tables and plots
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def curves(records: list[dict], run: str = "main") -> dict[str, list[dict]]:
    """label -> per budget point (in order): the seeds' x values and metric values."""
    out: dict[str, dict[int, dict]] = {}
    for r in records:
        if r["run"] != run:
            continue
        point = out.setdefault(r["label"], {}).setdefault(r["point"], {"seeds": [], "budget_seconds": 0.0})
        point["budget_seconds"] = r["budget_seconds"]
        point["seeds"].append(r)
    return {label: [points[p] for p in sorted(points)] for label, points in out.items()}


def final_fid(points: list[dict]) -> float:
    return statistics.mean(r["metrics"]["fid"] for r in points[-1]["seeds"] if "fid" in r["metrics"])


def machine() -> str:
    """The machine, for the caption: the GPU's name, or the CPU cores."""
    import torch

    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name(0)} GPU"
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU"


def table(records: list[dict], meta: dict) -> str:
    """curves.md: FID (mean ± std over seeds) at each budget point, every final-point metric, the long run."""
    from genlab.metric_table import DIGITS

    by_label = curves(records)
    if not by_label:
        return "no scored points yet\n"
    order = sorted(by_label, key=lambda label: final_fid(by_label[label]))
    budgets = [p["budget_seconds"] for p in max(by_label.values(), key=len)]
    seeds = sorted({r["seed"] for r in records if r["run"] == "main"})
    lines = [
        f"data={meta['data']}, {meta['minutes']:g} minutes of training per run (validation and evaluation off the "
        f"clock), seeds {', '.join(map(str, seeds))}, mean ± std over seeds; every point {meta['num_samples']} "
        f"generated images against as many training images, extractor `{meta.get('extractor', '?')}`; measured on "
        f"{meta['machine']}. Sorted by the last point's FID (lower is better).",
        "",
        "| model | " + " | ".join(f"FID at {s:g} s" for s in budgets) + " | images seen | epochs |",
        "|---|" + "---|" * (len(budgets) + 2),
    ]
    for label in order:
        points = by_label[label]
        fids = [cell([r["metrics"]["fid"] for r in p["seeds"] if "fid" in r["metrics"]]) for p in points]
        fids += ["–"] * (len(budgets) - len(fids))
        last = points[-1]["seeds"]
        images, epochs = cell([r["images"] for r in last], 0), cell([r["epoch"] + 1 for r in last], 0)
        lines.append(f"| {label} | " + " | ".join(fids) + f" | {images} | {epochs} |")
    columns = [c for c in FINAL_COLUMNS if any(c in r["metrics"] for r in records)]
    inception = meta.get("inception")
    head = [*columns, *(["InceptionV3 FID", "published"] if inception else [])]
    lines += ["", f"At the last point ({budgets[-1]:g} s):", "", "| model | " + " | ".join(head) + " |"]
    lines.append("|---|" + "---|" * len(head))
    for label in order:
        last = by_label[label][-1]["seeds"]
        cells = [cell([r["metrics"][c] for r in last if c in r["metrics"]], DIGITS[c]) for c in columns]
        if inception:
            cells.append(cell(inception.get(label, [])))
            name, value = PUBLISHED.get(label, (None, None))
            cells.append(f"{value} ({name})" if name else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not inception:
        lines += ["", INCEPTION_ABSENT]
    long_curve = curves(records, LONG)
    for label, points in long_curve.items():
        lines += ["", f"The longer run, {label}, seed {points[0]['seeds'][0]['seed']}:", ""]
        lines += ["| training s | images seen | epochs | FID |", "|---|---|---|---|"]
        for p in points:
            r = p["seeds"][0]
            lines.append(f"| {r['train_seconds']:.0f} | {r['images']} | {r['epoch'] + 1} | {r['metrics']['fid']:.2f} |")
    return "\n".join([*lines, ""])


INCEPTION_ABSENT = (
    "InceptionV3 FID (the published protocol) is absent: it needs torch-fidelity's InceptionV3 weights, which this "
    "run did not have (`--inception-weights weights-inception-2015-12-05-6726825d.pth`; torch-fidelity downloads "
    "them on a machine with a network)."
)


def plot(records: list[dict], path: Path) -> None:
    """curves.png: FID against training seconds and against images seen, one line per family (the mean over
    seeds), shaded between the seeds' min and max; the long run dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lines = [(label, points, "-") for label, points in curves(records).items()]
    lines += [(f"{label} (long run)", points, "--") for label, points in curves(records, LONG).items()]
    for i, (label, points, style) in enumerate(sorted(lines)):
        color = f"C{i % 10}"
        for ax, x_key in zip(axes, ("train_seconds", "images"), strict=True):
            xs = [statistics.mean(r[x_key] for r in p["seeds"]) for p in points]
            fids = [[r["metrics"]["fid"] for r in p["seeds"]] for p in points]
            ax.plot(xs, [statistics.mean(f) for f in fids], style, color=color, marker="o", ms=3, label=label)
            if any(len(f) > 1 for f in fids):
                ax.fill_between(xs, [min(f) for f in fids], [max(f) for f in fids], color=color, alpha=0.2)
    for ax, xlabel in zip(axes, ("training seconds", "training images seen"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (lower is better)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"FID against training compute ({machine()})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grids(scorer: Scorer, args: argparse.Namespace, all_runs: list[Run], budgets: dict[str, dict]) -> None:
    """grids/<label>.png: 64 samples of the first seed's last checkpoint, one class per column for a conditional
    model; grids/<long model>-strip.png: 16 samples at each point of the long run, one row per point."""
    import torch
    from torchvision.utils import save_image

    from genlab.models import load_model

    folder = args.out / "grids"
    folder.mkdir(parents=True, exist_ok=True)

    def images(ckpt: Path, attributes: dict, n: int | None = None) -> tuple[torch.Tensor, int]:
        """(samples, per row): n, or 8 rows of one per class (conditional) or of 8."""
        model = load_model(ckpt, map_location=scorer.device)
        for name, value in attributes.items():
            setattr(model, name, value)
        ncol = 16 if n else model.num_classes or 8
        n = n or 8 * ncol
        labels = torch.arange(n, device=scorer.device) % model.num_classes if model.num_classes else None
        return model.sample(n, labels=labels, generator=torch.Generator().manual_seed(0)).float().cpu(), ncol

    for run in all_runs:
        if run.seed != args.seeds[0] or run.key not in budgets:
            continue
        checkpoints = run.folder(args.out) / "checkpoints" / "budget"
        saved = budgets[run.key]["saved"]
        if run.name == LONG:
            rows = [images(checkpoints / s["ckpt"], next(iter(run.labels().values())), 16)[0] for s in saved]
            save_image(torch.cat(rows), folder / f"{run.model}-strip.png", nrow=16, padding=2)
            continue
        for label, attributes in run.labels().items():
            grid, ncol = images(checkpoints / saved[-1]["ckpt"], attributes)
            save_image(grid, folder / f"{label}.png", nrow=ncol, padding=2)


def inception_scores(args: argparse.Namespace, all_runs: list[Run], budgets: dict[str, dict]) -> dict[str, list]:
    """label -> InceptionV3 FID of each seed's last checkpoint on --inception-samples samples."""
    overrides = scoring_overrides(args.inception_samples, "inception")
    overrides += [f"eval.extractor.weights_path={args.inception_weights}", "eval.metrics=[fid]", "eval.precision=fp32"]
    scorer = Scorer.build(args, overrides)
    out: dict[str, list] = {}
    for run in all_runs:
        if run.name != "main":
            continue
        last = run.folder(args.out) / "checkpoints" / "budget" / budgets[run.key]["saved"][-1]["ckpt"]
        for label, attributes in run.labels().items():
            metrics, _ = scorer.score(last, attributes)
            out.setdefault(label, []).append(metrics["fid"])
            print(f"[{run.key}] {label}: InceptionV3 FID {metrics['fid']:.2f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta = {**load_meta(args.out / "curves.json")}  # the extractor of points scored in an earlier sitting
    meta.update(data=args.data, minutes=args.minutes, num_samples=args.num_samples, machine=machine())
    all_runs = runs(args)
    records = load_records(args.out / "curves.json")
    budgets: dict[str, dict] = {}
    scorer = Scorer.build(args, scoring_overrides(args.num_samples, args.extractor))  # a bad setting fails here
    for run in all_runs:
        if args.tables_only:
            if (found := trained(args, run)) is not None:
                budgets[run.key] = found
            continue
        budgets[run.key] = train(args, run, records)
        score_run(scorer, args, run, budgets[run.key], records, meta)
    if args.inception_weights and not args.tables_only:
        meta["inception"] = inception_scores(args, all_runs, budgets)
    save_records(args.out / "curves.json", records, meta)
    text = table(records, meta)
    (args.out / "curves.md").write_text(text)
    plot(records, args.out / "curves.png")
    grids(scorer, args, all_runs, budgets)
    print(text)
    print(f"benchmark: {(time.perf_counter() - start) / 60:.1f} min this sitting; {args.out / 'curves.md'}")
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name in ("curves.md", "curves.png"):
            shutil.copy(args.out / name, args.docs / name)
        for grid in (args.out / "grids").glob("*.png"):
            shutil.copy(grid, args.docs / grid.name)
        print(f"copied the table, plot and grids to {args.docs}")


if __name__ == "__main__":
    main()
