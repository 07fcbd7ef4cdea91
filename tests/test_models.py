"""Every model config behind the same contract: one parametrized test per config, built from the real Hydra config.

For each config: a training batch gives a finite loss and one optimizer (or EM) step changes the weights;
`sample()` has the contract's shape, range, dtype and device, follows its generator and honours labels; a
checkpoint reloads without Hydra (`load_model`) and samples the same images; and `train()` runs the config
end to end with the shared evaluation callback, with no code for that family.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import compose_train, quiet_trainer
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from genlab.models import GenerativeModel, load_model
from genlab.train import data_shape_kwargs, train

# id -> overrides on top of `model=<family>`; every file in configs/model/ must appear here.
MODEL_CONFIGS: dict[str, list[str]] = {
    "gmm": ["model=gmm"],
    "gmm-conditional": ["model=gmm", "model.num_classes=auto"],
    "ae": ["model=ae"],
    "vae": ["model=vae"],
    "vae-gaussian": ["model=vae", "model.likelihood=gaussian"],
    "dvae": ["model=dvae"],
    "gan": ["model=gan"],
    "gan-hinge": ["model=gan", "model.loss=hinge"],
    "gan-wgan-gp": ["model=gan", "model.loss=wgan_gp"],
    "cgan": ["model=cgan"],
    "diffusion": ["model=diffusion"],
    "diffusion-conditional": ["model=diffusion", "model.num_classes=auto"],
}
DATA = ["data.image_size=16", "data.num_samples=64", "data.batch_size=16"]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def compose(run_dir: Path, name: str, *extra: str) -> DictConfig:
    return compose_train(run_dir, *DATA, *MODEL_CONFIGS[name], *extra)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **data_shape_kwargs(cfg.model, datamodule), _convert_="all")
    return datamodule, model


def fit(model: L.LightningModule, datamodule: L.LightningDataModule, root: Path, batches: int = 2) -> L.Trainer:
    trainer = quiet_trainer(
        root, max_epochs=1, limit_train_batches=batches, limit_val_batches=1, num_sanity_val_steps=0
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


def labels_for(model: GenerativeModel, n: int) -> torch.Tensor | None:
    return torch.arange(n) % model.num_classes if model.num_classes else None


@pytest.fixture(scope="module", params=list(MODEL_CONFIGS))
def trained(request, tmp_path_factory) -> dict:
    """A model of each config after two training batches, its weights before, and its checkpoint."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    L.seed_everything(0)
    datamodule, model = build(compose(root / "run", name))
    GlobalHydra.instance().clear()
    before = copy.deepcopy(model.state_dict())
    trainer = fit(model, datamodule, root)
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return {"name": name, "model": model, "before": before, "metrics": dict(trainer.callback_metrics), "ckpt": ckpt}


def test_every_model_config_is_in_the_parametrized_test() -> None:
    configs = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    covered = {overrides[0].removeprefix("model=") for overrides in MODEL_CONFIGS.values()}
    assert configs == covered


@pytest.mark.slow
def test_loss_is_finite_and_a_step_changes_the_weights(trained: dict) -> None:
    for key in ("train/loss", "val/loss"):
        assert key in trained["metrics"], f"{trained['name']} does not log {key}"
        assert math.isfinite(float(trained["metrics"][key])), key
    after = trained["model"].state_dict()
    assert after.keys() == trained["before"].keys()
    changed = [k for k in after if not torch.equal(after[k], trained["before"][k])]
    assert changed, f"{trained['name']}: no weight changed after two training batches"


@pytest.mark.slow
def test_sample_contract(trained: dict) -> None:
    model = trained["model"]
    assert isinstance(model, GenerativeModel)
    n = 6
    labels = labels_for(model, n)
    x = model.sample(n, labels=labels, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 1, 16, 16) and x.dtype == torch.float32 and x.device == model.device
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    same = model.sample(n, labels=labels, generator=torch.Generator().manual_seed(0))
    other = model.sample(n, labels=labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, same) and not torch.equal(x, other)
    if model.num_classes:
        with pytest.raises(ValueError, match="labels"):
            model.sample(n)
        zeros = model.sample(n, labels=torch.zeros(n, dtype=torch.long), generator=torch.Generator().manual_seed(0))
        ones = model.sample(n, labels=torch.ones(n, dtype=torch.long), generator=torch.Generator().manual_seed(0))
        assert not torch.equal(zeros, ones), "the labels do not change the samples"
    else:
        with pytest.raises(ValueError, match="unconditional"):
            model.sample(n, labels=torch.zeros(n, dtype=torch.long))


@pytest.mark.slow
def test_checkpoint_reloads_without_hydra_and_samples_the_same(trained: dict) -> None:
    model = trained["model"]
    reloaded = load_model(trained["ckpt"])
    assert type(reloaded) is type(model) and reloaded.num_classes == model.num_classes
    labels = labels_for(model, 5)
    a = model.sample(5, labels=labels, generator=torch.Generator().manual_seed(3))
    b = reloaded.sample(5, labels=labels, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gmm", "cgan", "diffusion"])
def test_train_scores_the_family_with_the_shared_callback(name: str, tmp_path: Path) -> None:
    evaluation = ["eval=default", "eval/extractor=random", "eval.num_samples=32", "eval.batch_size=16"]
    evaluation += ["eval.kid_subsets=5", "eval.kid_subset_size=16", "eval.every_n_epochs=1", "eval.progress=false"]
    if name == "cgan":  # CAS too: it trains a classifier inside Lightning's validation (inference mode)
        evaluation += ["eval.metrics=all", "eval.cas_epochs=1"]
    cfg = compose(tmp_path / "run", name, *evaluation, f"eval.cache_dir={tmp_path / 'cache'}")
    metrics = train(cfg)
    expected = {"eval/fid", "eval/is", "eval/kid", "eval/precision", "eval/recall", "eval/density", "eval/coverage"}
    if name == "cgan":
        expected |= {"eval/intra_fid", "eval/accuracy", "eval/cas", "eval/cas_real"}
    assert expected <= metrics.keys()
    assert all(math.isfinite(metrics[k]) for k in expected)
    assert (tmp_path / "run" / "samples" / "epoch_000.png").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("best-fid-*.ckpt"))
