"""The dVAE: temperature schedule, causal prior, reproducible code sampling, hard-code reconstruction, codebook
usage, loss terms and bad hyperparameters. (The generic model contract is covered by the shared model test.)"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from genlab.data import SyntheticDataModule
from genlab.models.dvae import CodePrior, DVAEModule, annealed_temperature, codebook_stats

TINY = {
    "image_channels": 1,
    "image_size": 16,
    "num_tokens": 8,
    "code_dim": 4,
    "channels": [8, 16],
    "prior_dim": 16,
    "prior_layers": 2,
    "prior_heads": 2,
}


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_temperature_anneals_exponentially_from_start_to_end() -> None:
    start, end, steps = 1.0, 1 / 16, 100
    taus = [annealed_temperature(s, start, end, steps) for s in range(steps + 20)]
    assert taus[0] == start
    assert taus[steps] == pytest.approx(end) and all(t == pytest.approx(end) for t in taus[steps:])
    assert all(a > b for a, b in zip(taus[:steps], taus[1 : steps + 1], strict=True))  # strictly decreasing
    assert taus[steps // 2] == pytest.approx(math.sqrt(start * end))  # geometric, not linear, halfway
    assert DVAEModule(**TINY, temperature_start=2.0).temperature == 2.0  # global step 0 without a trainer


def test_prior_is_causal() -> None:
    torch.manual_seed(0)
    prior = CodePrior(num_tokens=8, seq_len=12, num_starts=1, dim=16, layers=2, heads=2, dropout=0.0).eval()
    codes = torch.randint(0, 8, (3, 12))
    start = torch.zeros(3, dtype=torch.long)
    logits = prior(prior.inputs(codes, start))  # (3, 12, 8): position t predicts code t
    for i in (0, 5, 10):
        changed = codes.clone()
        changed[:, i] = (changed[:, i] + 1) % 8
        other = prior(prior.inputs(changed, start))
        torch.testing.assert_close(other[:, : i + 1], logits[:, : i + 1])  # code i is not seen at positions <= i
        assert not torch.allclose(other[:, i + 1], logits[:, i + 1])  # ... and is seen right after


def test_cached_decoding_matches_the_full_forward() -> None:
    torch.manual_seed(0)
    prior = CodePrior(num_tokens=8, seq_len=12, num_starts=1, dim=16, layers=2, heads=2, dropout=0.0).eval()
    inputs = prior.inputs(torch.randint(0, 8, (3, 12)), torch.zeros(3, dtype=torch.long))
    caches: list[list[torch.Tensor]] = [[] for _ in prior.blocks]
    stepwise = torch.cat([prior(inputs[:, t : t + 1], caches, offset=t) for t in range(12)], 1)
    torch.testing.assert_close(stepwise, prior(inputs), atol=1e-5, rtol=1e-5)


def test_sampled_code_grids_are_reproducible_and_in_range() -> None:
    torch.manual_seed(0)
    model = DVAEModule(**TINY, prior_dropout=0.5).train()  # dropout must not leak into sampling
    codes = model.sample_codes(16, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (16, 4, 4) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < TINY["num_tokens"]
    assert torch.equal(codes, model.sample_codes(16, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(codes, model.sample_codes(16, generator=torch.Generator().manual_seed(1)))
    assert model.prior.training  # the prior's mode is restored
    images = model.sample(16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, model.decode_codes(codes))


def test_conditional_prior_starts_from_the_label() -> None:
    torch.manual_seed(0)
    model = DVAEModule(**TINY, num_classes=3).eval()
    with torch.no_grad():
        for p in model.prior.parameters():
            p.normal_()  # confident logits that depend on the start token, as after training
    zeros, ones = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    a = model.sample_codes(16, labels=zeros, generator=torch.Generator().manual_seed(0))
    b = model.sample_codes(16, labels=ones, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="labels"):
        model.sample_codes(16, generator=torch.Generator().manual_seed(0))


def test_reconstruct_decodes_the_hard_argmax_codes() -> None:
    torch.manual_seed(0)
    model = DVAEModule(**TINY).train()  # no Gumbel noise even in training mode
    x = images()
    r = model.reconstruct(x)
    assert r.shape == x.shape and r.min() >= 0 and r.max() <= 1
    assert torch.equal(r, model.reconstruct(x))
    with torch.no_grad():
        torch.testing.assert_close(r, model.decode_codes(model.encoder(x).argmax(1)))


def test_codebook_usage_and_perplexity_on_a_known_grid() -> None:
    grid = torch.tensor([[0, 0, 1], [1, 2, 3]])
    usage, perplexity = codebook_stats(torch.bincount(grid.flatten(), minlength=8))
    assert usage.item() == pytest.approx(4 / 8)
    p = torch.tensor([2, 2, 1, 1]) / 6
    assert perplexity.item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    usage, perplexity = codebook_stats(torch.ones(8, dtype=torch.long))
    assert usage.item() == 1 and perplexity.item() == pytest.approx(8)


def test_validation_logs_the_codebook_usage_of_the_whole_validation_set() -> None:
    torch.manual_seed(0)
    model = DVAEModule(**{**TINY, "num_tokens": 64})
    dm = SyntheticDataModule(num_samples=64, image_size=16, batch_size=4, num_classes=4, val_fraction=0.5)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    with torch.no_grad():
        codes = torch.cat([model.encoder(x).argmax(1).flatten() for x, _ in dm.val_dataloader()])
    usage, perplexity = codebook_stats(torch.bincount(codes, minlength=64))
    assert len(dm.val_dataloader()) == 8 and 0 < usage < 1  # the histogram must add up all 8 batches
    assert metrics["val/codebook_usage"] == pytest.approx(usage.item(), abs=1e-6)
    assert metrics["val/code_perplexity"] == pytest.approx(perplexity.item(), rel=1e-5)


def test_loss_terms_and_the_detached_prior() -> None:
    torch.manual_seed(0)
    model = DVAEModule(**TINY, kl_weight=0.5)
    losses, codes = model.losses(images(), None, temperature=1.0)
    assert codes.shape == (6, 16) and losses["kl"] >= 0
    torch.testing.assert_close(losses["loss"], losses["recon"] + 0.5 * losses["kl"] + losses["prior_nll"])
    losses["prior_nll"].backward()  # the prior learns from the codes but must not move the encoder
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.prior.parameters())
    losses["recon"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_tokens": 1}, "num_tokens must be at least 2, got 1"),
        ({"num_tokens": 0}, "num_tokens must be a positive integer, got 0"),
        ({"code_dim": -4}, "code_dim must be a positive integer, got -4"),
        ({"num_classes": -1}, "num_classes must be a non-negative integer, got -1"),
        ({"image_size": 30}, r"image_size=30 cannot be handled: .* halves it 2 times .* multiple of 4"),
        ({"channels": []}, "channels must be a non-empty list of positive integers"),
        ({"num_res_blocks": -1}, "num_res_blocks must be a non-negative integer, got -1"),
        ({"temperature_start": 0.0}, "temperature_start must be > 0, got 0.0"),
        ({"temperature_end": 2.0}, r"temperature_end must be in \(0, temperature_start=1.0\], got 2.0"),
        ({"temperature_end": 0.0}, r"temperature_end must be in \(0, temperature_start=1.0\], got 0.0"),
        ({"anneal_steps": 0}, "anneal_steps must be a positive integer, got 0"),
        ({"kl_weight": -1.0}, "kl_weight must be >= 0, got -1.0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"prior_lr": -1e-3}, "prior_lr must be > 0, got -0.001"),
        ({"prior_heads": 3}, "prior_heads=3 must divide prior_dim=16"),
        ({"prior_layers": 0}, "prior_layers must be a positive integer, got 0"),
        ({"prior_dropout": 1.0}, r"prior_dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_hyperparameters_name_the_value(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DVAEModule(**{**TINY, **override})
