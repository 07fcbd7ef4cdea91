"""The offline HTML report on a small real sweep: numbers, damaged runs, and the page as headless Chromium shows it.

The sweep is made of real runs (`train(compose_train(...))`): a configuration with two seeds, another whose second
seed crashes, a copy whose status.json still says `running` for a dead process and a copy with no status.json and a
metrics.csv cut mid-line. The browser check drives Debian's Chromium through the DevTools protocol over
`--remote-debugging-pipe` (standard library only); scripts/install_chromium.sh installs it on first use.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import math
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import compose_train
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from genlab.data import SyntheticDataModule
from genlab.features import RandomProjectionExtractor
from genlab.report import NoRunsError, group_runs, load_runs, write_report
from genlab.train import train

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("report_cli", ROOT / "scripts" / "report.py")
report_cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report_cli)
EVAL = ["eval=default", "eval/extractor=random", "eval.num_samples=32", "eval.batch_size=16", "eval.kid_subsets=5"]
EVAL += ["eval.kid_subset_size=16", "eval.every_n_epochs=1", "eval.progress=false", "trainer.max_epochs=2"]
CRASH = ["+callbacks.crash._target_=conftest.CrashAt", "+callbacks.crash.epoch=1", "+callbacks.crash.batch=1"]
# (job folder, the overrides a `-m` sweep would record, extra overrides that only make the crash happen)
JOBS = [
    ("0", ["model=vae", "seed=1"], []),
    ("1", ["model=vae", "seed=2"], []),
    ("2", ["model=vae", "model.beta=0.5", "seed=1"], []),
    ("3", ["model=vae", "model.beta=0.5", "seed=2"], CRASH),
]
PAGE_CHECK = """(() => {
  const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  return {
    images: [...document.images].map((img) => ({
      src: img.getAttribute("src"), loaded: img.complete && img.naturalWidth > 0, shown: shown(img)})),
    tables: Object.fromEntries([...document.querySelectorAll("table[id]")].map(
      (t) => [t.id, {rows: t.rows.length, shown: shown(t)}])),
    text: document.body.innerText,
  };
})()"""


class Chromium:
    """Headless Chromium over the DevTools protocol on a pipe: NUL-terminated JSON, commands to the browser's fd 3,
    replies and events from its fd 4."""

    def __init__(self, binary: str, profile: Path) -> None:
        command_read, self.commands = os.pipe()
        self.replies, reply_write = os.pipe()
        # bash moves the browser's pipe ends (copied above fd 10, out of the way) to fds 3 and 4, then becomes it
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (command_read, reply_write)]
        for fd in (command_read, reply_write):
            os.close(fd)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe"]
        command = ["bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]}', "bash", binary, *flags]
        self.log = (profile / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [*command, f"--user-data-dir={profile}"], pass_fds=ends, stdout=subprocess.DEVNULL, stderr=self.log
        )
        for fd in ends:
            os.close(fd)
        self.messages: list[dict[str, Any]] = []
        self.buffer, self.last_id = b"", 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m, wanted=self.last_id: m.get("id") == wanted)
        if "error" in reply:
            raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            found = next((m for m in self.messages[seen:] if match(m)), None)
            if found is not None:
                return found
            seen = len(self.messages)
            if not select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"no DevTools reply in {timeout} s; see {self.log.name}")
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed its DevTools pipe; see {self.log.name}")
            *complete, self.buffer = (self.buffer + chunk).split(b"\0")
            self.messages += [json.loads(m) for m in complete]

    def check(self, page: Path) -> dict[str, Any]:
        """Load `page` in a new tab: its images, tables, visible text and every console/JS/resource error."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": page.as_uri()}, session)
        deadline = time.monotonic() + 30
        while self.state(session) != f"complete {page.as_uri()}":  # complete: every <img> has loaded or failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{page} did not finish loading in 30 s")
            time.sleep(0.05)
        result = self.evaluate(PAGE_CHECK, session)
        self.send("Target.closeTarget", {"targetId": target})
        return {**result, "errors": self.errors(session)}

    def state(self, session: str) -> str | None:
        try:
            return self.evaluate("document.readyState + ' ' + location.href", session)
        except RuntimeError:
            return None  # the old document went away mid-navigation: ask again

    def evaluate(self, expression: str, session: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return reply["result"].get("value")

    def errors(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions and failed loads (Log entries of level error) of one tab."""
        found = []
        for message in (m for m in self.messages if m.get("sessionId") == session):
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        return found

    def close(self) -> None:
        os.write(self.commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.commands)
        os.close(self.replies)
        self.log.close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Chromium:
    """Headless Chromium, which scripts/setup.sh installs (scripts/install_chromium.sh: Debian's package, as root).
    Without it the browser tests skip, except under CI, where they must run."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        why = "no Chromium on PATH: run scripts/install_chromium.sh (needs root and apt)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI's setup should have installed it")
        pytest.skip(why)
    chromium = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


def write_hydra_files(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The `.hydra/` files that @hydra.main writes before a job starts (config.yaml unresolved, as Hydra does)."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra/config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra/overrides.yaml")
    choices = {"model": "vae", "data": "synthetic"}
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), run_dir / ".hydra/hydra.yaml")


def copy_run(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints")))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multirun folder: 0-2 finished, 3 crashed, 4 `running` with a dead pid, 5 no status and a cut metrics.csv.

    Four real training runs (~20 s of CPU): the tests that use it are marked slow."""
    folder = tmp_path_factory.mktemp("multirun")
    cache = tmp_path_factory.mktemp("cache")
    for job, overrides, extra in JOBS:
        cfg = compose_train(folder / job, *EVAL, f"eval.cache_dir={cache}", *overrides, *extra)
        write_hydra_files(folder / job, cfg, overrides)
        if extra:
            with pytest.raises(RuntimeError, match="planned crash"):
                train(cfg)
        else:
            train(cfg)
    GlobalHydra.instance().clear()
    dead = subprocess.Popen(["true"])
    dead.wait()
    status = json.loads((folder / "1/status.json").read_text())
    running = {"started": status["started"], "pid": dead.pid, "host": status["host"], "status": "running"}
    (copy_run(folder / "1", folder / "4") / "status.json").write_text(json.dumps(running))
    half = copy_run(folder / "2", folder / "5")
    (half / "status.json").unlink()
    metrics = (half / "csv/metrics.csv").read_bytes()
    (half / "csv/metrics.csv").write_bytes(metrics[:-10])
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"task": ["model.beta=1,0.5", "seed=1,2"]}}}), folder / "multirun.yaml"
    )
    return folder


@pytest.fixture(scope="module")
def sweep_report(sweep: Path) -> Path:
    return write_report(sweep)


def status_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.slow
def test_the_sweep_page_renders_in_chromium_with_no_errors(sweep_report: Path, browser: Chromium) -> None:
    page = browser.check(sweep_report)
    assert page["errors"] == []
    pngs = sorted(
        p.relative_to(sweep_report.parent).as_posix() for p in sweep_report.parent.rglob("report_files/**/*.png")
    )
    assert sorted(img["src"] for img in page["images"]) == pngs  # every image, as a relative path
    assert all(img["loaded"] and img["shown"] for img in page["images"]), [i for i in page["images"] if not i["loaded"]]
    assert sum("grids/" in p for p in pngs) == 3 * 6  # each run's last samples, reconstructions, nearest neighbours
    assert sum("-nearest-" in p for p in pngs) == 6
    assert page["tables"]["metrics"] == {"rows": 1 + 2, "shown": True}  # two configurations
    assert page["tables"]["runs"] == {"rows": 1 + 6, "shown": True}
    for flag in ("RuntimeError: planned crash at epoch 1, batch 1", "is gone", "csv/metrics.csv is truncated"):
        assert flag in page["text"]  # the errors are on the page itself, not folded away
    assert "Reading the novelty axis." in page["text"] and "copy_rate" in page["text"]  # the guide, beside its columns


@pytest.mark.slow
def test_each_configuration_shows_mean_and_std_over_its_finished_seeds(sweep: Path, sweep_report: Path) -> None:
    groups = {g.configuration: g for g in group_runs(load_runs(sweep))}
    assert set(groups) == {"model=vae", "model=vae model.beta=0.5"}
    two_seeds, one_seed = groups["model=vae"], groups["model=vae model.beta=0.5"]
    assert [r.name for r in two_seeds.runs] == ["0", "1"] and [r.name for r in two_seeds.others] == ["4"]
    assert [r.name for r in one_seed.runs] == ["2"] and [r.name for r in one_seed.others] == ["3", "5"]
    html = sweep_report.read_text()
    for metric in ("eval/fid", "eval/kid", "val/loss"):
        values = [status_of(sweep / job)["metrics"][metric] for job in ("0", "1")]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert two_seeds.stats(metric) == pytest.approx((mean, std, 2))
        assert f"{mean:.4g} ± {std:.2g}" in html
    assert one_seed.stats("eval/fid") == pytest.approx((status_of(sweep / "2")["metrics"]["eval/fid"], None, 1))
    extractor = RandomProjectionExtractor((1, 28, 28), num_logits=SyntheticDataModule().num_classes)
    assert {g.extractor for g in groups.values()} == {f"random {extractor.weights_hash()} (tf32)"}  # eval.precision


@pytest.mark.slow
def test_crashed_and_half_written_runs_are_flagged_with_their_error(sweep: Path) -> None:
    runs = {run.name: run for run in load_runs(sweep)}
    assert {name: run.status for name, run in runs.items()} == {
        "0": "completed", "1": "completed", "2": "completed", "3": "failed", "4": "crashed", "5": "incomplete",
    }  # fmt: skip
    assert runs["3"].error == "RuntimeError: planned crash at epoch 1, batch 1"
    extractor = RandomProjectionExtractor((1, 28, 28), num_logits=SyntheticDataModule().num_classes)
    assert runs["3"].extractor == f"random {extractor.weights_hash()} (tf32)"  # from hparams.yaml: no evaluation
    assert "its process" in runs["4"].error and "is gone" in runs["4"].error
    assert "no status.json" in runs["5"].error and "truncated" in runs["5"].error
    assert runs["5"].history["val/loss"] == runs["2"].history["val/loss"][:-1]  # the cut line is dropped
    assert (runs["0"].seed, runs["0"].model, runs["0"].data) == (1, "vae", "synthetic")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty_csv", "half_status", "no_csv"])
def test_other_damage_is_reported_not_raised(damage: str, sweep: Path, tmp_path: Path) -> None:
    run_dir = copy_run(sweep / "0", tmp_path / "0")
    if damage == "empty_csv":
        (run_dir / "status.json").unlink()
        (run_dir / "csv/metrics.csv").write_text("")
    elif damage == "half_status":
        (run_dir / "status.json").write_text((run_dir / "status.json").read_text()[:40])
    else:
        (run_dir / "status.json").unlink()
        shutil.rmtree(run_dir / "csv")
    (run,) = load_runs(tmp_path)
    expected = {"empty_csv": "metrics.csv is empty", "half_status": "status.json cannot be read", "no_csv": "missing"}
    assert run.status == "incomplete" and expected[damage] in run.error
    assert expected[damage] in write_report(tmp_path).read_text()


@pytest.mark.slow
def test_a_diverged_run_shows_nan_and_inf_instead_of_breaking_the_report(sweep: Path, tmp_path: Path) -> None:
    for job in ("0", "1"):
        copy_run(sweep / job, tmp_path / job)
    status = status_of(tmp_path / "1")
    status["metrics"]["eval/fid"] = float("nan")
    (tmp_path / "1/status.json").write_text(json.dumps(status))
    header = (tmp_path / "1/csv/metrics.csv").read_text().splitlines()[0].split(",")
    with open(tmp_path / "1/csv/metrics.csv", "a") as f:
        f.write(",".join("2" if k == "epoch" else "9" if k == "step" else "inf" for k in header) + "\n")
    runs = load_runs(tmp_path)
    assert runs[1].history["val/loss"][-1] == (2, math.inf)
    (group,) = group_runs(runs)
    assert math.isnan(group.stats("eval/fid")[0]) and math.isnan(group.stats("eval/fid")[1])
    assert "nan ± nan" in write_report(tmp_path).read_text()
    assert (tmp_path / "report_files/plots/val_loss.png").stat().st_size > 0


@pytest.mark.slow
def test_mixed_extractors_are_flagged_and_config_text_is_escaped(
    sweep: Path, tmp_path: Path, browser: Chromium
) -> None:
    for job in ("0", "1", "2"):
        copy_run(sweep / job, tmp_path / job)
    status = status_of(tmp_path / "1")
    status["evaluation"] = {"extractor": "domain-mnist", "extractor_hash": "ee41c83fae80", "precision": "fp32"}
    (tmp_path / "1/status.json").write_text(json.dumps(status))
    with open(tmp_path / "0/.hydra/config.yaml", "a") as f:
        f.write('note: "<script>console.error(1)</script><img src=x>"\n')
    page = browser.check(write_report(tmp_path))
    assert page["errors"] == [] and all(img["loaded"] for img in page["images"])
    assert "Different feature extractors" in page["text"]
    assert page["tables"]["metrics"]["rows"] == 1 + 3  # model=vae once per extractor, never averaged across them
    html = (tmp_path / "report.html").read_text()
    assert "&lt;script&gt;console.error(1)&lt;/script&gt;&lt;img src=x&gt;" in html and "<script>" not in html


@pytest.mark.slow
def test_the_cli_reports_a_single_run_into_another_folder(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "scripts/report.py", str(sweep / "3"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "report.html")
    html = (out / "report.html").read_text()
    assert "planned crash at epoch 1, batch 1" in html and 'src="report_files/grids/3-samples-epoch_000.png"' in html


def test_a_folder_with_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(NoRunsError, match=f"{tmp_path / 'empty'}: no runs found"):
        write_report(tmp_path / "empty")
    result = subprocess.run(
        [sys.executable, "scripts/report.py", str(tmp_path / "empty")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and f"{tmp_path / 'empty'}: no runs found" in result.stderr
    assert not (tmp_path / "empty" / "report.html").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "{tmp}/missing: no such folder"),
        ("file", "{tmp}/notes.txt: is a file, not a run or sweep folder"),
        ("no runs", "{tmp}/empty: no runs found (a run folder has one of .hydra, status.json, csv, tensorboard"),
        ("out is a file", "--out {tmp}/notes.txt: cannot write the report there (it is a file, not a folder)"),
        ("out below a file", "--out {tmp}/notes.txt/out: cannot write the report there (Not a directory)"),
    ],
)
def test_report_py_errors_are_one_line_naming_the_bad_value(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text(json.dumps({"status": "completed", "metrics": {"val/loss": 1.0}}))
    argv = {
        "missing": [str(tmp_path / "missing")],
        "file": [str(tmp_path / "notes.txt")],
        "no runs": [str(tmp_path / "empty")],
        "out is a file": [str(tmp_path / "run"), "--out", str(tmp_path / "notes.txt")],
        "out below a file": [str(tmp_path / "run"), "--out", str(tmp_path / "notes.txt" / "out")],
    }[case]
    assert report_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"report.py: {message.format(tmp=tmp_path)}")
    assert not list(tmp_path.rglob("report.html"))


def test_report_py_prints_the_page_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text(json.dumps({"status": "completed", "metrics": {"val/loss": 1.0}}))
    assert report_cli.main([str(tmp_path / "run"), "--out", str(tmp_path / "new" / "out")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'new' / 'out' / 'report.html'}\n"
    assert "val/loss" in (tmp_path / "new" / "out" / "report.html").read_text()


def test_the_browser_check_catches_broken_images_and_console_errors(browser: Chromium, tmp_path: Path) -> None:
    # guards the checks above: a page with a missing image, a console.error and an exception must fail them
    page = tmp_path / "broken.html"
    page.write_text('<img src="missing.png"><table id="t"></table><script>console.error("boom"); nope();</script>')
    result = browser.check(page)
    assert [img["loaded"] for img in result["images"]] == [False]
    assert any("boom" in e for e in result["errors"]) and any("nope is not defined" in e for e in result["errors"])
    assert any("missing.png" in e for e in result["errors"])
    assert result["tables"]["t"] == {"rows": 0, "shown": False}
