"""The diffusion model: schedule closed forms, DDIM against the DDPM posterior, DPM-Solver++(2M) against the exact
ODE solution for Gaussian data and its second-order convergence, reproducible sampling, the progress bar,
classifier-free guidance, old checkpoints, the seeded validation loss and bad hyperparameters."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from omegaconf import OmegaConf
from torch import Tensor, nn

import genlab.models.diffusion as diffusion
from genlab.checks import ConfigError
from genlab.data import SyntheticDataModule
from genlab.models import load_model
from genlab.models.base import CLASS_KEY
from genlab.models.diffusion import DiffusionModule, UNet
from genlab.models.schedule import SAMPLERS, NoiseSchedule

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model" / "diffusion.yaml"

TINY = {"image_channels": 1, "image_size": 16, "channels": [8, 16], "num_timesteps": 20, "sample_steps": 4}


def randomized(model: DiffusionModule) -> DiffusionModule:
    """The model with every weight perturbed: a fresh UNet's zero-initialised output layer predicts eps = 0 whatever
    its input, which would let label and guidance tests pass vacuously."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


class StubEps(nn.Module):
    """A known eps-predictor standing in for the UNet: eps(x, t) = 0.8 tanh(x) + t / 100."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return 0.8 * torch.tanh(x) + t.view(-1, 1, 1, 1) / 100


MU, S = 0.1, 0.2  # Gaussian data x_0 ~ N(MU, S^2 I): inside [-1, 1] to 4.5 S, so that no clamp acts


class GaussianEps(nn.Module):
    """The exact noise prediction for x_0 ~ N(MU, S^2 I). x_t = a x_0 + b eps with a = sqrt(abar_t), b =
    sqrt(1 - abar_t) is jointly Gaussian with eps: Cov(eps, x_t) = b, Var(x_t) = a^2 S^2 + b^2, so
    E[eps | x_t] = b (x_t - a MU) / (a^2 S^2 + b^2) = sqrt(1 - abar) (x_t - sqrt(abar) MU) / (abar S^2 + 1 - abar)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.schedule = schedule

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        abar = self.schedule.alpha_bar(t).view(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)


def exact_ode_solution(noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Where the probability-flow ODE takes x_T = noise at t = T-1 for Gaussian data: it keeps z = (x_t - a MU) /
    sqrt(a^2 S^2 + b^2) fixed (every marginal is N(a MU, a^2 S^2 + b^2)), so x_0 = MU + S z."""
    abar = schedule.alphas_cumprod[-1]
    return MU + S * (noise - abar.sqrt() * MU) / (abar * S**2 + 1 - abar).sqrt()


def gaussian_model() -> DiffusionModule:
    model = DiffusionModule(image_size=16, channels=[8, 16], attention=False, num_timesteps=1000)
    model.unet = GaussianEps(model.schedule)
    model.sample_progress = False
    return model


@functools.cache
def gaussian_samples(sampler: str, steps: int) -> Tensor:
    """64 samples (64, 1, 16, 16) in [-1, 1] of the Gaussian data by `sampler` in `steps` calls, all from the same
    x_T (seed 0): the first draw of sample()."""
    generator = torch.Generator().manual_seed(0)
    return gaussian_model().sample(64, generator=generator, sampler=sampler, steps=steps) * 2 - 1


def rms(a: Tensor, b: Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_alphas_cumprod_is_the_cumulative_product(schedule: str) -> None:
    s = NoiseSchedule(100, schedule)
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(s.alphas.double(), 0).float())
    assert (s.betas > 0).all() and (s.betas <= 0.999).all() and s.alphas_cumprod[-1] < 1e-3


def test_linear_schedule_is_ho_et_al_at_1000_steps() -> None:
    betas = NoiseSchedule(1000, "linear").betas
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    torch.testing.assert_close(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999), rtol=1e-3, atol=1e-8)


def test_cosine_alphas_cumprod_is_f_t_over_f_0_up_to_clipping() -> None:
    steps, s = 50, 0.008
    schedule = NoiseSchedule(steps, "cosine")
    f = [math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(steps + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(steps)])  # index t is the paper's step t + 1
    clipped = schedule.betas == 0.999
    assert clipped.tolist() == [False] * (steps - 1) + [True]  # f(1) = 0 makes the last beta 1, clipped to 0.999
    torch.testing.assert_close(schedule.alphas_cumprod[:-1], expected[:-1].float())
    torch.testing.assert_close(schedule.alphas_cumprod[-1], schedule.alphas_cumprod[-2] * (1 - 0.999))


def test_q_sample_refuses_shapes_that_would_broadcast() -> None:
    schedule = NoiseSchedule(100, "linear")
    x0, t = torch.zeros(8, 1, 1), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"got x0 \(8, 1, 1\), t \(8,\), noise \(8, 1, 1, 1\)"):
        schedule.q_sample(x0, t, torch.zeros(8, 1, 1, 1))  # would have been 8 x 8 images, silently
    with pytest.raises(ValueError, match="noise shaped like x0"):
        schedule.q_sample(torch.zeros(8, 1, 2, 2), t, torch.zeros(8, 1, 2, 1))


def test_q_sample_has_the_closed_form_mean_and_variance() -> None:
    schedule = NoiseSchedule(100, "linear")
    t = torch.tensor([0, 10, 50, 99])
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    noise = torch.randn(4, 1, 4, 4)
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    # empirically: 20,000 draws for one pixel value x0 = 0.7 at each t
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20_000, 1, 1, 1), 0.7)
    xt = torch.stack([schedule.q_sample(x0, t[i].expand(20_000), torch.randn(x0.shape, generator=g)) for i in range(4)])
    abar = abar.view(4)
    torch.testing.assert_close(xt.flatten(1).mean(1), abar.sqrt() * 0.7, atol=0.02, rtol=0)
    torch.testing.assert_close(xt.flatten(1).var(1), 1 - abar, atol=0.02, rtol=0.03)


def test_posterior_is_ho_et_al_eq_7_and_bayes_rule() -> None:
    schedule = NoiseSchedule(30, "cosine")
    t = torch.tensor([1, 7, 15, 29])
    x0, xt = torch.rand(4, 1, 3, 3) * 2 - 1, torch.randn(4, 1, 3, 3)
    mean, var = schedule.posterior_mean_variance(x0, xt, t)
    b = schedule.betas.double()
    abar = torch.cumprod(1 - b, 0)
    a_t, ab_t, ab_prev, b_t = (v.view(-1, 1, 1, 1) for v in ((1 - b)[t], abar[t], abar[t - 1], b[t]))
    # eq. 7, written out
    eq7_mean = ab_prev.sqrt() * b_t / (1 - ab_t) * x0 + a_t.sqrt() * (1 - ab_prev) / (1 - ab_t) * xt
    eq7_var = (1 - ab_prev) / (1 - ab_t) * b_t
    torch.testing.assert_close(mean, eq7_mean.float())
    torch.testing.assert_close(var, eq7_var.float())
    # Bayes' rule: q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times q(x_t | x_{t-1}) =
    # N(sqrt(a_t) x_{t-1}, b_t), a Gaussian in x_{t-1} whose precision is the sum of the two precisions
    precision = 1 / (1 - ab_prev) + a_t / b_t
    torch.testing.assert_close(var, (1 / precision).float())
    torch.testing.assert_close(
        mean, ((ab_prev.sqrt() * x0 / (1 - ab_prev) + a_t.sqrt() * xt / b_t) / precision).float()
    )
    assert torch.all(schedule.posterior_mean_variance(x0, xt, torch.zeros(4, dtype=torch.long))[1] == 0)


def test_ddim_on_all_timesteps_with_eta_1_is_the_ddpm_posterior() -> None:
    model = DiffusionModule(**{**TINY, "num_timesteps": 12, "sample_steps": 12}, eta=1.0)
    model.unet = StubEps()
    schedule = model.schedule
    timesteps = schedule.ddim_timesteps(12)
    assert timesteps.tolist() == [*range(11, -1, -1), -1]
    x = 1.5 * torch.randn(3, 1, 16, 16)
    for t, t_prev in zip(timesteps[:-1].tolist(), timesteps[1:].tolist(), strict=True):
        tt, tp = torch.full((3,), t), torch.full((3,), t_prev)
        sigma = schedule.ddim_sigma(tt, tp, eta=1.0)
        x0 = schedule.predict_x0(x, tt, StubEps()(x, tt)).clamp(-1, 1)
        mean, var = schedule.posterior_mean_variance(x0, x, tt)
        torch.testing.assert_close(sigma**2, var.view(3), atol=1e-6, rtol=1e-4)  # sigma_t^2 = beta_tilde_t
        deterministic = schedule.ddim_step(StubEps()(x, tt), x, tt, tp, eta=1.0, noise=torch.zeros_like(x))[0]
        torch.testing.assert_close(deterministic, mean, atol=1e-5, rtol=1e-4)
        noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(t))
        x_prev = model.denoise_step(x, tt, tp, None, 1.0, 1.0, torch.Generator().manual_seed(t))
        torch.testing.assert_close(x_prev, mean + var.sqrt() * noise, atol=1e-5, rtol=1e-4)
        x = x_prev
    assert x.abs().max() <= 1  # the last step (t = 0 -> x_0) returns the clamped x_0 prediction


def test_ddim_with_eta_0_steps_along_the_predicted_noise() -> None:
    schedule = NoiseSchedule(50, "linear")
    torch.manual_seed(0)
    xt, eps = torch.randn(2, 1, 4, 4) * 0.2, torch.randn(2, 1, 4, 4) * 0.1
    t, t_prev = torch.tensor([10, 10]), torch.tensor([4, 4])
    x_prev, x0 = schedule.ddim_step(eps, xt, t, t_prev, eta=0.0)
    torch.testing.assert_close(schedule.ddim_sigma(t, t_prev, 0.0), torch.zeros(2))
    ab, ab_prev = schedule.alphas_cumprod[10], schedule.alphas_cumprod[4]
    torch.testing.assert_close(x0, (xt - (1 - ab).sqrt() * eps) / ab.sqrt())
    assert x0.abs().max() < 1  # not clamped, so eq. 12 with sigma = 0 holds with the network's own eps
    torch.testing.assert_close(x_prev, ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps)
    big = schedule.ddim_step(eps + 5, xt, t, t_prev, eta=0.0)[1]
    assert big.abs().max() == 1  # a prediction outside the data range is clamped


def test_the_first_order_dpm_solver_step_is_ddim_and_the_last_returns_x0() -> None:
    schedule = NoiseSchedule(50, "linear")
    torch.manual_seed(0)
    xt, eps = torch.randn(2, 1, 4, 4) * 0.3, torch.randn(2, 1, 4, 4) * 0.5
    t, t_prev = torch.tensor([30, 30]), torch.tensor([12, 12])
    x_prev, x0 = schedule.dpmpp_2m_step(eps, xt, t, t_prev)
    ddim_prev, ddim_x0 = schedule.ddim_step(eps, xt, t, t_prev, eta=0.0)
    torch.testing.assert_close(x0, ddim_x0)  # clamped to [-1, 1] the same way
    torch.testing.assert_close(x_prev, ddim_prev)  # first order, DPM-Solver++ is DDIM
    second = schedule.dpmpp_2m_step(eps, x_prev, t_prev, torch.tensor([5, 5]), earlier=(x0 + 0.1, t))[0]
    assert not torch.allclose(second, schedule.dpmpp_2m_step(eps, x_prev, t_prev, torch.tensor([5, 5]))[0])
    final, final_x0 = schedule.dpmpp_2m_step(eps, x_prev, t_prev, torch.tensor([-1, -1]), earlier=(x0, t))
    assert torch.equal(final, final_x0) and torch.isfinite(final).all()  # lambda_{-1} = inf: x_0 itself


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_logsnr_timesteps_are_distinct_and_even_in_lambda(schedule: str) -> None:
    s = NoiseSchedule(1000, schedule)
    for steps in (1, 2, 10, 15, 20, 50, 200, 999, 1000):
        t = s.logsnr_timesteps(steps)
        assert t[0] == 999 and t[-1] == -1 and (steps == 1 or t[-2] == 0) and len(t) == steps + 1
        assert (t.diff() < 0).all()  # strictly falling: every network call at its own timestep
    assert s.logsnr_timesteps(1000).tolist() == list(range(999, -2, -1))
    lam = s.half_log_snr(s.logsnr_timesteps(15)[1:-1])  # below the top one, which is T-1 whatever lambda_{T-1}
    gaps = lam.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, gaps.mean().item()), rtol=0.2, atol=0)
    with pytest.raises(ValueError, match=r"sample_steps must be an integer in \[1, num_timesteps=1000\], got 0"):
        s.logsnr_timesteps(0)


def exact_gaussian_samples() -> Tensor:
    """The ODE's own answer for the x_T of `gaussian_samples`."""
    noise = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # sample()'s x_T
    return exact_ode_solution(noise, gaussian_model().schedule)


def test_dpm_solver_maps_noise_to_the_gaussian_data_and_beats_ddim() -> None:
    exact = exact_gaussian_samples()
    dpm, ddim = gaussian_samples("dpmpp_2m", 15), gaussian_samples("ddim", 15)
    assert abs(dpm.mean().item() - MU) < 0.01 and abs(dpm.std().item() - S) < 0.01  # 0.098 and 0.205
    assert rms(dpm, exact) < 0.01
    assert rms(dpm, exact) < rms(ddim, exact) / 5  # 4.2e-3 against 7.4e-2 (DDIM's std is 0.13)


@pytest.mark.slow
def test_dpm_solver_converges_at_second_order_to_the_many_step_solution() -> None:
    reference = gaussian_samples("dpmpp_2m", 1000)
    assert rms(reference, exact_gaussian_samples()) < 3e-4  # the 1000-step reference is the ODE's solution
    assert rms(gaussian_samples("dpmpp_2m", 15), reference) < rms(gaussian_samples("ddim", 15), reference) / 5
    errors = {sampler: [rms(gaussian_samples(sampler, n), reference) for n in (20, 40, 80)] for sampler in SAMPLERS}
    dpm, ddim = errors["dpmpp_2m"], errors["ddim"]
    assert dpm[0] / dpm[1] > 3 and dpm[1] / dpm[2] > 3  # halving h divides the error by ~4 (4.7 and 9.8 here)
    assert 1.5 < ddim[0] / ddim[1] < 2.5 and 1.5 < ddim[1] / ddim[2] < 2.5  # DDIM, first order: by ~2


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0)])
def test_sampling_with_a_generator_is_reproducible(sampler: str, eta: float) -> None:
    model = randomized(DiffusionModule(**TINY, sampler=sampler, eta=eta))
    a = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(1)))
    other = "ddim" if sampler == "dpmpp_2m" else "dpmpp_2m"
    assert not torch.allclose(a, model.sample(3, generator=torch.Generator().manual_seed(0), sampler=other, eta=0.0))
    if sampler == "ddim":
        other_eta = model.sample(3, generator=torch.Generator().manual_seed(0), eta=1.0 - eta)
        assert not torch.allclose(a, other_eta)


class RecordingBar:
    """tqdm's stand-in: records the bar's total, label and how far it moved."""

    bars: list[RecordingBar] = []

    def __init__(self, iterable, total=None, desc=None, **kwargs) -> None:
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, 0
        RecordingBar.bars.append(self)

    def __iter__(self):
        for item in self.iterable:
            self.n += 1
            yield item


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_progress_bar_moves_once_per_network_call(monkeypatch, sampler: str) -> None:
    monkeypatch.setattr(diffusion, "tqdm", RecordingBar)
    RecordingBar.bars = []
    model = randomized(DiffusionModule(**TINY, num_classes=3, guidance_scale=2.0, sampler=sampler))
    calls, guided = [], []
    model.unet.register_forward_hook(lambda module, args, out: calls.append(args[1][0].item()))
    guided_eps = model.guided_eps
    monkeypatch.setattr(model, "guided_eps", lambda *args: guided.append(1) or guided_eps(*args))
    model.sample(3, torch.tensor([0, 1, 2]), steps=6)
    (bar,) = RecordingBar.bars
    assert (bar.total, bar.n, bar.desc) == (6, 6, sampler)
    assert len(guided) == 6 and len(calls) == 6  # one guided batch (labels and null, 2B) per call
    grid = model.schedule.ddim_timesteps if sampler == "ddim" else model.schedule.logsnr_timesteps
    assert calls == grid(6)[:-1].tolist()


def test_sample_steps_are_settable_after_training() -> None:
    model = DiffusionModule(**TINY, sampler="ddim")
    calls = []
    model.unet.register_forward_hook(lambda module, args, out: calls.append(args[1][0].item()))
    model.sample(2)
    assert calls == [19, 13, 6, 0]  # sample_steps=4 evenly from T-1 to 0
    calls.clear()
    model.sample_steps = 2
    model.sample(2)
    assert calls == [19, 0]
    calls.clear()
    model.sample(2, steps=20)
    assert calls == list(range(19, -1, -1))
    with pytest.raises(ValueError, match=r"sample_steps must be an integer in \[1, num_timesteps=20\], got 21"):
        model.sample(2, steps=21)
    calls.clear()
    model.sampler = "dpmpp_2m"
    model.sample(2, steps=4)
    assert calls == [19, 11, 4, 0]  # even in lambda: denser near t = 0
    with pytest.raises(ConfigError, match=re.escape(f"sampler must be one of {list(SAMPLERS)}, got 'euler'")):
        model.sample(2, sampler="euler")


def test_the_config_lists_the_samplers_and_defaults_to_the_module() -> None:
    line = next(line for line in CONFIG.read_text().splitlines() if line.startswith("sampler:"))
    assert line.split("#")[1].split(":")[0].strip() == " | ".join(SAMPLERS)
    config = OmegaConf.load(CONFIG)
    model = DiffusionModule()
    assert (config["sampler"], config["sample_steps"]) == (model.sampler, model.sample_steps)


def test_a_checkpoint_from_before_the_recipe_settings_loads_as_it_was_trained(tmp_path: Path) -> None:
    model = DiffusionModule(**TINY)  # the module's defaults: eps, the plain loss, a stride-1 stem
    new = ("prediction", "loss_weighting", "min_snr_gamma", "stem_stride")
    old = {key: value for key, value in model.hparams.items() if key not in new}
    path = tmp_path / "old.ckpt"
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": old, "pytorch-lightning_version": L.__version__}
    torch.save({**checkpoint, CLASS_KEY: "genlab.models.diffusion.DiffusionModule"}, path)
    loaded = load_model(path)  # strict: a stride-2 stem's weights would not fit
    assert (loaded.hparams.prediction, loaded.hparams.stem_stride) == ("eps", 1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(loaded.sample(2, generator=g()), model.eval().sample(2, generator=g()))
    config = OmegaConf.load(CONFIG)  # while the config trains new models with the recipe
    recipe = [config[k] for k in ("prediction", "loss_weighting", "stem_stride", "schedule")]
    assert recipe == ["v", "min_snr", 2, "cosine"]


def test_a_checkpoint_without_a_sampler_loads_with_the_default(tmp_path: Path) -> None:
    model = DiffusionModule(**TINY)
    old = {key: value for key, value in model.hparams.items() if key != "sampler"}  # saved before the sampler
    path = tmp_path / "old.ckpt"
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": old, "pytorch-lightning_version": L.__version__}
    torch.save({**checkpoint, CLASS_KEY: "genlab.models.diffusion.DiffusionModule"}, path)
    loaded = load_model(path)
    assert loaded.sampler == loaded.hparams.sampler == "dpmpp_2m" and loaded.sample_steps == TINY["sample_steps"]
    assert loaded.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 16, 16)


def test_guidance_scale_0_and_1_give_the_unconditional_and_conditional_prediction() -> None:
    model = randomized(DiffusionModule(**TINY, num_classes=3))
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 5, 10, 19]), torch.tensor([0, 1, 2, 1])
    null = torch.full_like(y, 3)
    cond, uncond = model(x, t, y), model(x, t, null)
    assert not torch.allclose(cond, uncond, atol=1e-3)  # the label matters
    torch.testing.assert_close(model(x, t), uncond)  # no labels = the null label
    torch.testing.assert_close(model.guided_eps(x, t, y, 1.0), cond)
    torch.testing.assert_close(model.guided_eps(x, t, y, 0.0), uncond)
    torch.testing.assert_close(model.guided_eps(x, t, y, 3.0), uncond + 3 * (cond - uncond), atol=1e-5, rtol=1e-4)


def test_conditional_sampling_honours_labels() -> None:
    model = randomized(DiffusionModule(**TINY, num_classes=3, guidance_scale=2.0))
    labels = torch.tensor([0, 1, 2])
    a = model.sample(3, labels, generator=torch.Generator().manual_seed(0))
    same = model.sample(3, labels, generator=torch.Generator().manual_seed(0))
    other = model.sample(3, labels.flip(0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, same)
    assert torch.equal(a[1], other[1]) and not torch.allclose(a[0], other[0])
    with pytest.raises(ValueError, match="needs labels"):
        model.sample(3)


def test_label_dropout_uses_the_null_label() -> None:
    torch.manual_seed(0)
    y = torch.randint(0, 5, (10_000,))
    dropped = DiffusionModule(**TINY, num_classes=5, cond_drop_prob=0.25).drop_labels(y)
    is_null = dropped == 5
    assert 0.23 < is_null.float().mean() < 0.27
    assert torch.equal(dropped[~is_null], y[~is_null])
    assert torch.equal(DiffusionModule(**TINY, num_classes=5, cond_drop_prob=0.0).drop_labels(y), y)


@pytest.mark.parametrize(("image_channels", "image_size", "channels"), [(1, 28, [8, 16, 16]), (3, 32, [8, 16, 16])])
def test_unet_keeps_the_image_shape(image_channels: int, image_size: int, channels: list[int]) -> None:
    unet = UNet(image_channels, channels, num_res_blocks=2, num_classes=10)
    x = torch.randn(2, image_channels, image_size, image_size)
    assert unet(x, torch.tensor([3, 999]), torch.tensor([1, 10])).shape == x.shape


def test_validation_loss_is_seeded_and_ema_is_configured() -> None:
    L.seed_everything(0)
    model = DiffusionModule(**TINY, ema_decay=0.9, ema_start=3)
    (ema,) = model.configure_callbacks()
    assert isinstance(ema, EMAWeightAveraging) and ema.update_starting_at_step == 3
    assert DiffusionModule(**TINY, ema_decay=0.0).configure_callbacks() == []
    data = SyntheticDataModule(num_samples=64, image_size=16, batch_size=16)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    first = trainer.validate(randomized(model), datamodule=data, verbose=False)[0]["val/loss"]
    torch.manual_seed(123)  # the global RNG does not enter the validation loss
    assert trainer.validate(model, datamodule=data, verbose=False)[0]["val/loss"] == first


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"channels": []}, "channels must be a non-empty list of positive integers"),
        ({"channels": [8, 14]}, r"channels=\[8, 14\] give a width that GroupNorm cannot split"),
        ({"image_size": 18, "channels": [8, 16, 16]}, r"image_size=18 cannot be handled: .* multiple of 4"),
        ({"num_classes": -1}, "num_classes must be a non-negative integer, got -1"),
        ({"num_res_blocks": 0}, "num_res_blocks must be a positive integer, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"num_timesteps": 0}, "num_timesteps must be a positive integer, got 0"),
        ({"schedule": "sigmoid"}, r"schedule must be one of \['linear', 'cosine'\], got 'sigmoid'"),
        ({"sampler": "euler"}, r"sampler must be one of \['dpmpp_2m', 'ddim'\], got 'euler'"),
        ({"sample_steps": 0}, "sample_steps must be a positive integer, got 0"),
        ({"sample_steps": 50}, "sample_steps must be at most num_timesteps=20, got 50"),
        ({"eta": 1.5}, r"eta must be in \[0, 1\] .*, got 1.5"),
        ({"guidance_scale": -1.0}, "guidance_scale must be >= 0 .*, got -1.0"),
        ({"cond_drop_prob": 1.0}, r"cond_drop_prob must be in \[0, 1\), got 1.0"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\) .*, got 1.0"),
        ({"ema_start": -5}, "ema_start must be a non-negative integer, got -5"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"prediction": "x0"}, r"prediction must be one of \['eps', 'v'\], got 'x0'"),
        ({"loss_weighting": "p2"}, r"loss_weighting must be one of \['none', 'min_snr'\], got 'p2'"),
        ({"min_snr_gamma": 0.0}, "min_snr_gamma must be > 0, got 0.0"),
        ({"stem_stride": 4}, r"stem_stride must be one of \[1, 2\], got 4"),
        ({"image_size": 28, "channels": [8, 16, 16], "stem_stride": 2}, r"halves it 3 times .* multiple of 8"),
    ],
)
def test_bad_hyperparameters_name_the_value(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusionModule(**{**TINY, **override})


def test_with_many_steps_dpm_solver_gives_ddim_s_samples() -> None:
    dpm, ddim = gaussian_samples("dpmpp_2m", 200), gaussian_samples("ddim", 1000)  # DDIM on every timestep
    assert rms(dpm, ddim) < 2e-3  # both converge to the one ODE solution (1.4e-3; DDIM at first order)
    assert rms(gaussian_samples("dpmpp_2m", 15), ddim) > 3 * rms(dpm, ddim)  # 5.6e-3: the tolerance can fail


def test_velocity_and_noise_convert_into_each_other() -> None:
    schedule = NoiseSchedule(1000, "cosine")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    x_t = schedule.q_sample(x0, t, noise)
    v = schedule.velocity(x0, t, noise)
    torch.testing.assert_close(schedule.eps_from_velocity(x_t, t, v), noise, atol=2e-5, rtol=0)
    abar = schedule.alpha_bar(t).view(-1, 1, 1, 1)  # |v|^2 = |eps|^2 abar + |x0|^2 (1 - abar) in expectation
    torch.testing.assert_close(v, abar.sqrt() * noise - (1 - abar).sqrt() * x0)
    torch.testing.assert_close(schedule.snr(t), schedule.alpha_bar(t) / (1 - schedule.alpha_bar(t)))


class TrueVelocity(nn.Module):
    """Stands in for the UNet of a v-prediction model: the v of the x_0 and noise the test drew."""

    def __init__(self, schedule: NoiseSchedule, x0: Tensor, noise: Tensor) -> None:
        super().__init__()
        self.schedule, self.x0, self.noise = schedule, x0, noise

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.schedule.velocity(self.x0, t, self.noise)


def test_a_v_prediction_model_samples_through_the_noise_its_v_implies() -> None:
    model = DiffusionModule(**TINY, prediction="v", schedule="cosine")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1, torch.randn(3, 1, 16, 16, generator=g)
    t = torch.tensor([2, 9, 17])
    model.unet = TrueVelocity(model.schedule, x0, noise)
    torch.testing.assert_close(model(model.schedule.q_sample(x0, t, noise), t), noise, atol=2e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_each_sample_s_error_by_min_snr_gamma_over_its_snr(prediction: str, monkeypatch) -> None:
    model = DiffusionModule(**TINY, prediction=prediction, loss_weighting="min_snr", min_snr_gamma=2.0)
    model.unet = StubEps()
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss = model.eps_mse(x, None, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the draws eps_mse makes, in its order
    t = torch.randint(0, 20, (8,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    target = model.schedule.velocity(x, t, noise) if prediction == "v" else noise
    error = (StubEps()(model.schedule.q_sample(x, t, noise), t) - target).square().flatten(1).mean(1)
    snr = model.schedule.snr(t)
    weight = snr.clamp(max=2.0) / (snr + 1 if prediction == "v" else snr)
    assert float(loss) == pytest.approx(float((weight * error).mean()), rel=1e-5)
    assert weight.min() < 1  # some timesteps are down-weighted: the check can tell weighted from plain
    plain = DiffusionModule(**TINY, prediction=prediction)
    plain.unet = StubEps()
    assert float(plain.eps_mse(x, None, torch.Generator().manual_seed(3))) == pytest.approx(float(error.mean()), 1e-5)


def test_a_stride_2_stem_runs_the_unet_at_half_size_and_keeps_the_image_shape() -> None:
    unet = UNet(1, [8, 16], num_res_blocks=1, stem_stride=2)
    x = torch.randn(2, 1, 28, 28)
    seen = []
    unet.down[0].register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape[-2:])))
    assert unet(x, torch.tensor([3, 999])).shape == x.shape and seen == [(14, 14)]
