"""The DDPM noise schedule and the two samplers' update rules, apart from any network.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (https://arxiv.org/abs/2006.11239): the forward
process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4) and the posterior q(x_{t-1} | x_t, x_0)
(eqs. 6-7). Song et al. 2021, "Denoising Diffusion Implicit Models" (https://arxiv.org/abs/2010.02502): the
generalised step (eq. 12) with sigma_t(eta) (eq. 16), which is DDPM's ancestral step at eta = 1 on all timesteps
and deterministic at eta = 0. The layout follows diffusers' `scheduling_ddpm.py` / `scheduling_ddim.py`.

Timesteps are zero-based, t in {0, ..., T-1}: index t is the paper's step t+1, and abar_{-1} = 1 (x_0 itself).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.checks import ConfigError, check_positive_int

SCHEDULES = ("linear", "cosine")
MAX_BETA = 0.999  # Nichol & Dhariwal clip the cosine schedule's betas here: beta near 1 makes the last step singular
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal eq. 17: keeps beta_1 from being vanishingly small


def cosine_alpha_bar(t: Tensor) -> Tensor:
    """f(t) of Nichol & Dhariwal 2021 eq. 17 at t in [0, 1] (t = step / T): cos^2(((t + s) / (1 + s)) pi / 2)."""
    return torch.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


def make_betas(schedule: str, num_timesteps: int) -> Tensor:
    """beta_t for t = 0..T-1, float64.

    linear: Ho et al.'s 1e-4..0.02 for T = 1000, scaled by 1000 / T for other T as in Nichol & Dhariwal's code, so
    that abar_{T-1} stays near 0 whatever T (below T = 50 the top betas reach MAX_BETA and are clipped there).
    cosine: beta_t = 1 - f(t+1) / f(t) (eq. 17), clipped at MAX_BETA.
    """
    if schedule == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64).clamp(max=MAX_BETA)
    if schedule == "cosine":
        f = cosine_alpha_bar(torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps)
        return (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
    raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")


def per_sample(values: Tensor, x: Tensor) -> Tensor:
    """Per-sample coefficients (B,) -> (B, 1, 1, 1) that broadcast against images (B, C, H, W)."""
    return values.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


class NoiseSchedule(nn.Module):
    """betas, alphas and alphas_cumprod as buffers (they follow the module's device and are saved in checkpoints),
    the forward process, the DDPM posterior and the DDIM step.

    Args:
        num_timesteps: T, the number of diffusion steps.
        schedule: `linear` (Ho et al.) or `cosine` (Nichol & Dhariwal).
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear") -> None:
        super().__init__()
        check_positive_int("num_timesteps", num_timesteps)
        betas = make_betas(schedule, num_timesteps)  # float64 so that the cumulative product loses nothing
        alphas = 1 - betas
        self.num_timesteps = num_timesteps
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("alphas_cumprod", torch.cumprod(alphas, 0).float())

    def alpha_bar(self, t: Tensor) -> Tensor:
        """abar_t for timesteps t (B,) in {-1, ..., T-1}; abar_{-1} = 1 (the clean image)."""
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones_like(self.alphas_cumprod[0]))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) (Ho et al. eq. 4) for clean images x0 (B, C, H, W), t (B,) and noise ~ N(0, I)."""
        if x0.ndim != 4 or noise.shape != x0.shape or t.shape != x0.shape[:1]:
            # a mismatch would broadcast silently: (N, 1, 1) images against (N, 1, 1, 1) noise make N x N of them
            raise ValueError(
                f"q_sample needs x0 (B, C, H, W), t (B,) and noise shaped like x0; got x0 {tuple(x0.shape)}, "
                f"t {tuple(t.shape)}, noise {tuple(noise.shape)}"
            )
        abar = per_sample(self.alpha_bar(t), x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 implied by x_t and a noise prediction: eq. 4 solved for x_0 (the `predicted x_0` of DDIM eq. 12)."""
        abar = per_sample(self.alpha_bar(t), x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The noise implied by x_t and an x_0 prediction: eq. 4 solved for epsilon."""
        abar = per_sample(self.alpha_bar(t), x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, C, H, W) and variance (B, 1, 1, 1) of q(x_{t-1} | x_t, x_0), Ho et al. eqs. 6-7."""
        abar, abar_prev = per_sample(self.alpha_bar(t), x_t), per_sample(self.alpha_bar(t - 1), x_t)
        beta, alpha = per_sample(self.betas[t], x_t), per_sample(self.alphas[t], x_t)
        # 1. mu_tilde = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        mean = (abar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - abar_prev) * x_t) / (1 - abar)
        # 2. beta_tilde = (1 - abar_{t-1}) / (1 - abar_t) beta_t
        return mean, (1 - abar_prev) / (1 - abar) * beta

    def ddim_sigma(self, t: Tensor, t_prev: Tensor, eta: float) -> Tensor:
        """sigma_t of DDIM eq. 16 for a jump t -> t_prev, (B,): eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 -
        abar_t / abar_prev). eta = 1 with t_prev = t - 1 is DDPM's posterior standard deviation."""
        abar, abar_prev = self.alpha_bar(t), self.alpha_bar(t_prev)
        return eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()

    def ddim_step(
        self, eps: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor, eta: float, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One DDIM step x_t -> x_{t_prev} from the noise prediction `eps`; returns (x_{t_prev}, predicted x_0).

        The predicted x_0 is clamped to the data range [-1, 1] and the noise re-derived from it, so the step
        stays consistent with the clamped prediction. `noise` ~ N(0, I) is needed when eta > 0."""
        abar_prev = per_sample(self.alpha_bar(t_prev), x_t)
        # 1. predicted x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (eq. 12, first term; eq. 9 solved for x_0)
        x0 = self.predict_x0(x_t, t, eps).clamp(-1, 1)
        eps = self.predict_eps(x_t, t, x0)
        # 2. sigma_t(eta)   (eq. 16)
        sigma = per_sample(self.ddim_sigma(t, t_prev, eta), x_t)
        # 3. direction pointing to x_t = sqrt(1 - abar_{t-1} - sigma_t^2) eps   (eq. 12, second term)
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        # 4. x_{t-1} = sqrt(abar_{t-1}) x_0 + direction + sigma_t z   (eq. 12)
        x_prev = abar_prev.sqrt() * x0 + direction
        if eta > 0:
            if noise is None:
                raise ValueError(f"a stochastic DDIM step (eta={eta}) needs noise")
            x_prev = x_prev + sigma * noise
        return x_prev, x0

    def ddim_timesteps(self, steps: int) -> Tensor:
        """`steps` timesteps from T-1 down to 0, evenly spaced (all of them when steps == T), then -1 (x_0).

        Starting at T-1 rather than at a multiple of T / steps (diffusers' `leading` spacing) makes the first step
        start from (nearly) pure noise, the distribution the sampler's x_T is drawn from (Lin et al. 2024)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.num_timesteps:
            valid = f"an integer in [1, num_timesteps={self.num_timesteps}]"
            raise ValueError(f"sample_steps must be {valid}, got {steps!r}")
        t = torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
        return torch.cat([t, t.new_full((1,), -1)]).to(self.betas.device)
