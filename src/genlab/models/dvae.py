"""Discrete VAE with Gumbel-softmax codes and an autoregressive transformer prior over the code grid.

Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation" (https://arxiv.org/abs/2102.12092), stage 1, after the
open implementation lucidrains/DALLE-pytorch `DiscreteVAE`: a convolutional encoder maps an image to a grid of
logits over `num_tokens` codes (28x28 -> 7x7, 32x32 -> 8x8 with two stride-2 stages); relaxed one-hot codes are
drawn by Gumbel-softmax (Jang et al. 2017; Maddison et al. 2017) with the temperature annealed exponentially in
the global step; the codes mix rows of a learned codebook into a grid that the decoder turns back into an image.

    loss = E_q[-log p(x|codes)] + kl_weight * KL(q(codes|x) || uniform) + prior_nll      (nats per image)

The decoder is Bernoulli on pixel intensities in [0, 1], as in the VAE: MNIST pixels are nearly binary, and the
reconstruction term is then in nats like the KL term, so `kl_weight` reads the same as the VAE's beta.

The prior is a small GPT (karpathy/nanoGPT: causal self-attention, learned position embeddings) over the h*w
codes in raster order, trained with cross-entropy on the encoder's argmax codes, detached. It is trained in the
same step by adding its loss: its parameters and the dVAE's are disjoint and its input carries no gradient, so
each part gets exactly its own gradient, and one Adam with a parameter group per part is two optimizers in one,
keeping Lightning's automatic optimization. `sample()` draws a code grid from the prior and decodes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import ConfigError, check_positive_int
from genlab.models.base import GenerativeModule, check_labels
from genlab.models.blocks import check_channels, check_image_size, norm


class ResBlock(nn.Module):
    """Pre-activation residual block at a fixed width: x + conv(act(norm(conv(act(norm(x))))))."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), norm(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """Images (B, C, S, S) -> code logits (B, num_tokens, S / 2^len(channels), same)."""

    def __init__(self, image_channels: int, channels: Sequence[int], num_res_blocks: int, num_tokens: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = image_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 4, stride=2, padding=1), norm(ch), nn.SiLU()]
            prev = ch
        layers += [ResBlock(prev) for _ in range(num_res_blocks)]
        layers += [norm(prev), nn.SiLU(), nn.Conv2d(prev, num_tokens, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Code embeddings (B, code_dim, h, w) -> Bernoulli logits (B, C, h * 2^len(channels), same)."""

    def __init__(self, code_dim: int, image_channels: int, channels: Sequence[int], num_res_blocks: int) -> None:
        super().__init__()
        channels = list(channels)[::-1]  # widest first
        layers: list[nn.Module] = [nn.Conv2d(code_dim, channels[0], 1)]
        layers += [ResBlock(channels[0]) for _ in range(num_res_blocks)]
        for ch, nxt in zip(channels, [*channels[1:], channels[-1]], strict=True):
            layers += [norm(ch), nn.SiLU(), nn.ConvTranspose2d(ch, nxt, 4, stride=2, padding=1)]
        layers += [norm(channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], image_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions <= t (nanoGPT), with an optional key/value
    cache so that sampling feeds one token at a time in O(T) instead of re-running the whole prefix."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cache: list[Tensor] | None = None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d/H)
        if cache is not None:  # incremental decoding: the new tokens come after every cached one
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        if t > 1 and k.shape[2] != t:
            raise ValueError(f"with a key/value cache, feed one token at a time, got {t}")
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=t > 1)  # one new token sees all cached
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, H, T, d/H) -> (B, T, d)


class Block(nn.Module):
    """Transformer block (nanoGPT): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, cache: list[Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class CodePrior(nn.Module):
    """Autoregressive prior p(c_1..c_L) = prod_t p(c_t | c_<t) over raster-ordered codes.

    The input is a start token (one per class for a conditional prior) followed by the codes shifted by one,
    so the logits at position t predict code t from the codes before it.
    """

    def __init__(
        self, num_tokens: int, seq_len: int, num_starts: int, dim: int, layers: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.tok_emb = nn.Embedding(num_tokens + num_starts, dim)  # start tokens come after the codes
        self.pos_emb = nn.Parameter(torch.zeros(seq_len, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_tokens)
        self.apply(init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)

    def forward(self, tokens: Tensor, caches: list[list[Tensor]] | None = None, offset: int = 0) -> Tensor:
        """Tokens (B, T) at positions offset..offset+T-1 -> next-code logits (B, T, num_tokens)."""
        x = self.drop(self.tok_emb(tokens) + self.pos_emb[offset : offset + tokens.shape[1]])
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))

    def inputs(self, codes: Tensor, start: Tensor) -> Tensor:
        """Codes (B, L) and start tokens (B,) -> inputs (B, L): start, c_1, ..., c_{L-1}."""
        return torch.cat([(start + self.num_tokens)[:, None], codes[:, :-1]], 1)

    def nll(self, codes: Tensor, start: Tensor) -> Tensor:
        """-log p(codes) in nats, summed over the L codes: (B,)."""
        logits = self(self.inputs(codes, start))
        return F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").sum(1)


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation, as in nanoGPT."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def annealed_temperature(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Gumbel-softmax temperature at a global step: start * (end / start) ** (step / anneal_steps), then end."""
    progress = min(max(step, 0), anneal_steps) / anneal_steps
    return start * (end / start) ** progress


def codebook_stats(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Code counts (num_tokens,) -> (fraction of codes used at least once, perplexity exp(H) of the usage)."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return (counts > 0).double().mean(), entropy.exp()


def rand_unit(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """Uniform noise in (0, 1) on `device`, drawn on the generator's own device (like `base.randn`)."""
    source = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=source).to(device)
    return u.clamp(torch.finfo(u.dtype).tiny, 1.0)


class DVAEModule(GenerativeModule):
    """Discrete VAE (Gumbel-softmax codes, learned codebook, conv encoder/decoder) with a transformer prior.

    Args:
        image_channels: channels of the images (1 grey, 3 colour).
        image_size: side length of the square images; a multiple of 2 ** len(channels).
        num_classes: 0 for an unconditional prior; K > 0 starts the prior's sequence with a class token.
        num_tokens: codebook size K.
        code_dim: width of each codebook vector.
        channels: encoder widths, one stride-2 stage each (the decoder mirrors them); the code grid has side
            image_size / 2 ** len(channels).
        num_res_blocks: residual blocks at the code grid's resolution in the encoder and the decoder.
        temperature_start: Gumbel-softmax temperature at step 0.
        temperature_end: temperature from `anneal_steps` on (exponential decay in between).
        anneal_steps: optimizer steps of the annealing.
        kl_weight: weight of KL(q(codes|x) || uniform) (1 gives the ELBO with a uniform prior).
        straight_through: hard one-hot codes forward, relaxed gradients backward.
        prior_dim: width of the prior transformer.
        prior_layers: transformer blocks of the prior.
        prior_heads: attention heads; must divide prior_dim.
        prior_dropout: dropout in the prior (off in `sample()`).
        lr: Adam learning rate of the encoder, codebook and decoder.
        prior_lr: Adam learning rate of the prior.
    """

    def __init__(
        self,
        image_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 0,
        num_tokens: int = 64,
        code_dim: int = 32,
        channels: Sequence[int] = (32, 64),
        num_res_blocks: int = 1,
        temperature_start: float = 1.0,
        temperature_end: float = 1 / 16,
        anneal_steps: int = 300,
        kl_weight: float = 0.1,
        straight_through: bool = False,
        prior_dim: int = 64,
        prior_layers: int = 4,
        prior_heads: int = 4,
        prior_dropout: float = 0.0,
        lr: float = 1e-3,
        prior_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        check_autoencoder_hparams(
            image_channels, image_size, num_classes, num_tokens, code_dim, channels, num_res_blocks
        )
        check_training_hparams(temperature_start, temperature_end, anneal_steps, kl_weight, lr, prior_lr)
        check_prior_hparams(prior_dim, prior_layers, prior_heads, prior_dropout)
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.grid = image_size // 2 ** len(channels)  # side of the code grid
        self.encoder = Encoder(image_channels, channels, num_res_blocks, num_tokens)
        self.codebook = nn.Embedding(num_tokens, code_dim)
        self.decoder = Decoder(code_dim, image_channels, channels, num_res_blocks)
        self.prior = CodePrior(
            num_tokens, self.grid**2, max(num_classes, 1), prior_dim, prior_layers, prior_heads, prior_dropout
        )
        self._val_counts: Tensor | None = None  # code histogram of the current validation epoch

    @property
    def temperature(self) -> float:
        hp = self.hparams
        return annealed_temperature(self.global_step, hp.temperature_start, hp.temperature_end, hp.anneal_steps)

    def decode(self, one_hot: Tensor) -> Tensor:
        """(Relaxed) one-hot codes (B, K, h, w) -> Bernoulli logits (B, C, S, S)."""
        z = torch.einsum("bkhw,kd->bdhw", one_hot, self.codebook.weight)  # mix of codebook rows per grid cell
        return self.decoder(z)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Code indices (B, h, w) -> the decoder's mean in [0, 1], (B, C, S, S)."""
        one_hot = F.one_hot(codes, self.hparams.num_tokens).permute(0, 3, 1, 2).float()  # (B, h, w, K) -> (B, K, h, w)
        return torch.sigmoid(self.decode(one_hot))

    def starts(self, y: Tensor | None, n: int) -> Tensor:
        """The prior's start token per image: its class, or 0 for an unconditional prior: (n,)."""
        return y if self.num_classes and y is not None else torch.zeros(n, dtype=torch.long, device=self.device)

    def losses(self, x: Tensor, y: Tensor | None, temperature: float | None) -> tuple[dict[str, Tensor], Tensor]:
        """Loss terms (nats per image, batch means) and the argmax codes (B, h*w).

        With `temperature=None` the decoder gets the hard argmax codes (what sampling decodes), else Gumbel-softmax
        codes at that temperature."""
        logits = self.encoder(x)  # (B, K, h, w)
        if temperature is None:
            one_hot = F.one_hot(logits.argmax(1), self.hparams.num_tokens).permute(0, 3, 1, 2).float()
        else:
            one_hot = F.gumbel_softmax(logits, tau=temperature, hard=self.hparams.straight_through, dim=1)
        out = self.decode(one_hot)
        recon = F.binary_cross_entropy_with_logits(out, (x + 1) / 2, reduction="none").flatten(1).sum(1).mean()
        log_q = logits.log_softmax(1)
        kl = (log_q.exp() * (log_q + math.log(self.hparams.num_tokens))).sum(1).flatten(1).sum(1).mean()
        codes = logits.argmax(1).flatten(1)  # (B, h, w) -> (B, h*w) raster order; argmax carries no gradient
        prior_nll = self.prior.nll(codes, self.starts(y, len(x))).mean()
        loss = recon + self.hparams.kl_weight * kl + prior_nll
        return {"loss": loss, "recon": recon, "kl": kl, "prior_nll": prior_nll}, codes

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        temperature = self.temperature
        losses, _ = self.losses(batch[0], batch[1], temperature)
        self.log("train/loss", losses["loss"], prog_bar=True)
        diagnostics = {f"train/{k}": v for k, v in losses.items() if k != "loss"}
        self.log_diagnostics({**diagnostics, "train/temperature": temperature})
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.hparams.num_tokens, dtype=torch.long, device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        losses, codes = self.losses(batch[0], batch[1], temperature=None)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=True, sync_dist=True)
        self._val_counts += torch.bincount(codes.flatten(), minlength=self.hparams.num_tokens)

    def on_validation_epoch_end(self) -> None:
        counts = self._val_counts
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")  # the histogram of the whole validation set
        usage, perplexity = codebook_stats(counts)
        # Identical on every rank after the reduction, so the sync is a mean of equal values.
        self.log_dict({"val/codebook_usage": usage.float(), "val/code_perplexity": perplexity.float()}, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        prior = set(self.prior.parameters())
        autoencoder = [p for p in self.parameters() if p not in prior]
        groups = [{"params": autoencoder, "lr": self.hparams.lr}, {"params": list(prior), "lr": self.hparams.prior_lr}]
        return torch.optim.Adam(groups)

    @torch.no_grad()
    def sample_codes(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n code grids (n, h, w) drawn from the prior at temperature 1, one raster position at a time."""
        check_labels(self.num_classes, n, labels)
        was_training = self.prior.training
        self.prior.eval()  # dropout would draw noise outside `generator`
        try:
            caches: list[list[Tensor]] = [[] for _ in self.prior.blocks]
            token = self.starts(labels, n) + self.hparams.num_tokens
            codes = []
            for t in range(self.grid**2):
                logits = self.prior(token[:, None], caches, offset=t)[:, -1]  # (n, 1, K) -> (n, K)
                u = rand_unit(tuple(logits.shape), self.device, generator)
                token = (logits - (-u.log()).log()).argmax(1)  # Gumbel-max: argmax(logits + Gumbel) ~ softmax
                codes.append(token)
        finally:
            self.prior.train(was_training)
        return torch.stack(codes, 1).view(n, self.grid, self.grid)  # (n, h*w) -> (n, h, w)

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images (n, C, S, S) in [0, 1]: the decoder's mean at code grids drawn from the prior."""
        return self.decode_codes(self.sample_codes(n, labels, generator))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Images (B, C, S, S) in [-1, 1] -> the decoder's mean at the encoder's argmax codes, in [0, 1]."""
        return self.decode_codes(self.encoder(x.to(self.device)).argmax(1))


def check_autoencoder_hparams(
    image_channels: int,
    image_size: int,
    num_classes: int,
    num_tokens: int,
    code_dim: int,
    channels: Sequence[int],
    num_res_blocks: int,
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter of the networks and what is allowed."""
    check_positive_int("image_channels", image_channels)
    check_positive_int("num_classes", num_classes, allow_zero=True)
    check_positive_int("num_tokens", num_tokens)
    if num_tokens < 2:
        raise ConfigError(f"num_tokens must be at least 2, got {num_tokens!r}")
    check_positive_int("code_dim", code_dim)
    check_channels(channels)
    check_image_size(image_size, channels)
    check_positive_int("num_res_blocks", num_res_blocks, allow_zero=True)


def check_training_hparams(
    temperature_start: float, temperature_end: float, anneal_steps: int, kl_weight: float, lr: float, prior_lr: float
) -> None:
    """Raise a ValueError naming the first invalid hyperparameter of the training and what is allowed."""
    if not temperature_start > 0:
        raise ConfigError(f"temperature_start must be > 0, got {temperature_start!r}")
    if not 0 < temperature_end <= temperature_start:
        raise ConfigError(
            f"temperature_end must be in (0, temperature_start={temperature_start}], got {temperature_end!r}"
        )
    check_positive_int("anneal_steps", anneal_steps)
    if not kl_weight >= 0:
        raise ConfigError(f"kl_weight must be >= 0, got {kl_weight!r}")
    for name, value in (("lr", lr), ("prior_lr", prior_lr)):
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")


def check_prior_hparams(prior_dim: int, prior_layers: int, prior_heads: int, prior_dropout: float) -> None:
    """Raise a ValueError naming the first invalid hyperparameter of the prior and what is allowed."""
    check_positive_int("prior_dim", prior_dim)
    check_positive_int("prior_layers", prior_layers)
    check_positive_int("prior_heads", prior_heads)
    if prior_dim % prior_heads:
        raise ConfigError(f"prior_heads={prior_heads} must divide prior_dim={prior_dim}")
    if not 0 <= prior_dropout < 1:
        raise ConfigError(f"prior_dropout must be in [0, 1), got {prior_dropout!r}")
