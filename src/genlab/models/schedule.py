"""The DDPM noise schedule and the samplers' update rules, apart from any network.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (https://arxiv.org/abs/2006.11239): the forward
process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4) and the posterior q(x_{t-1} | x_t, x_0)
(eqs. 6-7). Song et al. 2021, "Denoising Diffusion Implicit Models" (https://arxiv.org/abs/2010.02502): the
generalised step (eq. 12) with sigma_t(eta) (eq. 16), which is DDPM's ancestral step at eta = 1 on all timesteps
and deterministic at eta = 0. Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (https://arxiv.org/abs/2211.01095): the multistep second-order solver DPM-Solver++(2M)
(Algorithm 2) of the same deterministic ODE that DDIM at eta = 0 solves to first order, written in the data
prediction x_0 and in lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t).
The layout follows diffusers' `scheduling_ddpm.py` / `scheduling_ddim.py` / `scheduling_dpmsolver_multistep.py`
(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, thresholding at 1) and Lu's
`dpm_solver_pytorch.py` (its logSNR time steps, skip_type="logSNR", for the discrete-time schedule).

Timesteps are zero-based, t in {0, ..., T-1}: index t is the paper's step t+1, and abar_{-1} = 1 (x_0 itself).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.checks import ConfigError, check_positive_int

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("dpmpp_2m", "ddim")  # DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) | DDIM (Song et al. 2021)
MAX_BETA = 0.999  # Nichol & Dhariwal clip the cosine schedule's betas here: beta near 1 makes the last step singular
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal eq. 17: keeps beta_1 from being vanishingly small
# Lu's `numerical_clip_alpha` and diffusers' `lambda_min_clipped`: below lambda = -5.1 (about the linear schedule's
# lambda_{T-1} at T = 1000) x_t is all but pure noise; the cosine schedule's clipped last beta puts lambda_{T-1} near
# -9, and logSNR steps spread from there would spend several network calls on noise
LAMBDA_MIN = -5.1


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
    the forward process, the DDPM posterior, the DDIM step and the DPM-Solver++(2M) step, and their timesteps.

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

    def snr(self, t: Tensor) -> Tensor:
        """The signal-to-noise ratio abar_t / (1 - abar_t) at timesteps t (B,) in {0, ..., T-1}."""
        abar = self.alpha_bar(t)
        return abar / (1 - abar)

    def velocity(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, "Progressive Distillation", eq. 6 in
        this notation): the v-prediction target for x_t = q_sample(x0, t, noise)."""
        abar = per_sample(self.alpha_bar(t), x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def eps_from_velocity(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """The noise implied by x_t and a v prediction: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
        abar = per_sample(self.alpha_bar(t), x_t)
        return abar.sqrt() * v + (1 - abar).sqrt() * x_t

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

    def half_log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t) = (log abar_t - log(1 - abar_t)) / 2 for timesteps t (B,), float64;
        it grows as t falls, to +inf at t = -1 (x_0)."""
        abar = self.alpha_bar(t).double()
        return (abar.log() - (1 - abar).log()) / 2

    def dpmpp_2m_step(
        self, eps: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor, earlier: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """One DPM-Solver++(2M) step x_t -> x_{t_prev} from the noise prediction `eps`; returns (x_{t_prev},
        predicted x_0). Pass (that x_0, t) back as `earlier` at the next step.

        Second order with `earlier`, the previous network call's x_0 prediction and timestep; first order without it
        (the first step) and into t_prev = -1, where h is infinite and the step returns the x_0 prediction itself
        (diffusers' final step with final_sigmas_type="zero"). The first-order step is DDIM's at eta = 0. As in
        `ddim_step`, the predicted x_0 is clamped to the data range [-1, 1] (diffusers' thresholding with
        sample_max_value=1, Lu's correcting_x0_fn)."""
        abar, abar_prev = self.alpha_bar(t).double(), self.alpha_bar(t_prev).double()
        # 1. the data prediction x_theta(x_t, t) = (x_t - sigma_t eps) / alpha_t
        x0 = self.predict_x0(x_t, t, eps).clamp(-1, 1)
        # 2. h = lambda_{t_prev} - lambda_t > 0, the step in half-log-SNR
        lam = self.half_log_snr(t)
        h = self.half_log_snr(t_prev) - lam
        d = x0
        if earlier is not None and bool((t_prev >= 0).all()):
            x0_earlier, t_earlier = earlier
            # 3. r = h_{i-1} / h_i, D = (1 + 1 / 2r) x_0 - (1 / 2r) x_0,earlier   (Algorithm 2)
            r = (lam - self.half_log_snr(t_earlier)) / h
            d = x0 + per_sample(1 / (2 * r), x_t) * (x0 - x0_earlier)
        # 4. x_{t_prev} = sigma_{t_prev} / sigma_t x_t - alpha_{t_prev} (e^{-h} - 1) D   (Algorithm 2; D = x_0 at
        #    first order). At t_prev = -1: sigma = 0 and e^{-h} = 0, so x_{-1} = D
        sigma_ratio = ((1 - abar_prev) / (1 - abar)).sqrt()
        coef = -abar_prev.sqrt() * torch.expm1(-h)
        return per_sample(sigma_ratio, x_t) * x_t + per_sample(coef, x_t) * d, x0

    def check_steps(self, steps: int) -> None:
        """Raise a ValueError unless `steps` (network calls per sample) is an integer in [1, T]."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.num_timesteps:
            valid = f"an integer in [1, num_timesteps={self.num_timesteps}]"
            raise ValueError(f"sample_steps must be {valid}, got {steps!r}")

    def ddim_timesteps(self, steps: int) -> Tensor:
        """`steps` timesteps from T-1 down to 0, evenly spaced (all of them when steps == T), then -1 (x_0).

        Starting at T-1 rather than at a multiple of T / steps (diffusers' `leading` spacing) makes the first step
        start from (nearly) pure noise, the distribution the sampler's x_T is drawn from (Lin et al. 2024)."""
        self.check_steps(steps)
        t = torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
        return torch.cat([t, t.new_full((1,), -1)]).to(self.betas.device)

    def logsnr_timesteps(self, steps: int) -> Tensor:
        """`steps` timesteps from T-1 down to 0, evenly spaced in lambda_t, then -1 (x_0): DPM-Solver++'s grid.

        Lu et al.'s `logSNR` spacing, their choice for low-resolution images. On DDIM's grid, even in t, the linear
        schedule's lambda jumps by 3.6 between the last two of ten calls (t = 111 -> 0), and the second-order term,
        extrapolated from a step five times shorter, overshoots there (docs/benchmark/sampler.md). Each lambda, from
        max(lambda_{T-1}, LAMBDA_MIN) to lambda_0, is rounded to the nearest trained timestep, and the first is T-1,
        pure noise. Where rounding repeats a timestep (beyond ~25 steps, near t = 0) the repeats are moved apart, so
        that there are `steps` distinct ones: all of them at steps = T."""
        self.check_steps(steps)
        lam = self.half_log_snr(torch.arange(self.num_timesteps, device=self.betas.device)).cpu()  # (T,), falling in t
        targets = torch.linspace(max(lam[-1].item(), LAMBDA_MIN), lam[0].item(), steps, dtype=torch.float64)
        t = (lam[None, :] - targets[:, None]).abs().argmin(1).tolist()  # (steps,) nearest timesteps
        for i in reversed(range(steps - 1)):  # from t = 0 up: each at least one above the next ...
            t[i] = max(t[i], t[i + 1] + 1)
        t[0] = self.num_timesteps - 1
        for i in range(1, steps):  # ... and from T-1 down, at least one below the one before; still t[i] >= steps-1-i
            t[i] = min(t[i], t[i - 1] - 1)
        return torch.tensor([*t, -1], device=self.betas.device)
