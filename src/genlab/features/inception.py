"""InceptionV3 features for FID/IS/KID/P&R: torch-fidelity's `inception-v3-compat`, the standard FID protocol.

The network and its TensorFlow-1.x-compatible bilinear resize to 299x299 come from torch-fidelity
(Obukhov et al., https://github.com/toshas/torch-fidelity, which reproduces the original TF FID/IS code of
Heusel et al. 2017 and Salimans et al. 2016 in fp32). Images are rounded to uint8 first (torch-fidelity's
input), grayscale is tiled to 3 channels (what torch-fidelity does to grayscale image files, via PIL's
`convert("RGB")`), and the extraction precision is a setting: `fp32` (TF32 off: the published protocol),
`tf32` or `bf16` (faster, for per-epoch evaluation; numbers are only comparable within one precision).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from genlab.features.base import FeatureExtractor, to_uint8
from genlab.features.precision import check_precision, precision_context

NAME = "inception-v3-compat"
FEATURES = ["2048", "logits_unbiased"]  # pool features for FID/KID/P&R, logits without bias for IS (as TF IS)


def load_inception(weights_path: str | os.PathLike | None) -> FeatureExtractorInceptionV3:
    """torch-fidelity's network with the weights at `weights_path`, or downloaded (torch hub cache) for None."""
    if weights_path is None:
        try:
            return FeatureExtractorInceptionV3(NAME, FEATURES)
        except (OSError, RuntimeError) as err:  # URLError, timeouts, a corrupt download
            raise RuntimeError(
                f"could not download the InceptionV3 weights ({type(err).__name__}: {err}). Fetch {URL_INCEPTION_V3} "
                "on a machine with a network and pass eval.extractor.weights_path=<that file>"
            ) from err
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"eval.extractor.weights_path={weights_path}: no such file (fetch it from {URL_INCEPTION_V3})"
        )
    try:
        return FeatureExtractorInceptionV3(NAME, FEATURES, str(path))
    except Exception as err:  # torch.load's and load_state_dict's many error types: all mean "wrong file"
        raise ValueError(
            f"eval.extractor.weights_path={weights_path} is not an {NAME} state dict ({type(err).__name__}: {err}); "
            f"the weights are at {URL_INCEPTION_V3}"
        ) from err


class InceptionExtractor(FeatureExtractor):
    """2048-d pool features and 1008 unbiased logits of torch-fidelity's InceptionV3.

    Args:
        weights_path: torch-fidelity's weights file (`URL_INCEPTION_V3`); None downloads it (needs a network).
        precision: fp32 | tf32 | bf16 (bf16 autocasts on CUDA and on CPU alike).
    """

    name = NAME
    feature_dim, num_logits = 2048, 1008

    def __init__(self, weights_path: str | os.PathLike | None = None, precision: str = "fp32") -> None:
        super().__init__()
        self.precision = check_precision(precision)
        self.net = load_inception(weights_path)
        self.net.requires_grad_(False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = to_uint8(images, channels=(1, 3))
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB with R = G = B
        if x.is_cuda:
            if not self.net.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last):
                # cuDNN's NHWC kernels are the fast ones; a convolution follows its weight's layout
                self.net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with precision_context(self.precision, x.device.type):
            features, logits = self.net(x)
        return features.float(), logits.float()


def inception_extractor(
    datamodule=None,
    cache_dir: str | None = None,
    precision: str = "fp32",
    progress: bool = True,
    weights_path: str | None = None,
) -> InceptionExtractor:
    """The `inception` extractor config's factory (the same network for every dataset: `datamodule`, `cache_dir`
    and `progress` are unused; the weights come from torch hub's cache or `weights_path`)."""
    return InceptionExtractor(weights_path=weights_path, precision=precision)


def random_inception_weights(folder: str | os.PathLike, seed: int = 0) -> str:
    """Save a randomly initialised inception-v3-compat state dict in `folder` and return its path.

    For tests and offline benchmarks: the real architecture (so the same work and the same code path), no
    network. The global RNG is left as it was.
    """
    path = Path(folder) / f"inception-random-{seed}.pth"
    if path.is_file():
        return str(path)
    # Construct without weights: torch-fidelity's downloader and state-dict loading are stubbed out for the call.
    with (
        mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: None),
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda *args, **kwargs: None),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(seed)
        net = FeatureExtractorInceptionV3(NAME, FEATURES)
        for module in net.modules():  # He init keeps activations at unit scale through 94 conv + BN layers
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # atomic: parallel test workers may race here
    with os.fdopen(fd, "wb") as f:
        torch.save(net.state_dict(), f)
    os.replace(tmp, path)
    return str(path)
