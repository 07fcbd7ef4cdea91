"""Time genlab's evaluation against the reference libraries on the same work, side by side in one run.

    python scripts/bench_eval.py --n 2000                        # metric math only, CPU-sized
    python scripts/bench_eval.py --n 10000 --device cuda --end-to-end --weights <inception.pth>
    python scripts/bench_eval.py --device cuda --targets --weights <inception.pth>   # 50k math, 10k cached scoring

Metric math: FID + KID + precision/recall through torch-fidelity's functions and density/coverage through
prdc, against genlab.metrics, on the same random 2048-d features (real N(0, 1), fake N(0.01, 1.02^2): some of
the fake samples inside the real k-NN balls and some outside, so the hit counts say something), interleaved
(min of --repeats rounds). genlab also with the real side kept as an evaluator keeps it between evaluations
(FID's reference statistics and covariance factor, KID's real-real kernel sums, the k-NN radii), and the
P&R and D&C hit counts of all three, which must be identical; P&R and D&C also with every distance in float64
(`dtype=torch.float64`, the arithmetic before float32 with exact rechecks), and P&R with D&C from one pass
(`knn_metrics`), as an evaluation computes them. End to end
(needs InceptionV3 weights; a random-weights file is made when --weights is not given, which times the same
work): torch-fidelity's `calculate_metrics` (IS + FID + KID + P&R from uint8 images) against genlab (features
extracted once, every metric from them) at each extraction precision. Prints each time and the ratio reference / genlab.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls (after one warm-up call), synchronising the device."""
    return side_by_side([fn], device, repeats)[0]


def side_by_side(fns: list[Callable[[], object]], device: torch.device, repeats: int) -> list[float]:
    """Best wall time of each of `fns` over `repeats` rounds that call them in turn (interleaved, so that a change
    in the machine's load reaches all alike), synchronising the device; on a GPU after one warm-up call each
    (CUDA's lazy start-up and cuDNN's autotuning; a CPU has no such cost worth a second pass)."""
    for fn in fns if device.type == "cuda" else ():
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def bench_math(n: int, dim: int, device: torch.device, repeats: int) -> list[tuple[str, float, float]]:
    """(name, reference seconds, genlab seconds) for each metric on the same features, then P&R and D&C again with
    every distance in float64 (`dtype=torch.float64`) against the same reference times. Prints the P&R and D&C values
    of all three, which must agree."""
    import prdc
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from genlab import metrics as M

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g) * 1.02 + 0.01
    real_dev, fake_dev = real.to(device), fake.to(device)
    kid_size = min(1000, n)
    values: dict[str, object] = {}

    def keep(key: str, fn: Callable[[], object]) -> Callable[[], None]:
        return lambda: values.__setitem__(key, fn())

    ref = {
        "FID": lambda: fid_statistics_to_metric(
            fid_features_to_statistics(fake), fid_features_to_statistics(real), verbose=False
        ),
        "KID": lambda: kid_features_to_metric(fake, real, kid_subset_size=kid_size, verbose=False),
        "P&R": keep("P&R torch-fidelity", lambda: prc_features_to_metric(fake_dev, real_dev, verbose=False)),
        "D&C": keep("D&C prdc", lambda: quiet(prdc.compute_prdc, real.numpy(), fake.numpy(), nearest_k=5)),
    }
    ours = {
        "FID": lambda: M.fid(real_dev, fake_dev),
        "KID": lambda: M.kid(real_dev, fake_dev, subset_size=kid_size, seed=2020),  # torch-fidelity's seed
        "P&R": keep("P&R genlab", lambda: M.precision_recall(real_dev, fake_dev, k=3)),
        "D&C": keep("D&C genlab", lambda: M.density_coverage(real_dev, fake_dev, k=5)),
    }
    float64 = {
        "P&R": keep("P&R all-float64", lambda: M.precision_recall(real_dev, fake_dev, k=3, dtype=torch.float64)),
        "D&C": keep("D&C all-float64", lambda: M.density_coverage(real_dev, fake_dev, k=5, dtype=torch.float64)),
    }
    # what an evaluator keeps of the real side between evaluations (computed here, outside the timings)
    reference = M.fid_reference(real_dev)
    radii3, radii5 = M.knn_radii(real_dev, 3, squared=True), M.knn_radii(real_dev, 5, squared=True)
    sums = M.kid_real_sums(real_dev, n, 100, kid_size, 2020)
    cached = {
        "FID": lambda: M.fid(real_dev, fake_dev, reference=reference),
        "KID": lambda: M.kid(real_dev, fake_dev, subset_size=kid_size, seed=2020, real_sums=sums),
        "P&R": keep("P&R cached", lambda: M.precision_recall(real_dev, fake_dev, k=3, real_radii=radii3)),
        "D&C": keep("D&C cached", lambda: M.density_coverage(real_dev, fake_dev, k=5, real_radii=radii5)),
    }
    joint = {  # P&R and D&C of one evaluation: one pass over the real-fake distances, one over the real-real ones
        "fresh": keep("joint", lambda: M.knn_metrics(real_dev, fake_dev, 3, 5)),
        "cached": keep(
            "joint cached", lambda: M.knn_metrics(real_dev, fake_dev, 3, 5, real_radii={3: radii3, 5: radii5})
        ),
    }
    rows, extra = [], []
    for name in ref:
        ref_s, ours_s, cached_s, *f64 = side_by_side(
            [ref[name], ours[name], cached[name], *([float64[name]] if name in float64 else [])], device, repeats
        )
        rows.append((name, ref_s, ours_s))
        extra.append((f"{name} (real side cached)", ref_s, cached_s))
        if f64:
            extra.append((f"{name} all-float64 (dtype=float64)", ref_s, f64[0]))
    joint_s, joint_cached_s = side_by_side(list(joint.values()), device, repeats)
    both_ref = next(r for n_, r, _ in rows if n_ == "P&R") + next(r for n_, r, _ in rows if n_ == "D&C")
    extra += [(JOINT, both_ref, joint_s), (f"{JOINT} (real side cached)", both_ref, joint_cached_s)]
    for key in ("joint", "joint cached"):
        found = values[key]
        values[f"P&R {key}"] = (found["precision"], found["recall"])
        values[f"D&C {key}"] = (found["density"], found["coverage"])
    pr, dc = values["P&R torch-fidelity"], values["D&C prdc"]
    counts = {  # hit counts: the fractions times the number of samples they are fractions of
        "P&R": [(round(p * n), round(r * n)) for p, r in (values[f"P&R {v}"] for v in VARIANTS)],
        "D&C": [(round(d * 5 * n), round(c * n)) for d, c in (values[f"D&C {v}"] for v in VARIANTS)],
    }
    reference_counts = {
        "P&R": (round(float(pr["precision"]) * n), round(float(pr["recall"]) * n)),
        "D&C": (round(float(dc["density"]) * 5 * n), round(float(dc["coverage"]) * n)),
    }
    for name in ("P&R", "D&C"):
        same = all(c == reference_counts[name] for c in counts[name])
        found = ", ".join(f"{v} {c}" for v, c in zip(VARIANTS, counts[name], strict=True))
        print(f"{name} hit counts: {found}, reference {reference_counts[name]}: {'identical' if same else 'DIFFERENT'}")
    print(f"P&R genlab {values['P&R genlab']}, all-float64 {values['P&R all-float64']}, torch-fidelity", end=" ")
    print((pr["precision"], pr["recall"]))
    print(f"D&C genlab {values['D&C genlab']}, all-float64 {values['D&C all-float64']}, prdc", end=" ")
    print((dc["density"], dc["coverage"]))
    return rows + extra


JOINT = "P&R + D&C in one pass"
VARIANTS = (
    "genlab",
    "cached",
    "joint",
    "joint cached",
)  # the genlab results whose hit counts must equal the references'


def quiet(fn: Callable[..., dict], *args: object, **kwargs: object) -> dict:
    """`fn(*args, **kwargs)` with its prints swallowed (prdc prints its sample counts)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def random_inception_weights(folder: str) -> str:
    """A randomly initialised inception-v3-compat state dict saved to `folder` (times the same work offline)."""
    from genlab.features.inception import random_inception_weights as make

    return make(folder)


def bench_end_to_end(
    n: int, device: torch.device, weights: str, precisions: list[str]
) -> list[tuple[str, float, float]]:
    """torch-fidelity's calculate_metrics vs genlab's extract-once pipeline on the same uint8 images."""
    import torch_fidelity

    from genlab.evaluator import compute_metrics
    from genlab.feature_sets import FeatureSet, extract
    from genlab.features.inception import InceptionExtractor

    g = torch.Generator().manual_seed(0)
    real = (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    fake = (torch.rand(n, 3, 32, 32, generator=g) * 200).to(torch.uint8)

    class Images(torch.utils.data.Dataset):
        def __init__(self, x: torch.Tensor) -> None:
            self.x = x

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.x[i]

    def reference() -> None:
        torch_fidelity.calculate_metrics(
            input1=Images(fake),
            input2=Images(real),
            cuda=device.type == "cuda",
            isc=True,
            fid=True,
            kid=True,
            prc=True,
            verbose=False,
            feature_extractor="inception-v3-compat",  # the same extractor for every metric
            feature_extractor_weights_path=weights,
            kid_subset_size=min(1000, n),
            save_cpu_ram=True,
        )

    rows = []
    for precision in precisions:
        extractor = InceptionExtractor(weights_path=weights, precision=precision).to(device).eval()
        batch = 500 if device.type == "cuda" else 50

        def ours(extractor: InceptionExtractor = extractor, batch: int = batch) -> None:
            sets = [
                extract(extractor, [(x[i : i + batch].float() / 255, None) for i in range(0, n, batch)], device)
                for x in (real, fake)
            ]
            fake_side = FeatureSet(sets[1].features, sets[1].logits)
            compute_metrics(sets[0], fake_side, ["fid", "is", "kid", "pr"], kid_subset_size=min(1000, n))

        rows.append((f"IS+FID+KID+P&R end to end ({precision})", timed(reference, device), timed(ours, device)))
    return rows


def bench_targets(n_math: int, n_images: int, device: torch.device, weights: str, precisions: list[str]) -> None:
    """genlab alone against the targets: all metric math on n_math vs n_math 2048-d features (time and extra
    device memory), and n_images generated images scored against cached real features at each precision."""
    from genlab.evaluator import compute_metrics
    from genlab.feature_sets import FeatureSet, extract
    from genlab.features.inception import InceptionExtractor

    groups = ["fid", "is", "kid", "pr", "dc"]
    g = torch.Generator().manual_seed(0)
    real = FeatureSet(torch.randn(n_math, 2048, generator=g), torch.randn(n_math, 1008, generator=g)).to(device)
    fake = FeatureSet(torch.randn(n_math, 2048, generator=g) + 0.1, torch.randn(n_math, 1008, generator=g)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    seconds = timed(lambda: compute_metrics(real, fake, groups, kid_subset_size=min(1000, n_math)), device)
    extra = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else float("nan")
    print(f"all metric math, {n_math} vs {n_math} 2048-d: {seconds:.3f} s, {extra:.2f} GiB extra device memory")
    images = (torch.rand(n_images, 3, 32, 32, generator=g) * 255).to(torch.uint8).to(device)
    batch = 1000 if device.type == "cuda" else 50
    for precision in precisions:
        extractor = InceptionExtractor(weights_path=weights, precision=precision).to(device).eval()
        cached = extract(extractor, [(images[:batch].float() / 255, None)], device)
        real_side = FeatureSet(cached.features.repeat(n_images // batch, 1), cached.logits.repeat(n_images // batch, 1))

        def score(extractor: InceptionExtractor = extractor, real_side: FeatureSet = real_side) -> None:
            batches = [(images[i : i + batch].float() / 255, None) for i in range(0, n_images, batch)]
            fake_side = extract(extractor, batches, device)
            compute_metrics(real_side, fake_side, ["fid", "is", "kid", "pr"], kid_subset_size=min(1000, n_images))

        print(f"{n_images} images scored against cached real features ({precision}): {timed(score, device):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="real and fake samples each")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--end-to-end", action="store_true", help="also time image -> metrics (InceptionV3)")
    parser.add_argument("--weights", default=None, help="torch-fidelity's inception weights file")
    parser.add_argument("--precisions", default="fp32,tf32,bf16")
    parser.add_argument("--targets", action="store_true", help="genlab alone: 50k metric math, 10k cached scoring")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = bench_math(args.n, args.dim, device, args.repeats)
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            weights = args.weights or random_inception_weights(tmp)
            rows += bench_end_to_end(args.n, device, weights, args.precisions.split(","))
    print(f"\n{args.n} real vs {args.n} fake, {args.dim}-d features, {device} ({torch.get_num_threads()} threads)")
    print(f"{'work':<56} {'reference s':>12} {'genlab s':>10} {'ratio':>7}")
    for name, ref, ours in rows:
        print(f"{name:<56} {ref:12.3f} {ours:10.3f} {ref / ours:6.2f}x")
    total_ref, total_ours = sum(r[1] for r in rows[:4]), sum(r[2] for r in rows[:4])
    print(f"{'metric math total':<56} {total_ref:12.3f} {total_ours:10.3f} {total_ref / total_ours:6.2f}x")
    warm = sum(ours for name, _, ours in rows if name.endswith("(real side cached)") and not name.startswith(JOINT))
    print(f"{'metric math total, real side cached':<56} {total_ref:12.3f} {warm:10.3f} {total_ref / warm:6.2f}x")
    seconds = {name: ours for name, _, ours in rows}
    for label, suffix in (
        ("as one evaluation computes it", ""),
        ("as one evaluation, real side cached", " (real side cached)"),
    ):
        ours = seconds[f"FID{suffix}"] + seconds[f"KID{suffix}"] + seconds[f"{JOINT}{suffix}"]
        print(f"{'metric math total, ' + label:<56} {total_ref:12.3f} {ours:10.3f} {total_ref / ours:6.2f}x")
    for name in ("P&R", "D&C"):
        before, after = seconds[f"{name} all-float64 (dtype=float64)"], seconds[name]
        print(f"{name}: float32 with exact rechecks is {before / after:.2f}x as fast as all-float64")
    if args.targets:
        with tempfile.TemporaryDirectory() as tmp:
            weights = args.weights or random_inception_weights(tmp)
            big = device.type == "cuda"
            bench_targets(50_000 if big else 2_000, 10_000 if big else 200, device, weights, args.precisions.split(","))


if __name__ == "__main__":
    main()
