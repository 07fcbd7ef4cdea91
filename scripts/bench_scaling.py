"""How evaluation and training time scale: metric math against the number of samples, a training epoch against
the batch size; a table and a plot.

    python scripts/bench_scaling.py                                    # CPU-sized: 128-d features, VAE epochs
    python scripts/bench_scaling.py --sizes 1000 5000 10000 50000 --dim 2048 --device cuda
    python scripts/bench_scaling.py --out docs/benchmark                # writes scaling.md and scaling.png there

Metric math: FID, KID (100 subsets of min(1000, n)), P&R (k=3) and D&C (k=5) of n generated against n real
random features of `--dim` dimensions (128: the domain extractor's, the offline default; 2048: InceptionV3's),
once with the real side computed and once with it kept as an evaluator keeps it between evaluations. Training:
one epoch of the default VAE (configs/model/vae.yaml) over the bundled MNIST digits through Lightning's Trainer
at each batch size, the seconds per epoch and images per second (after one warm-up epoch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000, 10000, 50000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256, 512])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="folder for scaling.md and scaling.png")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    if any(n < 10 for n in args.sizes) or any(b < 1 for b in args.batch_sizes):
        parser.error("--sizes need at least 10 samples and --batch-sizes at least 1")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def metric_math(n: int, dim: int, device: torch.device) -> tuple[float, float]:
    """(seconds with the real side computed, seconds with it cached) of FID + KID + P&R + D&C at n vs n."""
    from genlab import metrics as M

    g = torch.Generator().manual_seed(n)
    real = torch.randn(n, dim, generator=g).to(device)
    fake = (torch.randn(n, dim, generator=g) * 1.02 + 0.01).to(device)
    size = min(1000, n)
    sync(device)
    start = time.perf_counter()
    reference, sums = M.fid_reference(real), M.kid_real_sums(real, n, 100, size, 0)
    radii3, radii5 = M.knn_radii(real, 3, squared=True), M.knn_radii(real, 5, squared=True)
    sync(device)
    real_side = time.perf_counter() - start
    start = time.perf_counter()
    M.fid(real, fake, reference=reference)
    M.kid(real, fake, 100, size, 0, real_sums=sums)
    M.precision_recall(real, fake, 3, real_radii=radii3)
    M.density_coverage(real, fake, 5, real_radii=radii5)
    sync(device)
    cached = time.perf_counter() - start
    return real_side + cached, cached


def vae_epoch_seconds(
    device: torch.device,
    batch_size: int = 128,
    precision: str = "32-true",
    callbacks: list | None = None,
    epochs: int = 2,
) -> float:
    """Seconds per epoch of the default VAE (configs/model/vae.yaml) on the bundled digits through the Trainer: the
    fastest epoch after the first (which warms up), or the only one; `callbacks` join the timing one."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from genlab.data import MNISTDataModule

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            sync(device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            sync(device)
            self.times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(ROOT / "configs" / "model" / "vae.yaml"), image_channels=1, image_size=28)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock := Clock(), *(callbacks or [])],
    )
    trainer.fit(model, MNISTDataModule(root=str(ROOT / "data"), source="bundled", batch_size=batch_size))
    return min(clock.times[1:] or clock.times)


def training_epochs(batch_sizes: list[int], device: torch.device) -> list[tuple[int, float]]:
    """(batch size, seconds per epoch) of the default VAE on the bundled digits, through the Trainer."""
    rows = []
    for batch_size in batch_sizes:
        rows.append((batch_size, vae_epoch_seconds(device, batch_size)))
        print(f"  batch {batch_size}: {rows[-1][1]:.2f} s/epoch", flush=True)
    return rows


def plot(math_rows: list[tuple[int, float, float]], train_rows: list[tuple[int, float]], dim: int, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    sizes = [n for n, _, _ in math_rows]
    left.loglog(sizes, [t for _, t, _ in math_rows], "o-", label="real side computed")
    left.loglog(sizes, [t for _, _, t in math_rows], "s-", label="real side cached")
    left.set(xlabel="samples per side", ylabel="seconds", title=f"FID+KID+P&R+D&C, {dim}-d features")
    left.legend()
    if train_rows:
        right.semilogx([b for b, _ in train_rows], [t for _, t in train_rows], "o-", base=2)
        right.set(xlabel="batch size", ylabel="seconds per epoch", title="VAE epoch, 4,500 digits (Trainer)")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    math_rows = []
    for n in args.sizes:
        total, cached = metric_math(n, args.dim, device)
        math_rows.append((n, total, cached))
        print(f"  n={n}: {total:.2f} s, real side cached {cached:.2f} s", flush=True)
    train_rows = [] if args.skip_training else training_epochs(args.batch_sizes, device)
    lines = [
        f"| samples per side ({args.dim}-d, {device}) | metric math, real side computed (s) | real side cached (s) |",
        "|---|---|---|",
        *(f"| {n} | {t:.2f} | {c:.2f} |" for n, t, c in math_rows),
    ]
    if train_rows:
        lines += ["", "| batch size | VAE epoch (s) | images/s |", "|---|---|---|"]
        lines += [f"| {b} | {t:.2f} | {4500 / t:.0f} |" for b, t in train_rows]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
        plot(math_rows, train_rows, args.dim, args.out / "scaling.png")
        print(f"wrote {args.out / 'scaling.md'} and {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
