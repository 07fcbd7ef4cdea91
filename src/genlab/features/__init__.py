"""Feature extractors for generative-model metrics: InceptionV3 (torch-fidelity), a classifier trained on the
dataset, a random projection; and the shared on-disk cache helpers. `genlab.features.inception` is imported
on demand (it imports torch-fidelity)."""

from genlab.features.base import ExtractorFactory, FeatureExtractor, to_uint8
from genlab.features.cache import atomic_save, checked_load, file_lock, load_or_compute
from genlab.features.domain import DomainExtractor, load_or_train_domain_extractor
from genlab.features.random_projection import RandomProjectionExtractor, random_extractor

__all__ = [
    "DomainExtractor",
    "ExtractorFactory",
    "FeatureExtractor",
    "RandomProjectionExtractor",
    "atomic_save",
    "checked_load",
    "file_lock",
    "load_or_compute",
    "load_or_train_domain_extractor",
    "random_extractor",
    "to_uint8",
]
