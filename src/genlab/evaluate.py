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
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.checks import ConfigError
from genlab.train import CONFIG_DIR

log = logging.getLogger(__name__)


def format_table(results: dict[str, float], header: str) -> str:
    width = max(len(k) for k in results)
    rows = [f"{name:<{width}}  {value:12.5f}" for name, value in results.items()]
    return "\n".join([header, "-" * len(header), *rows])


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Score `cfg.ckpt_path` or `cfg.eval.fake_dir` against `cfg.data`; returns the metrics.

    The evaluator is the training callback's, built from the same `eval` node (so an unknown `eval.` setting
    fails here as it does in training); `fake_dir` is this command's own key.
    """
    from genlab.preflight import check_evaluate_config

    check_evaluate_config(cfg)  # before torch's import time
    ckpt_path, fake_dir = cfg.get("ckpt_path"), cfg.eval.get("fake_dir")
    import torch
    from torchvision.utils import save_image

    from genlab.image_folder import load_image_folder
    from genlab.loggers import print_each_line_once

    print_each_line_once()

    node = OmegaConf.to_container(cfg.eval, resolve=True)
    on_bad = node.pop("on_bad_file", "skip")
    node.pop("fake_dir", None)
    evaluator = instantiate(node).evaluator
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm = instantiate(cfg.data)
    if ckpt_path:
        model = load_checkpoint_model(ckpt_path, device)  # read before the data and the extractor are built
    else:
        images, problems = load_image_folder(fake_dir, dm.image_shape, evaluator.num_samples, on_bad)
        if problems:
            log.warning(f"eval.fake_dir={fake_dir}: skipped {len(problems)} bad file(s) (eval.on_bad_file=stop stops):")
            for line in problems[:20]:
                log.warning(f"  {line}")
    dm.prepare_data()
    dm.setup("fit")
    source = {"model": model} if ckpt_path else {"images": images}
    scores = evaluator.evaluate(dm, device, **source)
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


def load_checkpoint_model(ckpt_path: str, device: Any) -> Any:
    """The genlab model of a checkpoint; a file that torch cannot read is a ConfigError naming it."""
    from genlab.models import load_model

    try:
        return load_model(ckpt_path, map_location=device)
    except ConfigError:
        raise
    except Exception as err:  # torch.load's many ways of saying "not this kind of file"
        raise ConfigError(f"ckpt_path={ckpt_path} cannot be read as a genlab model checkpoint ({err})") from None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    from genlab.cli import one_line_errors

    with one_line_errors(cfg.paths.output_dir, stop_at=cfg.paths.log_dir):
        evaluate(cfg)


def main() -> None:
    from genlab.cli import install_override_check

    install_override_check()
    _main()
