"""Switches that pay on a GPU: the channels_last memory format and `torch.compile`, for a model's networks in
training (`genlab.callbacks.Speed`) and for the feature extractor (`eval.channels_last`, `eval.compile`).

bf16 autocast is Lightning's own `trainer.precision=bf16-mixed` in training and `eval.precision=bf16` in extraction;
FID, KID and the k-NN decisions are computed in float64 (or exactly) whatever the features' precision.

`torch.compile` falls back cleanly: where it cannot run (no compiler backend for the device, an unsupported Python)
a one-line warning says so and the module runs eagerly, as it would without the switch.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why `torch.compile` cannot run on `device_type` here (a tiny function is compiled and run once to find out),
    or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    try:
        probe = torch.compile(lambda x: x * 2 + 1, dynamic=False)
        probe(torch.ones(4, device=device_type))
    except Exception as err:  # a missing C++ compiler or Triton raises many kinds of errors
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no message'}"
    return None


def networks(module: nn.Module) -> list[nn.Module]:
    """The direct children of `module` that hold parameters: what compiling a LightningModule's step means (its
    `training_step` calls them, not the module's own `forward`)."""
    return [child for child in module.children() if any(True for _ in child.parameters())]


def speed_up(module: nn.Module, channels_last: bool, compile: bool, what: str, device: torch.device | str) -> None:
    """Convert `module` in place to channels_last (4-d weights) and/or compile its networks (`networks`, or the
    module itself when it has none of its own), logging what was done; `what` names it in the log lines."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
        log.info(f"{what}: channels_last memory format")
    if not compile:
        return
    device_type = torch.device(device).type
    why = compile_unavailable(device_type)
    if why is not None:
        log.warning(f"{what}: torch.compile cannot run on {device_type} here ({why}); running eagerly")
        return
    parts = networks(module) or [module]
    for part in parts:
        part.compile()  # in place: the state_dict keys stay those of the eager module
    log.info(f"{what}: torch.compile of {', '.join(type(p).__name__ for p in parts)} (the first steps compile)")
