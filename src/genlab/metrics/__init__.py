"""Pure-torch metrics for generative models, computed from (N, D) feature tensors on their own device.

Each function matches a reference implementation (see the module docstrings and tests/test_metrics.py):

- `fid`, `fid_from_stats`, `fid_reference`, `FeatureStats`: Fréchet Inception Distance (Heusel et al. 2017;
  torch-fidelity, torchmetrics)
- `inception_score`: Inception Score (Salimans et al. 2016; torch-fidelity)
- `kid`: Kernel Inception Distance (Bińkowski et al. 2018; torch-fidelity)
- `precision_recall`: improved precision & recall (Kynkäänniemi et al. 2019; torch-fidelity)
- `density_coverage`: density & coverage (Naeem et al. 2020; prdc)
- `intra_fid`, `classifier_accuracy`: class-conditional generators (Miyato & Koyama 2018; Odena et al. 2017)
- `class_kl`, `classes_covered`: class coverage from a classifier's predictions (VEEGAN, PacGAN)
- `copy_rate`, `authenticity`, `data_copying`: the novelty axis against the training and held-out splits
  (Alaa et al. 2022; Meehan et al. 2020)
- `classification_accuracy_score`: CAS of a conditional generator (Ravuri & Vinyals 2019)

Arguments are `real_*` / `fake_*` tensors; results are Python floats (pairs as tuples).
"""

from genlab.metrics.cas import classification_accuracy_score
from genlab.metrics.classes import class_kl, classes_covered
from genlab.metrics.conditional import classifier_accuracy, intra_fid
from genlab.metrics.frechet import FeatureStats, FidReference, fid, fid_from_stats, fid_reference
from genlab.metrics.inception import inception_score
from genlab.metrics.kernel_distance import kid, kid_real_sums
from genlab.metrics.knn import density_coverage, knn_metrics, knn_radii, nearest, precision_recall
from genlab.metrics.novelty import (
    authenticity,
    copy_rate,
    copy_threshold,
    data_copying,
    kmeans,
    nearest_other_distance,
)

__all__ = [
    "FeatureStats",
    "FidReference",
    "authenticity",
    "class_kl",
    "classes_covered",
    "classification_accuracy_score",
    "classifier_accuracy",
    "copy_rate",
    "copy_threshold",
    "data_copying",
    "density_coverage",
    "fid",
    "fid_from_stats",
    "fid_reference",
    "inception_score",
    "intra_fid",
    "kid",
    "kid_real_sums",
    "kmeans",
    "knn_metrics",
    "knn_radii",
    "nearest",
    "nearest_other_distance",
    "precision_recall",
]
