"""scripts/bench_train.py: one cheap family through both training paths, and the error for an unknown family."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODELS

from genlab.train import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_train", ROOT / "scripts" / "bench_train.py")
bench_train = importlib.util.module_from_spec(spec)
sys.modules["bench_train"] = bench_train  # its dataclasses look their module up by name
spec.loader.exec_module(bench_train)


def table_rows(out: str) -> dict[str, list[str]]:
    """The table's data rows by family: the cells after the family's."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in rows[1:]}  # rows[0] is the header


@pytest.mark.slow
def test_one_family_prints_a_positive_finite_ratio(capsys) -> None:
    argv = ["--families", "vae", "--device", "cpu", "--batch-size", "32", "--limit-images", "64", "--repeats", "1"]
    code = bench_train.main([*argv, "--target", "1e-9", "--overrides", *TINY_MODELS["vae"]])
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith(f"command: python scripts/bench_train.py {' '.join(argv)} --target 1e-9")
    header = next(line for line in out.splitlines() if line.startswith("| family"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    cells = dict(zip(columns, table_rows(out)["vae"], strict=True))
    ratio = float(cells["ratio"])
    assert math.isfinite(ratio) and ratio > 0
    assert (cells["batch"], cells["steps/epoch"]) == ("32", "2")  # 64 images in batches of 32, on both sides
    assert cells["ratio >= 1e-09"] == "yes" and code == 0


def test_unknown_family_is_one_line_naming_the_valid_ones(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_train.main(["--families", "vae", "flow"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "unknown family ['flow']" in err
    assert all(repr(p.stem) in err for p in (CONFIG_DIR / "model").glob("*.yaml"))
