"""Evaluation's share of a default training run's wall time, per model family.

    python scripts/bench_overhead.py                         # every family, its default run (configs/eval/budget/)
    python scripts/bench_overhead.py --families vae gan --extra trainer.max_epochs=10
    python scripts/bench_overhead.py --target 0.15           # exit 1 if any family's share is above 15%

Each family is one `python train.py model=<family>` run with the defaults a user gets (its evaluation budget from
configs/eval/budget/<family>.yaml: eval.num_samples and eval.every_n_epochs), all under one temporary GENLAB_ROOT
whose cache is filled first by a one-epoch GMM run (`--cold` skips that: the first family then also trains the
domain classifier and extracts the real features, as a fresh clone's first run does). The share is the
GenerativeEval callback's wall time over the fit's, as the run's status.json records it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = tuple(sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help=f"of {list(FAMILIES)}")
    parser.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--cold", action="store_true", help="no warm-up run: the first family fills the cache")
    parser.add_argument("--target", type=float, help="exit 1 if a family's share is above this (e.g. 0.15)")
    parser.add_argument("--root", type=Path, help="GENLAB_ROOT for the runs (default: a temporary folder)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; valid: {list(FAMILIES)}")
    return args


def train(root: Path, overrides: list[str]) -> tuple[dict, float]:
    """(status.json of one `train.py` run under GENLAB_ROOT=root, its wall time); exits with the log's tail on
    failure."""
    name = f"overhead-{time.monotonic_ns()}"
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={root}/runs/{name}", "logger=csv"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "GENLAB_ROOT": str(root)}, capture_output=True)
    took = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr.decode()[-3000:]}")
    return json.loads((root / "runs" / name / "status.json").read_text()), took


def budget(family: str) -> str:
    """'5000 x every 5' from configs/eval/budget/<family>.yaml (what the run used unless --extra overrides it)."""
    path = ROOT / "configs" / "eval" / "budget" / f"{family}.yaml"
    if not path.is_file():
        return "eval defaults"
    values = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line and line[0] != "#")
    samples = values.get("num_samples", "?").split("#")[0].strip()
    every = values.get("every_n_epochs", "?").split("#")[0].strip()
    return f"{samples} x every {every}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        if not args.cold:
            train(root, ["model=gmm", "trainer.max_epochs=1", *args.extra])  # the real side and the classifier
        rows = []
        print(f"{'family':<10} {'budget':>18} {'epochs':>6} {'fit s':>8} {'evals':>5} {'eval s':>8} {'share':>6}")
        for family in args.families:
            status, _ = train(root, [f"model={family}", *args.extra])
            e = status.get("evaluation") or {}
            share = e.get("share", 0.0)
            rows.append((family, share))
            print(
                f"{family:<10} {budget(family):>18} {e.get('epochs', 0):6d} {e.get('fit_seconds', 0):8.1f} "
                f"{e.get('evaluations', 0):5d} {e.get('seconds', 0):8.1f} {100 * share:5.1f}%",
                flush=True,
            )
    if args.target is not None:
        over = [f"{family} {100 * share:.1f}%" for family, share in rows if share > args.target]
        print(f"target: share <= {100 * args.target:.0f}%: " + (f"missed by {over}" if over else "met by every family"))
        return 1 if over else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
