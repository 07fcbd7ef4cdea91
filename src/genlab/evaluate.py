"""Evaluation entry point: score a checkpoint or a folder of images against a dataset.

    python evaluate.py ckpt_path=<model.ckpt> data=mnist eval.num_samples=50000 eval/extractor=inception
    python evaluate.py eval.fake_dir=<folder of images> data=mnist

Prints a table and writes metrics.json (with the extractor's name, weights hash and precision) and
nearest_neighbours.png (16 samples, each beside its 5 nearest training images) into the run folder. Every
metric of the table is on here, CAS included; the default precision is fp32 with TF32 off: the published
FID protocol.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.train import CONFIG_DIR

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_image_folder(folder: str | Path, image_shape: tuple[int, int, int], limit: int | None = None):
    """uint8 images (N, C, H, W) from a folder (sorted by name); every image must have the data's shape."""
    import numpy as np
    import torch
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"eval.fake_dir={folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    channels, height, width = image_shape
    images = []
    for path in paths[:limit]:
        with Image.open(path) as img:
            if img.size != (width, height):
                raise ValueError(f"{path} is {img.size[0]}x{img.size[1]}, the data's images are {width}x{height}")
            array = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        images.append(torch.from_numpy(array.copy()).reshape(height, width, channels).permute(2, 0, 1))
    return torch.stack(images)


def format_table(results: dict[str, float], header: str) -> str:
    width = max(len(k) for k in results)
    rows = [f"{name:<{width}}  {value:12.5f}" for name, value in results.items()]
    return "\n".join([header, "-" * len(header), *rows])


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score `cfg.ckpt_path` or `cfg.eval.fake_dir` against `cfg.data`; returns the metrics.

    The evaluator is the training callback's, built from the same `eval` node (so an unknown `eval.` setting
    fails here as it does in training); `fake_dir` is this command's own key.
    """
    ckpt_path, fake_dir = cfg.get("ckpt_path"), cfg.eval.get("fake_dir")
    if bool(ckpt_path) == bool(fake_dir):
        raise ValueError("give exactly one of ckpt_path=<model.ckpt> or eval.fake_dir=<folder of images>")
    if fake_dir and not Path(fake_dir).is_dir():  # checked before the framework's import time
        raise FileNotFoundError(f"eval.fake_dir={fake_dir}: no such folder")
    import torch
    from torchvision.utils import save_image

    from genlab.loggers import print_each_line_once
    from genlab.models import load_model

    print_each_line_once()

    node = OmegaConf.to_container(cfg.eval, resolve=True)
    node.pop("fake_dir", None)
    evaluator = instantiate(node).evaluator
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    if ckpt_path:
        scores = evaluator.evaluate(dm, device, model=load_model(ckpt_path, map_location=device))
    else:
        scores = evaluator.evaluate(
            dm, device, images=load_image_folder(fake_dir, dm.image_shape, evaluator.num_samples)
        )
    results, e = scores.metrics, evaluator.extractor
    if not results:
        reasons = "; ".join(f"{name} {why}" for name, why in evaluator.skipped.items())
        raise ValueError(f"none of the metrics asked for can be computed here: {reasons}")
    held = len(evaluator.heldout) if evaluator.heldout is not None else 0
    header = (
        f"{ckpt_path or fake_dir} vs {dm.name}: {len(scores.fake)} generated against {len(evaluator.reference)} of "
        f"{len(evaluator.train)} training and {held} held-out images, {e.name} {e.weights_hash()} {e.precision}"
    )
    print(format_table(results, header))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_image(evaluator.nearest_neighbour_grid(scores.fake), out_dir / "nearest_neighbours.png")
    record = {
        "metrics": results,
        "extractor": e.name,
        "extractor_hash": e.weights_hash(),
        "precision": e.precision,
        "num_real": len(evaluator.reference),
        "num_train": len(evaluator.train),
        "num_heldout": held,
        "num_fake": len(scores.fake),
        "data": dm.name,
        "ckpt_path": ckpt_path,
        "fake_dir": fake_dir,
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    log.info(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'nearest_neighbours.png'}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
