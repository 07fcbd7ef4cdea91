"""Feature extractors and the on-disk cache. No test downloads anything: inception uses random weights."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from genlab.data import MNISTDataModule
from genlab.features import build_extractor, load_or_train_domain_extractor, to_uint8
from genlab.features.cache import atomic_save, checked_load, file_lock
from genlab.features.inception import InceptionExtractor, random_inception_weights


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    return random_inception_weights(tmp_path_factory.mktemp("inception"))


def test_to_uint8_rounds_and_rejects_bad_images() -> None:
    x = torch.tensor([0.0, 0.51 / 255, 0.49 / 255, 1.51 / 255, 254.6 / 255, 1.0]).view(1, 1, 1, 6)
    assert to_uint8(x).flatten().tolist() == [0, 1, 0, 2, 255, 255]  # rounded, not truncated
    with pytest.raises(ValueError, match="NaN or inf"):
        to_uint8(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"floats in \[0, 1\], got values in \[-1, 1\]"):
        to_uint8(torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2))
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\) with C in \[1, 3\], got \(2, 2, 4, 4\)"):
        to_uint8(torch.rand(2, 2, 4, 4))


def test_unknown_extractor_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown extractor 'clip'; valid: \['inception', 'domain', 'random'\]"):
        build_extractor("clip")


def test_random_projection_is_deterministic() -> None:
    x = torch.rand(4, 1, 8, 8)
    a = build_extractor("random", image_shape=(1, 8, 8), dim=16, seed=0)
    b = build_extractor("random", image_shape=(1, 8, 8), dim=16, seed=0)
    c = build_extractor("random", image_shape=(1, 8, 8), dim=16, seed=1)
    fa, la = a(x)
    assert fa.shape == (4, 16) and la.shape == (4, 10)
    assert torch.equal(fa, b(x)[0]) and not torch.equal(fa, c(x)[0])
    assert a.weights_hash() == b.weights_hash() != c.weights_hash()


def test_inception_matches_torch_fidelity_and_tiles_grayscale(inception_weights: str) -> None:
    extractor = InceptionExtractor(inception_weights).eval()
    grey = torch.rand(2, 1, 32, 32)
    features, logits = extractor(grey)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008) and features.dtype == torch.float32
    tiled = extractor(grey.expand(-1, 3, -1, -1))[0]
    assert torch.equal(features, tiled)
    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], inception_weights)
    ref_features, ref_logits = reference(to_uint8(grey).expand(-1, 3, -1, -1))
    torch.testing.assert_close(features, ref_features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    assert features.std() > 0.01  # the random weights keep a usable scale


def test_inception_precision_is_checked_and_fp32_restores_flags(inception_weights: str) -> None:
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'tf32', 'bf16'\], got 'fp16'"):
        InceptionExtractor(inception_weights, precision="fp16")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        InceptionExtractor(inception_weights, precision="fp32")(torch.rand(1, 3, 16, 16))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_missing_inception_weights_say_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="eval.weights_path=.*no such file.*weights-inception-2015-12-05"):
        InceptionExtractor(str(tmp_path / "nope.pth"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inception_on_gpu_matches_cpu(inception_weights: str) -> None:
    x = torch.rand(4, 3, 32, 32)
    cpu = InceptionExtractor(inception_weights)(x)[0]
    for precision, tol in (("fp32", 1e-4), ("tf32", 2e-2), ("bf16", 5e-2)):
        gpu = InceptionExtractor(inception_weights, precision).cuda()(x.cuda())[0].cpu()
        assert (gpu - cpu).norm() / cpu.norm() < tol, precision


@pytest.mark.slow
def test_domain_classifier_trains_caches_and_recovers_from_corruption(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path), source="bundled")
    first = load_or_train_domain_extractor(dm, tmp_path / "cache", progress=False)
    assert first.trained and first.val_accuracy >= 0.95  # held-out, on the 500 validation digits
    (cached,) = (tmp_path / "cache").glob("domain-mnist-*.pt")
    second = load_or_train_domain_extractor(dm, tmp_path / "cache", progress=False)
    assert not second.trained and second.weights_hash() == first.weights_hash()
    x = dm.val_set.images[:8].float() / 255
    assert torch.equal(first(x)[0], second(x)[0]) and first(x)[0].shape == (8, 128)
    cached.write_bytes(cached.read_bytes()[:1000])  # truncate
    third = load_or_train_domain_extractor(dm, tmp_path / "cache", epochs=1, progress=False)
    assert third.trained


def test_cache_round_trip_stale_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    atomic_save({"x": torch.arange(5), "name": "a"}, path, {"v": 1})
    loaded = checked_load(path, {"v": 1})
    assert torch.equal(loaded["x"], torch.arange(5)) and loaded["name"] == "a"
    assert checked_load(path, {"v": 2}) is None  # stale
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert checked_load(path, {"v": 1}) is None  # truncated
    path.write_bytes(data[:-10] + b"0123456789")
    assert checked_load(path, {"v": 1}) is None  # corrupt
    assert checked_load(tmp_path / "missing.pt", {"v": 1}) is None
    assert not list(tmp_path.glob(".*.tmp"))


def _load_or_compute(path: str, counter: str) -> int:
    with file_lock(path):
        found = checked_load(path, {"k": 1})
        if found is None:
            with open(counter, "a") as f:
                f.write("computed\n")
            found = {"value": torch.tensor(42)}
            atomic_save(found, path, {"k": 1})
    return int(found["value"])


def test_concurrent_processes_compute_once(tmp_path: Path) -> None:
    path, counter = str(tmp_path / "shared.pt"), str(tmp_path / "count.txt")
    with mp.get_context("fork").Pool(4) as pool:
        values = pool.starmap(_load_or_compute, [(path, counter)] * 8)
    assert values == [42] * 8
    assert Path(counter).read_text().count("computed") == 1
