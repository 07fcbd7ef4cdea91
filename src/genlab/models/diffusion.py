"""Denoising diffusion: a small UNet trained as a DDPM, sampled with DPM-Solver++ or DDIM, optionally class-conditional.

Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (https://arxiv.org/abs/2006.11239): the network
eps_theta(x_t, t) predicts the noise in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, trained with the simple loss
    loss = E_{x_0, t ~ U{0..T-1}, eps ~ N(0, I)} || eps - eps_theta(x_t, t) ||^2        (eq. 14, mean over pixels)
or, with `prediction=v`, the network predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512) and the loss is on v; `loss_weighting=min_snr` weights each timestep by
min(SNR_t, gamma) / SNR_t (/ (SNR_t + 1) for v; Hang et al. 2023, https://arxiv.org/abs/2303.09556). The config's
recipe (v, cosine schedule, Min-SNR-5, a stride-2 stem) learns digits within CPU minutes:
docs/benchmark/diffusion-recipe.md.
Sampling solves the diffusion ODE from x_T ~ N(0, I) in `sample_steps` network calls: by default with
DPM-Solver++(2M) (Lu et al. 2022, https://arxiv.org/abs/2211.01095), second order, or with DDIM (Song et al. 2021,
https://arxiv.org/abs/2010.02502), first order at eta = 0; DDIM with eta = 1 on all timesteps is DDPM's ancestral
sampler. Conditional models (num_classes > 0) drop the label with probability `cond_drop_prob` in training and sample
with classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598). The noise schedule and the
samplers' update rules live in `genlab.models.schedule`; the UNet follows the DDPM one (residual blocks with GroupNorm
and SiLU, a sinusoidal time embedding, self-attention at the lowest resolution) at a size that trains on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from tqdm.auto import tqdm

from genlab.checks import ConfigError, check_positive_int
from genlab.models.base import GenerativeModule, check_labels, randn, to_unit
from genlab.models.blocks import TimeEmbedding, TimeResBlock, check_channels, norm
from genlab.models.ema import EMA
from genlab.models.schedule import SAMPLERS, SCHEDULES, NoiseSchedule, per_sample

VAL_SEED = 1234  # seeds the validation loss's timesteps and noise: the same draws every epoch
PREDICTIONS = ("eps", "v")  # what the network predicts: the noise (Ho et al. 2020) or v (Salimans & Ho 2022)
LOSS_WEIGHTINGS = ("none", "min_snr")  # the simple loss, or Min-SNR-gamma (Hang et al. 2023)
STEM_STRIDES = (1, 2)


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map (B, C, H, W), added to its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity, like the residual blocks
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # (B, 3C, H, W) -> (B, HW, 3C)
        out = F.scaled_dot_product_attention(*qkv.chunk(3, dim=2))  # (B, HW, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest neighbours, then a 3x3 convolution (no checkerboard artefacts)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): images (B, C, S, S), timesteps (B,) and labels (B,) or None -> noise (B, C, S, S).

    One resolution per entry of `channels` (28 -> 14 -> 7 for three entries; 14 -> 7 -> 4 from a `stem_stride` of
    2), `num_res_blocks` residual blocks on the way down and one more on the way up, each fed the matching skip
    connection. The label embedding (index `num_classes` = no label) is added to the time embedding.
    """

    def __init__(
        self,
        image_channels: int,
        channels: Sequence[int],
        num_res_blocks: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
        num_classes: int = 0,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        emb_dim = 4 * channels[0]
        self.time_embed = TimeEmbedding(channels[0], emb_dim)
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        # stem_stride 2: the first resolution at half size, the pixels of each 2x2 patch as channels (PixelUnshuffle)
        # and the head's 4x channels back into pixels (PixelShuffle), a quarter of the full-size convolutions' cost
        s = stem_stride
        unshuffle = [nn.PixelUnshuffle(s)] if s > 1 else []
        self.stem = nn.Sequential(*unshuffle, nn.Conv2d(image_channels * s * s, channels[0], 3, padding=1))
        skips, prev = [channels[0]], channels[0]  # widths of the feature maps kept for the way up
        self.down = nn.ModuleList()
        for level, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(TimeResBlock(prev, ch, emb_dim, dropout))
                skips.append(prev := ch)
            if level < len(channels) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = TimeResBlock(prev, prev, emb_dim, dropout)
        self.attention = SelfAttention(prev) if attention else nn.Identity()
        self.mid2 = TimeResBlock(prev, prev, emb_dim, dropout)
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(channels))):
            for _ in range(num_res_blocks + 1):
                self.up.append(TimeResBlock(prev + skips.pop(), ch, emb_dim, dropout))
                prev = ch
            if level > 0:
                self.up.append(Upsample(ch))
        out = nn.Conv2d(prev, image_channels * s * s, 3, padding=1)
        nn.init.zeros_(out.weight)  # predicts eps = 0 at first: the loss starts at E[eps^2] = 1
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(norm(prev), nn.SiLU(), out, *([nn.PixelShuffle(s)] if s > 1 else []))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embed(t)  # (B, emb_dim)
        if self.class_embed is not None:
            null = self.class_embed.num_embeddings - 1
            emb = emb + self.class_embed(y if y is not None else torch.full_like(t, null))
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, TimeResBlock) else layer(h)
            skips.append(h)
        h = self.mid2(self.attention(self.mid1(h, emb)), emb)
        for layer in self.up:
            # (B, C, H, W) and the skip (B, C', H, W) -> (B, C + C', H, W)
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, TimeResBlock) else layer(h)
        return self.head(h)


class DiffusionModule(GenerativeModule):
    """DDPM training with epsilon or v prediction, DPM-Solver++ or DDIM sampling, EMA weights and optional
    classifier-free guidance. The constructor's defaults are the former recipe (eps, the plain loss, a stride-1 stem),
    so that checkpoints saved before those settings existed load as they were trained; configs/model/diffusion.yaml
    sets the current one.

    Args:
        image_channels: channels of the images (1 grey, 3 colour).
        image_size: side length; a multiple of 2 ** (len(channels) - 1).
        num_classes: 0 for an unconditional model, else the number of labels it is conditioned on.
        channels: UNet widths, one resolution each (the first at full size).
        num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attention: self-attention at the lowest resolution.
        dropout: dropout inside the residual blocks.
        num_timesteps: T, the number of diffusion steps.
        schedule: `linear` (Ho et al.) or `cosine` (Nichol & Dhariwal 2021).
        prediction: what the network predicts, `eps` (the noise, Ho et al.) or `v` (sqrt(abar) eps - sqrt(1 - abar)
            x_0, Salimans & Ho 2022: well scaled at every t, and with the cosine schedule the usual pairing).
        loss_weighting: `none` (the simple loss) or `min_snr`: each timestep's loss weighted by
            min(SNR_t, gamma) / SNR_t for eps (/ (SNR_t + 1) for v), Hang et al. 2023, "Efficient Diffusion
            Training via Min-SNR Weighting Strategy": the low-noise steps stop dominating the gradient.
        min_snr_gamma: gamma of `min_snr` (the paper's 5).
        stem_stride: 1, or 2 for a UNet whose first resolution is half the image size (see `UNet`).
        sampler: `dpmpp_2m` (DPM-Solver++(2M), Lu et al. 2022) or `ddim` (Song et al. 2021); attribute `sampler`.
        sample_steps: network calls per sample, one per solver step (at most T); attribute `sample_steps`. A progress
            bar counts them: the attribute `sample_progress` is None (shown on a terminal only), True or False; the
            evaluation sets it to its own `progress` while it samples.
        eta: DDIM's noise scale: 0 deterministic given the initial noise, 1 DDPM-like (attribute `eta`). DDIM only:
            DPM-Solver++(2M) is deterministic.
        cond_drop_prob: probability that a training label is replaced by the null label (conditional models).
        guidance_scale: classifier-free guidance s: eps_u + s (eps_c - eps_u); 1 = plain conditional, 0 =
            unconditional (attribute `guidance_scale`).
        ema_decay: decay of the exponential moving average of the weights that validation and sampling use; 0 = off.
        ema_start: optimizer step at which the average starts (as a copy of the weights then).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
    """

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 0,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
        num_timesteps: int = 1000,
        schedule: str = "linear",
        prediction: str = "eps",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        stem_stride: int = 1,
        sampler: str = "dpmpp_2m",
        sample_steps: int = 15,
        eta: float = 0.0,
        cond_drop_prob: float = 0.1,
        guidance_scale: float = 1.0,
        ema_decay: float = 0.99,
        ema_start: int = 50,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_hparams(**self.hparams)  # every constructor argument, by name
        self.num_classes = num_classes
        try:
            self.unet = UNet(image_channels, channels, num_res_blocks, attention, dropout, num_classes, stem_stride)
        except ValueError as err:  # a width on the way up (a stage's plus its skip's) that GroupNorm cannot split
            raise ConfigError(f"channels={list(channels)} give a width that GroupNorm cannot split: {err}") from None
        self.schedule = NoiseSchedule(num_timesteps, schedule)
        # what sample() uses unless told otherwise: change them to evaluate with another sampler
        self.sampler, self.sample_steps, self.eta, self.guidance_scale = sampler, sample_steps, eta, guidance_scale
        self.sample_progress: bool | None = None  # the bar over the solver steps: None = on a terminal only

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The predicted noise eps_theta(x_t, t, y), (B, C, S, S); y = None is the null label."""
        out = self.unet(x_t, t, y)
        return self.schedule.eps_from_velocity(x_t, t, out) if self.hparams.prediction == "v" else out

    def eps_mse(self, x: Tensor, y: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        """The training loss at random t and eps, drawn from `generator` when one is given: the simple loss (Ho et
        al. eq. 14, the mean squared error of the prediction, eps or v) with each sample's timestep weighted by
        `loss_weighting`."""
        source = generator.device if generator is not None else x.device
        t = torch.randint(0, self.schedule.num_timesteps, (len(x),), generator=generator, device=source).to(x.device)
        noise = randn(tuple(x.shape), x.device, generator)
        v = self.hparams.prediction == "v"
        target = self.schedule.velocity(x, t, noise) if v else noise
        error = (self.unet(self.schedule.q_sample(x, t, noise), t, y) - target).square()
        if self.hparams.loss_weighting == "none":
            return error.mean()
        snr = self.schedule.snr(t)
        weight = snr.clamp(max=self.hparams.min_snr_gamma) / (snr + 1 if v else snr)
        return (per_sample(weight, error) * error).mean()

    def drop_labels(self, y: Tensor) -> Tensor:
        """Labels with each replaced by the null label (index num_classes) with probability cond_drop_prob, so the
        same network also learns the unconditional model that guidance needs."""
        drop = torch.rand(y.shape, device=y.device) < self.hparams.cond_drop_prob
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.eps_mse(x, self.drop_labels(y) if self.num_classes else None)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        # the same t and noise for this batch every epoch, so that the losses of two epochs compare
        generator = torch.Generator().manual_seed(VAL_SEED + batch_idx + 1_000_003 * self.global_rank)
        loss = self.eps_mse(x, y if self.num_classes else None, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def configure_callbacks(self) -> list[Callback]:
        if self.hparams.ema_decay == 0:
            return []
        # use_buffers=False: the only buffers are the schedule's constants, which averaging would only perturb by
        # rounding. The callback swaps the average in for validation (so grids and eval/fid score it) and saves it.
        return [EMA(decay=self.hparams.ema_decay, start_step=self.hparams.ema_start, use_buffers=False)]

    def guided_eps(self, x: Tensor, t: Tensor, labels: Tensor | None, guidance_scale: float) -> Tensor:
        """The noise prediction that sampling follows: with labels, Ho & Salimans' eq. 6 written with s = 1 + w,
        eps_u + s (eps_c - eps_u), so that s = 0 is the unconditional and s = 1 the conditional prediction."""
        if labels is None or guidance_scale == 1:
            return self(x, t, labels)
        null = torch.full_like(labels, self.num_classes)
        if guidance_scale == 0:
            return self(x, t, null)
        # one batch of 2B: (x, labels) then (x, null)
        eps_cond, eps_uncond = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def denoise_step(
        self,
        x: Tensor,
        t: Tensor,
        t_prev: Tensor,
        labels: Tensor | None,
        eta: float,
        guidance_scale: float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DDIM step x_t -> x_{t_prev} for the batch x (B, C, S, S); t and t_prev are (B,)."""
        eps = self.guided_eps(x, t, labels, guidance_scale)
        noise = randn(tuple(x.shape), x.device, generator) if eta > 0 else None
        return self.schedule.ddim_step(eps, x, t, t_prev, eta, noise)[0]

    def ddim(
        self,
        x: Tensor,
        pairs: Iterable[tuple[Tensor, Tensor]],
        labels: Tensor | None,
        eta: float,
        guidance_scale: float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x_T (B, C, S, S) -> x_0 by DDIM over `pairs` of scalar timesteps (t, t_prev), one network call each."""
        for t, t_prev in pairs:
            x = self.denoise_step(x, t.expand(len(x)), t_prev.expand(len(x)), labels, eta, guidance_scale, generator)
        return x

    def dpmpp_2m(
        self, x: Tensor, pairs: Iterable[tuple[Tensor, Tensor]], labels: Tensor | None, guidance_scale: float
    ) -> Tensor:
        """x_T (B, C, S, S) -> x_0 by DPM-Solver++(2M) over `pairs` of scalar timesteps (t, t_prev): one network
        call each, whose x_0 prediction the next step reuses for its second-order term."""
        earlier = None  # (x_0 prediction, t) of the previous network call
        for t, t_prev in pairs:
            t, t_prev = t.expand(len(x)), t_prev.expand(len(x))
            x, x0 = self.schedule.dpmpp_2m_step(self.guided_eps(x, t, labels, guidance_scale), x, t, t_prev, earlier)
            earlier = (x0, t)
        return x

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """n images (n, C, S, S) in [0, 1] from x_T ~ N(0, I) by `sampler` in `steps` network calls (default: the
        attributes sampler, sample_steps, eta and guidance_scale). All noise comes from `generator`."""
        check_labels(self.num_classes, n, labels)
        sampler = self.sampler if sampler is None else sampler
        steps = self.sample_steps if steps is None else steps
        eta = self.eta if eta is None else eta
        guidance_scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check_sampler(sampler, eta, guidance_scale)
        # checks steps; DDIM's are even in t, DPM-Solver++'s even in log-SNR (see NoiseSchedule.logsnr_timesteps)
        grid = self.schedule.ddim_timesteps if sampler == "ddim" else self.schedule.logsnr_timesteps
        timesteps = grid(steps)
        labels = labels.to(self.device) if labels is not None else None
        size = self.hparams.image_size
        x = randn((n, self.hparams.image_channels, size, size), self.device, generator)
        disable = None if self.sample_progress is None else not self.sample_progress  # tqdm: None = if a terminal
        pairs = zip(timesteps[:-1], timesteps[1:], strict=True)
        bar = tqdm(pairs, total=steps, desc=sampler, unit="step", leave=False, disable=disable)
        if sampler == "ddim":
            return to_unit(self.ddim(x, bar, labels, eta, guidance_scale, generator))
        return to_unit(self.dpmpp_2m(x, bar, labels, guidance_scale))


def check_sampler(sampler: str, eta: float, guidance_scale: float) -> None:
    """Raise a ConfigError unless sampler is one of SAMPLERS, eta is in [0, 1] and guidance_scale >= 0."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if not 0 <= eta <= 1:
        raise ConfigError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
    if not guidance_scale >= 0:
        raise ConfigError(f"guidance_scale must be >= 0 (0 = unconditional, 1 = conditional), got {guidance_scale!r}")


def check_hparams(
    image_channels: int,
    image_size: int,
    num_classes: int,
    channels: Sequence[int],
    num_res_blocks: int,
    attention: bool,
    dropout: float,
    num_timesteps: int,
    schedule: str,
    prediction: str,
    loss_weighting: str,
    min_snr_gamma: float,
    stem_stride: int,
    sampler: str,
    sample_steps: int,
    eta: float,
    cond_drop_prob: float,
    guidance_scale: float,
    ema_decay: float,
    ema_start: int,
    lr: float,
    weight_decay: float,
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter and what is allowed."""
    check_positive_int("image_channels", image_channels)
    check_positive_int("num_classes", num_classes, allow_zero=True)
    check_channels(channels)
    if stem_stride not in STEM_STRIDES:
        raise ConfigError(f"stem_stride must be one of {list(STEM_STRIDES)}, got {stem_stride!r}")
    halvings = len(channels) - 1 + (stem_stride == 2)
    factor = 2**halvings
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < factor or image_size % factor:
        raise ConfigError(
            f"image_size={image_size!r} cannot be handled: the UNet halves it {halvings} times "
            f"(channels={list(channels)}, stem_stride={stem_stride}), so it must be a positive multiple of {factor}"
        )
    check_positive_int("num_res_blocks", num_res_blocks)
    if not isinstance(attention, bool):
        raise ConfigError(f"attention must be true or false, got {attention!r}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    check_positive_int("num_timesteps", num_timesteps)
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction must be one of {list(PREDICTIONS)}, got {prediction!r}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ConfigError(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
    if not min_snr_gamma > 0:
        raise ConfigError(f"min_snr_gamma must be > 0, got {min_snr_gamma!r}")
    check_positive_int("sample_steps", sample_steps)
    if sample_steps > num_timesteps:
        raise ConfigError(f"sample_steps must be at most num_timesteps={num_timesteps}, got {sample_steps}")
    check_sampler(sampler, eta, guidance_scale)
    if not 0 <= cond_drop_prob < 1:
        raise ConfigError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob!r}")
    if not 0 <= ema_decay < 1:
        raise ConfigError(f"ema_decay must be in [0, 1) (0 = no EMA), got {ema_decay!r}")
    check_positive_int("ema_start", ema_start, allow_zero=True)
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
