"""Train every model family on the same data for the same budget, score each the same way, write a Markdown table.

    python scripts/benchmark_models.py                       # every family, 3 minutes each, seed 0, data=mnist
    python scripts/benchmark_models.py --minutes 10 --seeds 0 1 2 --docs docs/benchmark
    python scripts/benchmark_models.py --models vae gan --epochs 20

Each (family, seed) is one `python train.py model=<family> data=<data> seed=<seed> eval=none` run with a
wall-clock budget (`trainer.max_time`) or an epoch budget, then one `python evaluate.py ckpt_path=<last.ckpt>`
(the same evaluation as the training callback: domain-classifier features by default, 5,000 samples), then a
timing of `sample()` alone. Output under --out: the runs, `models.md` (the table: mean ± std over seeds when
there are several), `models.json` (every number), and `grids/<family>.png` (64 samples of seed 0; one class per
column for conditional models). `--docs <folder>` copies the table and grids there for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from genlab.metric_table import DIGITS, KEYS

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = tuple(sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")))  # every model config
COLUMNS = tuple(key for key in KEYS if not key.endswith("_std"))  # the metric table's columns, in its order


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), help="model configs (configs/model/*.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=3.0, help="training wall-clock budget per run")
    budget.add_argument("--epochs", type=int, help="training epoch budget per run (instead of --minutes)")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--num-samples", type=int, default=5000, help="generated images scored per run")
    parser.add_argument("--extractor", default="domain", help="domain | inception | random")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmark")
    parser.add_argument("--docs", type=Path, help="also copy models.md and the grids into this folder")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every training run")
    args = parser.parse_args(argv)
    known = {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")}
    unknown = sorted(set(args.models) - known)
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; valid: {sorted(known)}")
    return args


def run(command: list[str], log_path: Path) -> float:
    """Run a command with its output in `log_path`; returns its wall time; exits with the log's tail if it fails."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode:
        tail = log_path.read_text()[-3000:]
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n--- {log_path} ---\n{tail}")
    return time.perf_counter() - start


def max_time(minutes: float) -> str:
    """Lightning's `max_time` as DD:HH:MM:SS (a dict would reach the Trainer as an OmegaConf node)."""
    seconds = round(minutes * 60)
    return f"trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_overrides(args: argparse.Namespace, model: str, seed: int) -> list[str]:
    """The Hydra overrides of one benchmark training run: the family, data, seed and budget, no in-run evaluation."""
    budget = [f"trainer.max_epochs={args.epochs}"] if args.epochs else ["trainer.max_epochs=-1", max_time(args.minutes)]
    return [f"model={model}", f"data={args.data}", f"seed={seed}", "eval=none", *budget, *args.extra]


def train_and_score(args: argparse.Namespace, model: str, seed: int) -> dict:
    """One training run and its evaluation; returns the run's numbers."""
    name = f"{model}-seed{seed}"
    run_dir, eval_dir = args.out / "runs" / name, args.out / "eval" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    train = [sys.executable, "train.py", *train_overrides(args, model, seed), f"hydra.run.dir={run_dir}"]
    print(f"[{name}] training: {' '.join(train[1:])}", flush=True)
    train_s = run(train, args.out / f"{name}-train.log")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    evaluate = [sys.executable, "evaluate.py", f"ckpt_path={ckpt}", f"data={args.data}", f"hydra.run.dir={eval_dir}"]
    evaluate += [f"eval.num_samples={args.num_samples}", f"eval/extractor={args.extractor}", "eval.progress=false"]
    print(f"[{name}] scoring: {' '.join(evaluate[1:])}", flush=True)
    run(evaluate, args.out / f"{name}-eval.log")
    record = json.loads((eval_dir / "metrics.json").read_text())
    samples_per_s, epochs = sampling_speed_and_grid(ckpt, args.out / "grids" / f"{model}.png" if seed == 0 else None)
    record.update(model=model, seed=seed, train_s=train_s, epochs=epochs, samples_per_s=samples_per_s)
    print(f"[{name}] fid={record['metrics'].get('fid', float('nan')):.2f} train={train_s:.0f}s", flush=True)
    return record


def sampling_speed_and_grid(ckpt: Path, grid_path: Path | None, n: int = 1000, batch: int = 500) -> tuple[float, int]:
    """Images per second of `sample()` alone (after a warm-up batch), and the checkpoint's epoch count; writes
    a 64-image grid when `grid_path` is given."""
    import torch
    from torchvision.utils import save_image

    from genlab.models import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(ckpt, map_location=device)
    epochs = int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]) + 1

    def labels(k: int) -> torch.Tensor | None:
        return torch.arange(k, device=device) % model.num_classes if model.num_classes else None

    generator = torch.Generator().manual_seed(0)
    model.sample(min(batch, n), labels=labels(min(batch, n)), generator=generator)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for k in [batch] * (n // batch) + ([n % batch] if n % batch else []):
        model.sample(k, labels=labels(k), generator=generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    speed = n / (time.perf_counter() - start)
    if grid_path is not None:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        ncol = model.num_classes or 8
        images = model.sample(ncol * 8, labels=labels(ncol * 8), generator=torch.Generator().manual_seed(0))
        save_image(images.float().cpu(), grid_path, nrow=ncol, padding=2)
    return speed, epochs


def cell(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(records: list[dict], args: argparse.Namespace) -> str:
    """The Markdown table, one row per family (mean ± std over seeds), sorted by FID, best first."""
    by_model: dict[str, list[dict]] = {}
    for r in records:
        by_model.setdefault(r["model"], []).append(r)
    columns = [c for c in COLUMNS if any(c in r["metrics"] for r in records)]
    head = ["model", *columns, "epochs", "train (s)", "samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = sorted(by_model.items(), key=lambda kv: statistics.mean(r["metrics"]["fid"] for r in kv[1]))
    for model, rs in rows:
        metric_cells = [cell([r["metrics"][c] for r in rs if c in r["metrics"]], DIGITS[c]) for c in columns]
        timing = [cell([r["epochs"] for r in rs], 0), cell([r["train_s"] for r in rs], 0)]
        lines.append(
            "| " + " | ".join([model, *metric_cells, *timing, cell([r["samples_per_s"] for r in rs], 0)]) + " |"
        )
    first = records[0]
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.minutes:g} minutes of training"
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in records}))
    return "\n".join(
        [
            f"data={args.data}, {budget} per run, seeds {seeds}; "
            f"{first['num_fake']} generated vs {first['num_real']} real images, extractor "
            f"`{first['extractor']}` ({first['extractor_hash']}), sorted by FID (lower is better).",
            "",
            *lines,
            "",
        ]
    )


def merge(path: Path, new: list[dict]) -> list[dict]:
    """Earlier records in `path` (from runs of other models) plus the new ones, which replace the same
    model and seed: the table can be built up one family at a time."""
    old = json.loads(path.read_text()) if path.is_file() else []
    fresh = {(r["model"], r["seed"]) for r in new}
    return [r for r in old if (r["model"], r["seed"]) not in fresh] + new


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = merge(args.out / "models.json", [train_and_score(args, m, s) for m in args.models for s in args.seeds])
    (args.out / "models.json").write_text(json.dumps(records, indent=2))
    text = table(records, args)
    (args.out / "models.md").write_text(text)
    print(text)
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.out / "models.md", args.docs / "models.md")
        for grid in (args.out / "grids").glob("*.png"):
            shutil.copy(grid, args.docs / grid.name)
        print(f"copied the table and grids to {args.docs}")


if __name__ == "__main__":
    main()
