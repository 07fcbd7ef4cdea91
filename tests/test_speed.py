"""The speed switches: channels_last and torch.compile for training (the Speed callback) and for the extractor,
with a clean fallback where torch.compile cannot run."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import quiet_trainer
from torch import nn

import genlab.speed
from genlab.callbacks import Speed
from genlab.data import SyntheticDataModule
from genlab.evaluator import Evaluator
from genlab.features import random_extractor
from genlab.models import VAEModule
from genlab.speed import networks, speed_up

TINY = {"image_channels": 1, "image_size": 16, "latent_dim": 4, "channels": [8, 16]}


def fit(tmp_path, callback: Speed) -> VAEModule:
    torch.manual_seed(0)
    model = VAEModule(**TINY)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(model, SyntheticDataModule(num_samples=64, image_size=16, batch_size=16))
    return model


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


@pytest.mark.slow
def test_channels_last_converts_the_networks_weights_and_training_runs(tmp_path) -> None:
    model = fit(tmp_path, Speed(channels_last=True))
    assert convs(model) and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs(model))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    eager = fit(tmp_path, Speed())
    assert not all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs(eager))


def test_compile_falls_back_to_eager_with_one_warning_where_it_cannot_run(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(genlab.speed, "compile_unavailable", lambda device_type: "no C++ compiler (simulated)")
    with caplog.at_level(logging.WARNING, logger="genlab.speed"):
        model = fit(tmp_path, Speed(compile=True))
    lines = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert lines == ["training: torch.compile cannot run on cpu here (no C++ compiler (simulated)); running eagerly"]
    assert all(net._compiled_call_impl is None for net in networks(model))


def test_the_networks_of_a_module_are_the_children_with_parameters() -> None:
    model = VAEModule(**TINY)
    assert [type(n).__name__ for n in networks(model)] == ["ConvEncoder", "ConvDecoder"]


@pytest.mark.slow
def test_compile_gives_the_eager_outputs_and_keeps_the_state_dict_keys() -> None:
    torch.manual_seed(0)
    model = VAEModule(**TINY).eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    eager, keys = model.encoder(x), list(model.state_dict())
    speed_up(model, channels_last=False, compile=True, what="test", device="cpu")
    if genlab.speed.compile_unavailable("cpu") is not None:
        pytest.fail(f"torch.compile should run on this CPU: {genlab.speed.compile_unavailable('cpu')}")
    assert all(net._compiled_call_impl is not None for net in networks(model))
    for got, want in zip(model.encoder(x), eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == keys


def test_the_extractor_in_channels_last_gives_the_same_metrics() -> None:
    data = SyntheticDataModule(num_samples=120, image_size=16)
    images = torch.randint(0, 256, (40, 1, 16, 16), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    scores = []
    for channels_last in (False, True):
        evaluator = Evaluator(random_extractor, ["fid", "pr"], num_samples=40, channels_last=channels_last)
        scores.append(evaluator.evaluate(data, "cpu", images=images, progress=False).metrics)
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)


def test_the_real_features_are_cached_per_memory_format(tmp_path) -> None:
    data = SyntheticDataModule(num_samples=120, image_size=16)
    for channels_last in (False, True, False):
        Evaluator(
            random_extractor, ["fid"], num_samples=40, channels_last=channels_last, cache_dir=str(tmp_path)
        ).setup(data, "cpu", progress=False)
    names = sorted(p.name for p in (tmp_path / "features").glob("real-*-train-*.pt"))
    assert len(names) == 2 and names[0].endswith("-channels_last.pt") != names[1].endswith("-channels_last.pt")
