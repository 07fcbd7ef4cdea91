"""Feature extractors: InceptionV3 (torch-fidelity), a classifier trained on the dataset, a random projection."""

from genlab.features.base import EXTRACTORS, FeatureExtractor, build_extractor, to_uint8
from genlab.features.domain import DomainExtractor, load_or_train_domain_extractor

__all__ = [
    "EXTRACTORS",
    "DomainExtractor",
    "FeatureExtractor",
    "build_extractor",
    "load_or_train_domain_extractor",
    "to_uint8",
]
