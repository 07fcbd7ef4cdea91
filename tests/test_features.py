"""genlab.features: the extractors (shapes, quantisation, determinism, torch-fidelity equality, precision), the
domain classifier (accuracy, caching, corruption) and the multi-process cache. Nothing here touches the network:
InceptionV3 gets a randomly initialised weights file of the real architecture, and torch-fidelity's downloader
is stubbed out wherever a test builds an extractor without one."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import THREADS
from PIL import Image
from torch import Tensor, nn
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
from torchvision.utils import save_image

from genlab.data import MNISTDataModule, SyntheticDataModule
from genlab.features import (
    RandomProjectionExtractor,
    atomic_save,
    checked_load,
    load_or_compute,
    load_or_train_domain_extractor,
    to_uint8,
)
from genlab.features.inception import (
    URL_INCEPTION_V3,
    InceptionExtractor,
    inception_extractor,
    random_inception_weights,
)


def images(b: int, c: int, s: int, seed: int = 0) -> Tensor:
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    return random_inception_weights(tmp_path_factory.mktemp("inception"))


@pytest.fixture(scope="module")
def inception(inception_weights: str) -> InceptionExtractor:
    return InceptionExtractor(inception_weights)


@pytest.fixture(scope="module")
def grey_outputs(inception: InceptionExtractor) -> tuple[Tensor, Tensor, Tensor]:
    """(grey images (2, 1, 32, 32), their features, their logits): one CPU forward (~3 s), shared."""
    grey = images(2, 1, 32)
    torch.set_num_threads(THREADS)  # module fixtures run before conftest's autouse one
    return grey, *inception(grey)


# ---------------------------------------------------------------------------------------------- to_uint8


def test_to_uint8_rounds_half_up_not_truncating_nor_to_even() -> None:
    levels = torch.arange(256)
    x = (levels.float() / 255).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(x).flatten(), levels.to(torch.uint8))  # k / 255 -> k for every level
    below, above = (levels[:-1] + 0.4) / 255, (levels[:-1] + 0.6) / 255
    assert torch.equal(to_uint8(below.view(1, 1, 1, -1)).flatten().long(), levels[:-1])
    assert torch.equal(to_uint8(above.view(1, 1, 1, -1)).flatten().long(), levels[:-1] + 1)  # truncation gives k
    halves = torch.tensor([0.5, 1.5, 2.5, 254.5]) / 255  # x * 255 is exactly k + 0.5 in float32
    assert to_uint8(halves.view(1, 1, 1, 4)).flatten().tolist() == [1, 2, 3, 255]  # torch.round: [0, 2, 2, 254]
    assert to_uint8(torch.tensor([1 + 5e-5, -5e-5]).view(1, 1, 1, 2)).flatten().tolist() == [255, 0]  # tolerance
    u8 = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert to_uint8(u8) is u8


def test_to_uint8_equals_the_pixels_save_image_writes(tmp_path: Path) -> None:
    x = images(1, 3, 24)
    x[..., 0, :8] = torch.arange(8) / 255 + 0.5 / 255  # exact halves too
    save_image(x, tmp_path / "x.png")
    png = torch.from_numpy(np.array(Image.open(tmp_path / "x.png"))).permute(2, 0, 1)
    assert torch.equal(to_uint8(x)[0], png)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.full((1, 1, 2, 2), float("nan")), "NaN or inf"),
        (torch.full((1, 1, 2, 2), float("inf")), "NaN or inf"),
        (torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2), r"floats in \[0, 1\], got values in \[-1, 1\]"),
        (torch.tensor([0.0, 1.01]).view(1, 1, 1, 2), r"floats in \[0, 1\], got values in \[0, 1.01\]"),
        (torch.rand(2, 2, 4, 4), r"shape \(B, C, H, W\) with C in \[1, 3\], got \(2, 2, 4, 4\)"),
        (torch.rand(1, 4, 4), r"shape \(B, C, H, W\) with C in \[1, 3\], got \(1, 4, 4\)"),
        (torch.ones(1, 1, 2, 2, dtype=torch.long), r"floats in \[0, 1\] or uint8, got dtype torch.int64"),
    ],
)
def test_to_uint8_rejects_bad_images_naming_the_problem(bad: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_uint8(bad)


# ---------------------------------------------------------------------------------------------- factory, random


def test_bad_precision_lists_the_valid_ones(inception_weights: str) -> None:
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'tf32', 'bf16'\], got 'fp16'"):
        inception_extractor(weights_path=inception_weights, precision="fp16")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["domain", "inception", "random"])
def test_every_extractor_config_builds_through_its_factory(name: str, tmp_path: Path, inception_weights: str) -> None:
    """Extractors are configs with `_target_`: each one, instantiated as the evaluator does, gives an extractor."""
    from conftest import compose_train
    from hydra.utils import instantiate

    cfg = compose_train(tmp_path, "eval=default", f"eval/extractor={name}", "data=synthetic", "data.num_samples=64")
    node = cfg.eval.extractor
    if name == "inception":
        node.weights_path = inception_weights
    if name == "domain":
        node.epochs = 1
    dm = instantiate(cfg.data)
    factory = instantiate(node)
    # tf32: a setting that reaches the extractor and costs nothing on a CPU (bf16 is emulated: 5 s for InceptionV3)
    extractor = factory(datamodule=dm, cache_dir=str(tmp_path / "cache"), precision="tf32", progress=False)
    features, _ = extractor(images(2, 1, 28))
    assert features.shape == (2, extractor.feature_dim) and extractor.precision == "tf32"
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'tf32', 'bf16'\], got 'fp16'"):
        factory(datamodule=dm, cache_dir=str(tmp_path / "cache"), precision="fp16", progress=False)


def test_random_projection_shapes_and_determinism() -> None:
    x = images(4, 1, 8)
    a = RandomProjectionExtractor(image_shape=(1, 8, 8), dim=16, seed=0)
    b = RandomProjectionExtractor(image_shape=(1, 8, 8), dim=16, seed=0)
    c = RandomProjectionExtractor(image_shape=(1, 8, 8), dim=16, seed=1)
    features, logits = a(x)
    assert features.shape == (4, 16) and logits.shape == (4, 10) and (a.feature_dim, a.num_logits) == (16, 10)
    assert features.dtype == logits.dtype == torch.float32
    assert torch.equal(features, b(x)[0]) and torch.equal(logits, b(x)[1]) and not torch.equal(features, c(x)[0])
    assert a.weights_hash() == b.weights_hash() != c.weights_hash()
    b.load_state_dict(c.state_dict())  # new weights: the cached hash must not survive
    assert b.weights_hash() == c.weights_hash()
    assert RandomProjectionExtractor((1, 8, 8), num_logits=0)(x)[1] is None
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\), got \(4, 1, 9, 9\)"):
        a(images(4, 1, 9))


@pytest.mark.slow
def test_weights_hashes_are_the_same_in_another_process(inception: InceptionExtractor, inception_weights: str) -> None:
    code = (
        "from genlab.features import RandomProjectionExtractor as R\n"
        "from genlab.features.inception import InceptionExtractor as I\n"
        f"print(R((3, 5, 5), seed=7).weights_hash(), I({inception_weights!r}).weights_hash())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == [RandomProjectionExtractor((3, 5, 5), seed=7).weights_hash(), inception.weights_hash()]


# ---------------------------------------------------------------------------------------------- inception


@pytest.mark.slow
def test_inception_shapes_dtypes_and_scale(inception: InceptionExtractor, grey_outputs) -> None:
    _, features, logits = grey_outputs
    assert inception.name == "inception-v3-compat" and (inception.feature_dim, inception.num_logits) == (2048, 1008)
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert features.dtype == logits.dtype == torch.float32
    assert features.std() > 0.01 and torch.isfinite(logits).all()  # the random weights keep a usable scale
    assert not torch.allclose(features[0], features[1])  # and tell images apart


@pytest.mark.slow
def test_inception_tiles_grey_and_equals_torch_fidelity(inception: InceptionExtractor, inception_weights, grey_outputs):
    grey, features, logits = grey_outputs
    tiled = grey.expand(-1, 3, -1, -1).contiguous()
    assert torch.equal(inception(tiled)[0], features)  # grey -> R = G = B, nothing else
    reference = tf_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], inception_weights
    )
    ref_features, ref_logits = reference(to_uint8(tiled))  # torch-fidelity's own input: uint8 RGB
    assert torch.equal(features, ref_features) and torch.equal(logits, ref_logits)


class FlagRecorder(nn.Module):
    """Stands in for the network: records the TF32 flags and autocast state it runs under."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.seen = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16,
        )
        return x.float().mean((2, 3)).repeat(1, 683)[:, :2048], x.float().mean((2, 3))


@pytest.mark.parametrize("before", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize(
    ("precision", "inside"),
    [("fp32", (False, False, False)), ("tf32", (True, True, False)), ("bf16", (False, False, True))],
)
def test_precision_sets_the_flags_inside_and_restores_them(
    inception: InceptionExtractor, precision: str, inside: tuple, before: tuple
) -> None:
    # swapped by hand: pytest's monkeypatch deletes an nn.Module child on undo (it is not in the instance __dict__)
    network, recorder = inception.net, FlagRecorder()
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        inception.net, inception.precision = recorder, precision
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        features, logits = inception(images(2, 1, 8))
        assert recorder.seen == inside
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        assert features.dtype == logits.dtype == torch.float32
    finally:
        inception.net, inception.precision = network, "fp32"
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


@pytest.mark.slow
def test_inception_bf16_on_cpu_stays_close_to_fp32(inception: InceptionExtractor, grey_outputs) -> None:
    grey, features, _ = grey_outputs
    try:
        inception.precision = "bf16"  # what InceptionExtractor(weights, precision="bf16") sets
        bf16 = inception(grey)[0]
    finally:
        inception.precision = "fp32"
    assert bf16.dtype == torch.float32 and 0 < (bf16 - features).norm() / features.norm() < 0.05


def test_extractors_stay_in_eval_mode(inception: InceptionExtractor) -> None:
    inception.train()
    assert not inception.training and not any(m.training for m in inception.net.modules())


def test_inception_weights_errors_say_where_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=f"eval.extractor.weights_path=.*no such file.*{URL_INCEPTION_V3}"):
        InceptionExtractor(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match=f"junk.pth is not an inception-v3-compat state dict.*{URL_INCEPTION_V3}"):
        InceptionExtractor(tmp_path / "junk.pth")

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=f"Fetch {URL_INCEPTION_V3} .* pass eval.extractor.weights_path=<that file>"):
        InceptionExtractor(None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inception_on_gpu_matches_cpu_and_runs_tf32_and_bf16(inception_weights: str, grey_outputs) -> None:
    grey, cpu, _ = grey_outputs
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for precision, tol in (("fp32", 1e-4), ("tf32", 2e-2), ("bf16", 5e-2)):
        extractor = InceptionExtractor(inception_weights, precision).cuda()
        features, logits = extractor(grey.cuda())
        assert features.dtype == logits.dtype == torch.float32 and torch.isfinite(logits).all()
        assert (features.cpu() - cpu).norm() / cpu.norm() < tol, precision
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


# ---------------------------------------------------------------------------------------------- domain classifier


@pytest.mark.slow
def test_domain_classifier_reaches_95_percent_and_loads_from_cache(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path / "data"), source="bundled")
    rng = torch.get_rng_state()
    first = load_or_train_domain_extractor(dm, tmp_path / "cache", progress=False)
    assert torch.equal(torch.get_rng_state(), rng)  # training left the global RNG alone
    assert first.trained and first.val_accuracy >= 0.95  # held out: the 500 validation digits
    (cached,) = (tmp_path / "cache").glob("domain-mnist-1x28x28-*.pt")
    mtime = cached.stat().st_mtime_ns
    second = load_or_train_domain_extractor(dm, tmp_path / "cache", progress=False)
    assert not second.trained and cached.stat().st_mtime_ns == mtime
    assert second.val_accuracy == first.val_accuracy and second.weights_hash() == first.weights_hash()
    x = dm.val_set.images[:8].float() / 255
    features, logits = second(x)
    assert features.shape == (8, 128) and logits.shape == (8, 10) and features.dtype == torch.float32
    assert torch.equal(features, first(x)[0])
    assert (logits.argmax(1) == dm.val_set.labels[:8]).float().mean() >= 0.75


def test_domain_cache_corruption_is_detected_and_retrained(tmp_path: Path, caplog) -> None:
    dm = SyntheticDataModule(num_samples=64, channels=3, image_size=32)
    first = load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False)
    assert first.trained and first.name == "domain-synthetic" and first.num_logits == 4
    assert [t.shape for t in first(images(2, 3, 32))] == [(2, 128), (2, 4)]
    with pytest.raises(ValueError, match=r"domain-synthetic takes images of shape \(B, 3, 32, 32\)"):
        first(images(2, 1, 28))
    (cached,) = tmp_path.glob("domain-synthetic-3x32x32-*.pt")
    assert not load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False).trained
    cached.write_bytes(cached.read_bytes()[:-100])  # truncated: same key, bad file
    with caplog.at_level(logging.WARNING, logger="genlab.features.cache"):
        third = load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False)
    assert third.trained and "truncated or corrupt" in caplog.text
    assert not load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False).trained  # rewritten whole


def test_domain_cache_is_keyed_on_the_recipe(tmp_path: Path) -> None:
    """Another learning rate retrains (it used to load the old classifier); another width retrains too (it used
    to crash loading the cached weights into the wrong shapes)."""
    dm = SyntheticDataModule(num_samples=64, image_size=16)
    first = load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False)
    assert not load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False).trained
    other_lr = load_or_train_domain_extractor(dm, tmp_path, epochs=1, lr=1e-3, progress=False)
    assert other_lr.trained and other_lr.weights_hash() != first.weights_hash()
    wider = load_or_train_domain_extractor(dm, tmp_path, epochs=1, width=8, progress=False)
    assert wider.trained and wider.classifier.body[0].out_channels == 8
    assert not load_or_train_domain_extractor(dm, tmp_path, epochs=1, width=8, progress=False).trained
    assert len(list(tmp_path.glob("domain-synthetic-*.pt"))) == 3


# ---------------------------------------------------------------------------------------------- cache


def test_cache_round_trip_stale_truncated_and_corrupt(tmp_path: Path, caplog) -> None:
    path, key = tmp_path / "c.pt", {"v": 1, "shape": (1, 28, 28), "where": tmp_path}
    obj = {"x": torch.arange(5), "name": "a", "acc": 0.97, "n": 3, "none": None, "list": [torch.ones(2)]}
    atomic_save(obj, path, key)
    loaded = checked_load(path, key)
    assert torch.equal(loaded["x"], obj["x"]) and torch.equal(loaded["list"][0], torch.ones(2))
    assert {k: loaded[k] for k in ("name", "acc", "n", "none")} == {"name": "a", "acc": 0.97, "n": 3, "none": None}
    caplog.set_level(logging.INFO, logger="genlab.features.cache")
    assert checked_load(path, {**key, "v": 2}) is None and "was made for" in caplog.text  # stale
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert checked_load(path, key) is None and "truncated or corrupt" in caplog.text
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    assert checked_load(path, key) is None
    path.write_bytes(data[:20])  # cut inside the header
    assert checked_load(path, key) is None and "unreadable" in caplog.text
    assert checked_load(tmp_path / "missing.pt", key) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary files left behind


def test_a_failed_save_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    atomic_save({"x": torch.arange(3)}, path, {"v": 1})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        atomic_save({"x": lambda: 0}, path, {"v": 1})
    assert torch.equal(checked_load(path, {"v": 1})["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def _compute_slowly(log_path: str) -> dict:
    with open(log_path, "a") as f:  # O_APPEND: one whole line per computation, even from several processes
        f.write(f"{os.getpid()}\n")
    time.sleep(0.3)  # long enough that the other processes arrive while this one holds the lock
    return {"value": torch.arange(1000) * 2, "by": os.getpid()}


def _worker(path: str, log_path: str, barrier, results) -> None:
    barrier.wait()  # all start together
    obj, _ = load_or_compute(path, {"k": 1}, lambda: _compute_slowly(log_path))
    results.put((int(obj["value"].sum()), obj["by"]))


def test_concurrent_processes_compute_once_and_read_the_same_file(tmp_path: Path) -> None:
    path, log_path = str(tmp_path / "shared.pt"), str(tmp_path / "computations.txt")
    ctx = mp.get_context("fork")  # spawn would re-import torch in every child (seconds each)
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(path, log_path, barrier, results)) for _ in range(4)]
    for w in workers:
        w.start()
    found = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    computed_by = Path(log_path).read_text().split()
    assert len(computed_by) == 1  # one process computed; the other three waited and read its file
    assert found == [(999_000, int(computed_by[0]))] * 4
    assert load_or_compute(path, {"k": 1}, lambda: pytest.fail("recomputed a valid cache"))[1] is False


def test_domain_extractor_trains_and_loads_under_inference_mode(tmp_path: Path) -> None:
    # a Lightning validation loop runs under inference mode, and that is where evaluation first needs the extractor
    dm = SyntheticDataModule(num_samples=64, image_size=16)
    with torch.inference_mode():
        trained = load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False)
        loaded = load_or_train_domain_extractor(dm, tmp_path, epochs=1, progress=False)
        inside = loaded(images(2, 1, 16))[0]
    assert trained.trained and not loaded.trained
    with torch.no_grad():
        assert torch.equal(loaded(images(2, 1, 16))[0], inside) and torch.equal(trained(images(2, 1, 16))[0], inside)
