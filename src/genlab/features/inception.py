"""InceptionV3 features for FID/IS/KID/P&R: torch-fidelity's `inception-v3-compat`, the standard FID protocol.

The network and its TensorFlow-compatible resize come from torch-fidelity (Obukhov et al., which reproduces
the original TF FID code bit-for-bit in fp32). Images are rounded to uint8 first, grayscale is tiled to
3 channels, and the extraction precision is a setting: `fp32` (TF32 off: the published protocol), `tf32` or
`bf16` (faster, for per-epoch evaluation; how much each moves the metrics is measured in the README).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from genlab.features.base import FeatureExtractor, to_uint8

PRECISIONS = ("fp32", "tf32", "bf16")
FEATURES = ["2048", "logits_unbiased"]  # pool features for FID/KID/P&R, logits without bias for IS


@contextlib.contextmanager
def matmul_precision(precision: str, device_type: str) -> Iterator[None]:
    """Run the body in `precision`; the global TF32 flags are restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class InceptionExtractor(FeatureExtractor):
    """2048-d pool features and 1008 unbiased logits of torch-fidelity's InceptionV3.

    Args:
        weights_path: torch-fidelity's weights file; None downloads it (needs a network).
        precision: fp32 | tf32 | bf16.
    """

    name = "inception-v3-compat"
    feature_dim, num_logits = 2048, 1008

    def __init__(self, weights_path: str | None = None, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if weights_path is not None and not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"eval.weights_path={weights_path}: no such file (fetch it from {URL_INCEPTION_V3})"
            )
        self.precision = precision
        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", FEATURES, weights_path)
        except OSError as err:  # URLError and friends: no network
            raise RuntimeError(
                f"could not download the InceptionV3 weights ({err}). Fetch {URL_INCEPTION_V3} on a machine with a "
                "network and pass eval.weights_path=<that file>"
            ) from err

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = to_uint8(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB by tiling, as torch-fidelity does for 1-channel inputs
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with matmul_precision(self.precision, x.device.type):
            features, logits = self.net(x)
        return features.float(), logits.float()


def random_inception_weights(folder: str | os.PathLike, seed: int = 0) -> str:
    """Save a randomly initialised inception-v3-compat state dict in `folder` and return its path.

    For tests and offline benchmarks: the network is the real architecture, so it does the same work.
    """
    path = Path(folder) / f"inception-random-{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        with (
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
            mock.patch("torch_fidelity.feature_extractor_inceptionv3.torch.load", lambda *a, **k: {}),
        ):
            net = FeatureExtractorInceptionV3("inception-v3-compat", FEATURES, "unused")
        for module in net.modules():  # He init keeps activations at unit scale through 94 conv layers
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        torch.save(net.state_dict(), path)
    return str(path)
