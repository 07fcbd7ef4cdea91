"""What the speed switches do to the numbers and the time: the same images scored with the extractor in each
precision and memory format (and compiled), and a VAE epoch with each training switch.

    python scripts/bench_switches.py                          # CPU: the bundled digits, the domain extractor
    python scripts/bench_switches.py --device cuda --compile  # adds torch.compile (minutes of compiling on a CPU)

Extraction: `--n` held-out digits (the bundled MNIST validation split, then the training split) scored as the
generated side against the training split, with `eval.precision` fp32 | tf32 | bf16, `eval.channels_last` and
(with --compile) `eval.compile`; every metric's change against fp32 is printed. FID is computed in float64
whatever the features' precision. Training: seconds per epoch of the default VAE over the bundled digits with
`trainer.precision=32-true | bf16-mixed`, `callbacks.speed.channels_last` and (with --compile) `.compile`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def extraction_rows(n: int, device: torch.device, compile: bool, cache: Path) -> list[tuple[str, dict, float]]:
    """(switches, metrics, seconds) for each extraction setting on the same images."""
    from genlab.data import MNISTDataModule
    from genlab.evaluator import Evaluator
    from genlab.features.domain import load_or_train_domain_extractor

    data = MNISTDataModule(root=str(ROOT / "data"), source="bundled")
    data.setup()
    images = torch.cat([data.val_set.images, data.train_set.images])[:n]
    settings = [("fp32", False, False), ("tf32", False, False), ("bf16", False, False), ("fp32", True, False)]
    if compile:
        settings.append(("fp32", False, True))
    rows = []
    for precision, channels_last, compiled in settings:
        evaluator = Evaluator(
            load_or_train_domain_extractor,
            ["fid", "kid", "pr", "dc", "is"],
            num_samples=n,
            precision=precision,
            channels_last=channels_last,
            compile=compiled,
            cache_dir=str(cache),
            kid_subset_size=min(1000, n),
            progress=False,
        )
        evaluator.setup(data, device)
        start = time.perf_counter()
        metrics = evaluator.evaluate(data, device, images=images).metrics
        name = precision + (" + channels_last" if channels_last else "") + (" + compile" if compiled else "")
        rows.append((name, metrics, time.perf_counter() - start))
        print(f"  {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return rows


def training_rows(device: torch.device, compile: bool, epochs: int) -> list[tuple[str, float]]:
    """(switches, seconds per epoch after the first) of the default VAE for each training setting."""
    from bench_scaling import vae_epoch_seconds  # scripts/, beside this one

    from genlab.callbacks import Speed

    settings = [("32-true", False, False), ("bf16-mixed", False, False), ("32-true", True, False)]
    if compile:
        settings.append(("32-true", False, True))
    rows = []
    for precision, channels_last, compiled in settings:
        speed = Speed(channels_last=channels_last, compile=compiled)
        seconds = vae_epoch_seconds(device, precision=precision, callbacks=[speed], epochs=epochs)
        name = precision + (" + channels_last" if channels_last else "") + (" + compile" if compiled else "")
        rows.append((name, seconds))
        print(f"  {name}: {seconds:.2f} s/epoch", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images scored per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile on a CPU)")
    parser.add_argument("--epochs", type=int, default=2, help="VAE epochs per training setting (the first warms up)")
    parser.add_argument("--cache", type=Path, default=ROOT / "outputs" / "cache", help="the extractor's cache")
    args = parser.parse_args(argv)
    if args.n < 10 or args.epochs < 1:
        parser.error("--n needs at least 10 images and --epochs at least 1")
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads")
    rows = extraction_rows(args.n, device, args.compile, args.cache)
    base = rows[0][1]
    keys = [k for k in base if not k.endswith("_std")]
    print(f"\n| extraction ({args.n} images, {device}) | seconds | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, metrics, seconds in rows:
        cells = [f"{metrics[k]:.4g}" + ("" if name == rows[0][0] else f" ({metrics[k] - base[k]:+.2g})") for k in keys]
        print(f"| {name} | {seconds:.1f} | " + " | ".join(cells) + " |")
    train = training_rows(device, args.compile, args.epochs)
    print(f"\n| VAE training ({device}) | s/epoch | vs 32-true |\n|---|---|---|")
    for name, seconds in train:
        print(f"| {name} | {seconds:.2f} | {train[0][1] / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
