"""Evaluation entry point: score a checkpoint or a folder of images against a dataset.

    python evaluate.py ckpt_path=<model.ckpt> data=mnist eval.num_samples=50000 eval.extractor=inception
    python evaluate.py eval.fake_dir=<folder of images> data=mnist

Prints a table and writes metrics.json (with the extractor's name, weights hash and precision) into the run
folder. The default precision here is fp32 with TF32 off: the published FID protocol.
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
NOT_SETTINGS = ("_target_", "fake_dir", "every_n_epochs")


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
    """Score `cfg.ckpt_path` or `cfg.eval.fake_dir` against `cfg.data`; returns the metrics."""
    import torch

    from genlab.evaluator import (
        CONDITIONAL_GROUPS,
        FeatureSet,
        MetricSettings,
        check_metric_names,
        compute_metrics,
        dataset_features,
        extract_images,
        make_extractor,
        sample_features,
    )
    from genlab.models import load_model

    ckpt_path, fake_dir = cfg.get("ckpt_path"), cfg.eval.get("fake_dir")
    if bool(ckpt_path) == bool(fake_dir):
        raise ValueError("give exactly one of ckpt_path=<model.ckpt> or eval.fake_dir=<folder of images>")
    s = {k: v for k, v in OmegaConf.to_container(cfg.eval, resolve=True).items() if k not in NOT_SETTINGS}
    groups = check_metric_names(s["metrics"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    extractor = (
        make_extractor(
            s["extractor"],
            datamodule=dm,
            cache_dir=s["cache_dir"],
            weights_path=s["weights_path"],
            precision=s["precision"],
            progress=s["progress"],
        )
        .to(device)
        .eval()
    )
    n, batch_size = s["num_samples"], s["batch_size"]
    real = dataset_features(dm, extractor, n, s["precision"], s["cache_dir"], device, batch_size, s["progress"])
    conditional = False
    if ckpt_path:
        model = load_model(ckpt_path, map_location=device)
        conditional = model.num_classes > 0
        fake = FeatureSet.concat(
            sample_features(model, extractor, n, batch_size, s["seed"], dm.image_shape, progress=s["progress"])
        )
    else:
        images = load_image_folder(fake_dir, dm.image_shape, limit=n)
        fake = extract_images(images, None, extractor, device, batch_size, s["progress"], "eval: image folder")
    groups = [g for g in groups if conditional or g not in CONDITIONAL_GROUPS]
    settings = MetricSettings(s["is_splits"], s["kid_subsets"], s["kid_subset_size"], s["pr_k"], s["dc_k"])
    results = compute_metrics(real, fake, groups, settings)
    header = (
        f"{ckpt_path or fake_dir} vs {dm.name} train ({len(real)} real, {len(fake)} fake), "
        f"{extractor.name} {extractor.weights_hash()} {s['precision']}"
    )
    print(format_table(results, header))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "metrics": results,
        "extractor": extractor.name,
        "extractor_hash": extractor.weights_hash(),
        "precision": s["precision"],
        "num_real": len(real),
        "num_fake": len(fake),
        "data": dm.name,
        "ckpt_path": ckpt_path,
        "fake_dir": fake_dir,
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    log.info(f"wrote {out_dir / 'metrics.json'}")
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)
