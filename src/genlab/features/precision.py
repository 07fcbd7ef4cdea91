"""The arithmetic an extractor runs in: fp32 (TF32 off: the published protocol), tf32 or bf16 (faster, for
per-epoch evaluation on a GPU; numbers are only comparable within one precision, so every number is recorded
with the precision that produced it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from genlab.checks import ConfigError

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    """`precision`, or a ValueError listing the valid ones."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device_type: str) -> Iterator[None]:
    """Run the body in `precision`; the global TF32 settings are restored afterwards, even on error.

    fp32 must switch TF32 off explicitly: PyTorch allows it for cuDNN convolutions by default.
    """
    import torch  # here, so that the config check reads PRECISIONS without the framework's import time

    check_precision(precision)
    # the matmul precision string, not allow_tf32: restoring "medium" through a bool would give "high"
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn
