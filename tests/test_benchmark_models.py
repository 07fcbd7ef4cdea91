"""scripts/benchmark_models.py: its training overrides compose with the real config, the curves' table (mean ± std
over seeds at each budget point), the plot, resuming, and one tiny real benchmark end to end."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import compose_train
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("benchmark_models", ROOT / "scripts" / "benchmark_models.py")
benchmark = importlib.util.module_from_spec(spec)
sys.modules["benchmark_models"] = benchmark  # dataclasses look their module up there
spec.loader.exec_module(benchmark)

PNG = b"\x89PNG\r\n\x1a\n"


def test_training_overrides_compose_with_train_yaml(tmp_path: Path) -> None:
    argv = ["--models", "vae", "--data", "synthetic", "--minutes", "2.5", "--points", "5"]
    argv += ["--extra", "eval.batch_size=8"]
    args = benchmark.parse_args(argv)
    overrides = benchmark.train_overrides(args, benchmark.Run("vae", 3, args.minutes, args.points))
    assert "eval.batch_size=8" not in overrides  # scoring's, not training's (eval=none has no batch size)
    cfg = compose_train(tmp_path / "run", *overrides)
    GlobalHydra.instance().clear()
    assert cfg.model._target_ == "genlab.models.VAEModule" and cfg.model.latent_density == "gmm"  # scored both ways
    assert cfg.seed == 3 and "_target_" not in cfg.eval  # eval=none: no in-run evaluation (the budget keys alone)
    assert (cfg.callbacks.budget.seconds, cfg.callbacks.budget.points, cfg.trainer.max_epochs) == (150, 5, -1)
    assert "sample_grid" not in cfg.callbacks  # its sampling would count as training time


def test_the_runs_are_every_family_and_seed_plus_one_long_run() -> None:
    args = benchmark.parse_args(["--models", "gmm", "vae", "--seeds", "4", "5", "--long-minutes", "15"])
    keys = [r.key for r in benchmark.runs(args)]
    assert keys == ["gmm-seed4", "gmm-seed5", "vae-seed4", "vae-seed5", "diffusion-seed4-long"]
    assert [r.key for r in benchmark.runs(benchmark.parse_args(["--models", "gmm", "--long-minutes", "0"]))] == [
        "gmm-seed0",
        "gmm-seed1",
        "gmm-seed2",
    ]
    assert list(benchmark.Run("vae", 0, 1, 1).labels()) == ["vae", "vae+density"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "vae", "flow"], "unknown model config(s) ['flow']; valid: ['ae', 'cgan', 'diffusion'"),
        (["--points", "0"], "--points must be > 0, got 0"),
        (["--minutes", "-1"], "--minutes must be > 0, got -1.0"),
        (["--inception-weights", "missing.pth"], "--inception-weights missing.pth: no such file"),
    ],
)
def test_bad_arguments_name_the_value(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        benchmark.parse_args(argv)
    assert message in capsys.readouterr().err


def point(label: str, seed: int, p: int, fid: float, run: str = "main", **metrics: float) -> dict:
    return {
        "label": label,
        "model": label.split("+")[0],
        "seed": seed,
        "run": run,
        "point": p,
        "fraction": p / 2,
        "budget_seconds": 30.0 * p,
        "train_seconds": 30.0 * p + seed,
        "images": 1000 * p,
        "epoch": p,
        "step": 10 * p,
        "metrics": {"fid": fid, **metrics},
        "eval_seconds": 1.0,
    }


META = {"data": "mnist", "minutes": 1.0, "num_samples": 100, "machine": "2 CPU cores (x86_64), no GPU"}
RECORDS = [
    point("gan", 0, 1, 40.0, recall=0.5),
    point("gan", 1, 1, 50.0, recall=0.7),
    point("gan", 0, 2, 20.0, recall=0.6),
    point("gan", 1, 2, 30.0, recall=0.8),
    point("vae", 0, 1, 60.0),
    point("vae", 0, 2, 10.0),
    point("diffusion", 0, 1, 90.0, run="long"),
    point("diffusion", 0, 2, 45.0, run="long"),
]


def test_the_table_has_mean_and_std_over_seeds_at_each_budget_point() -> None:
    lines = benchmark.table(RECORDS, {**META, "extractor": "domain-mnist (abc)"}).splitlines()
    assert lines[0].startswith("data=mnist, 1 minutes of training per run (validation and evaluation off the clock)")
    assert "seeds 0, 1" in lines[0] and "measured on 2 CPU cores (x86_64), no GPU" in lines[0]
    assert "`domain-mnist (abc)`" in lines[0]
    assert lines[2] == "| model | FID at 30 s | FID at 60 s | images seen | epochs |"
    assert lines[4] == "| vae | 60.00 | 10.00 | 2000 | 3 |"  # sorted by the last point's FID
    assert lines[5] == "| gan | 45.00 ± 7.07 | 25.00 ± 7.07 | 2000 ± 0 | 3 ± 0 |"
    final = lines.index("At the last point (60 s):")
    assert lines[final + 2] == "| model | fid | recall |"
    assert lines[final + 4 : final + 6] == ["| vae | 10.00 | – |", "| gan | 25.00 ± 7.07 | 0.700 ± 0.141 |"]
    assert benchmark.INCEPTION_ABSENT in lines  # no --inception-weights: the column is absent, and why
    long = lines.index("The longer run, diffusion, seed 0:")
    assert lines[long + 4 :] == ["| 30 | 1000 | 2 | 90.00 |", "| 60 | 2000 | 3 | 45.00 |"]


def test_the_inception_column_sits_beside_the_published_numbers() -> None:
    text = benchmark.table(RECORDS, {**META, "inception": {"gan": [7.0, 9.0], "vae": [20.0]}})
    assert "| gan | 25.00 ± 7.07 | 0.700 ± 0.141 | 8.00 ± 1.41 | 6.8 (NS-GAN) |" in text
    assert "| vae | 10.00 | – | 20.00 | 16.6 (VAE) |" in text and benchmark.INCEPTION_ABSENT not in text


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    benchmark.plot(RECORDS, path)
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1320, 495)  # two panels, 12 x 4.5 inches at 110 dpi


def test_the_readme_shows_the_plot_that_the_benchmark_writes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/benchmark/curves.png" in readme and (ROOT / "docs" / "benchmark" / "curves.png").is_file()
    assert (ROOT / "docs" / "benchmark" / "curves.png").read_bytes()[:8] == PNG


class Stubs:
    """train() and Scorer stand-ins that count what they are asked to do."""

    def __init__(self, monkeypatch) -> None:
        self.trained: list[str] = []
        self.scored: list[tuple[str, str]] = []
        monkeypatch.setattr(benchmark.subprocess, "run", self.fake_train)
        monkeypatch.setattr(benchmark.Scorer, "build", classmethod(lambda cls, args, overrides: self))
        monkeypatch.setattr(benchmark, "grids", lambda *a: None)
        monkeypatch.setattr(benchmark, "machine", lambda: "a test machine")
        self.device = None

    def fake_train(self, command: list[str], **kwargs) -> object:
        folder = Path(next(c for c in command if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        points = int(next(c for c in command if c.startswith("callbacks.budget.points=")).split("=")[1])
        self.trained.append(folder.name)
        saved = [{"point": p, "fraction": p / points, "budget_seconds": p, "train_seconds": p, "images": p,
                  "epoch": 0, "step": p, "ckpt": f"point-{p:02d}.ckpt"} for p in range(1, points + 1)]  # fmt: skip
        (folder / "checkpoints").mkdir(parents=True)
        budget = {"points": points, "done": True, "saved": saved}
        (folder / "checkpoints" / "budget.json").write_text(json.dumps(budget))
        return type("Done", (), {"returncode": 0})()

    def score(self, ckpt: Path, attributes: dict) -> tuple[dict, None]:
        self.scored.append((ckpt.parents[2].name, ckpt.name))
        if len(self.scored) == self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of the scoring
        return {"fid": 10.0 + len(self.scored)}, None

    extractor = "stub"
    fail_after = -1


@pytest.mark.slow  # three rounds of tables and plots: over a second
def test_a_second_run_trains_and_scores_only_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    stubs = Stubs(monkeypatch)
    argv = ["--models", "gmm", "gan", "--seeds", "0", "--points", "3", "--long-minutes", "0", "--out", str(tmp_path)]
    stubs.fail_after = 5  # killed while scoring gan's second point
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(argv)
    assert stubs.trained == ["gmm-seed0", "gan-seed0"]
    assert len(json.loads((tmp_path / "curves.json").read_text())["points"]) == 4  # what was scored is kept
    stubs.fail_after, stubs.trained, stubs.scored = -1, [], []
    benchmark.main(argv)
    assert stubs.trained == [] and stubs.scored == [("gan-seed0", "point-02.ckpt"), ("gan-seed0", "point-03.ckpt")]
    assert len(json.loads((tmp_path / "curves.json").read_text())["points"]) == 6
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG and "| gmm |" in (tmp_path / "curves.md").read_text()
    stubs.scored = []
    benchmark.main([*argv, "--extra", "model.lr=1e-4"])  # other settings: trained and scored again
    assert stubs.trained == ["gmm-seed0", "gan-seed0"] and len(stubs.scored) == 6
    assert len(json.loads((tmp_path / "curves.json").read_text())["points"]) == 6  # the old points replaced


@pytest.mark.slow
def test_a_tiny_benchmark_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """One real training run with a 2-point budget, of the overrides the script gives `python train.py`, trained
    in this process (a process of its own costs some 9 s of imports); the second seed and the long run are copies
    of its checkpoints. Every checkpoint is scored, with an InceptionV3 column from random weights (the same code
    path as the real ones)."""
    from genlab.features.inception import random_inception_weights
    from genlab.train import train

    real_run, copied = benchmark.subprocess.run, []

    def train_once(command: list[str], **kwargs) -> object:
        if command[1:2] != ["train.py"]:
            return real_run(command, **kwargs)  # not a training run (platform.processor() runs `uname -p`)
        assert command[0] == sys.executable and kwargs["cwd"] == ROOT
        folder = Path(next(c for c in command if c.startswith("hydra.run.dir=")).split("=", 1)[1])
        first = tmp_path / "out" / "runs" / "gmm-seed0"
        if folder == first:
            train(compose_train(folder, *(c for c in command[2:] if c != f"hydra.run.dir={folder}"), tiny=False))
            GlobalHydra.instance().clear()
        else:
            shutil.copytree(first / "checkpoints", folder / "checkpoints")
            copied.append(folder.name)
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(benchmark.subprocess, "run", train_once)
    weights = random_inception_weights(tmp_path)
    argv = ["--models", "gmm", "--seeds", "0", "1", "--minutes", "0.05", "--points", "2", "--long-minutes", "0.05"]
    argv += ["--long-model", "gmm", "--long-points", "2", "--data", "synthetic", "--num-samples", "32"]
    argv += ["--inception-weights", weights, "--inception-samples", "8", "--extra", "data.num_samples=64"]
    # for scoring only: InceptionV3 on the real side at 500 a batch took 2 GiB; the caches in the test's folder
    argv += ["eval.batch_size=16", f"eval.cache_dir={tmp_path / 'cache'}"]
    benchmark.main([*argv, "--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs")])
    found = json.loads((tmp_path / "out" / "curves.json").read_text())
    rows = [(r["seed"], r["run"], r["point"]) for r in found["points"]]
    assert rows == [(0, "main", 1), (0, "main", 2), (1, "main", 1), (1, "main", 2), (0, "long", 1), (0, "long", 2)]
    assert all(r["train_seconds"] > 0 and r["images"] > 0 and "fid" in r["metrics"] for r in found["points"])
    text = (tmp_path / "docs" / "curves.md").read_text()
    assert re.search(r"\| gmm \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \|", text)  # two seeds: mean ± std
    assert copied == ["gmm-seed1", "gmm-seed0-long"]
    assert len(found["meta"]["inception"]["gmm"]) == 2 and "InceptionV3 FID | published" in text
    for name in ("curves.png", "gmm.png", "gmm-strip.png"):
        assert (tmp_path / "docs" / name).read_bytes()[:8] == PNG
