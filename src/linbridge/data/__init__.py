"""Datasets: features, responses, unit table and split, z-scored with training statistics."""
from ._dataset import Dataset, GroundTruth, Split
from .preprocessing import check_finite, check_same_samples, zscore_by_train
from .synthetic import PlantedEncoder, SyntheticConfig, make_synthetic

__all__ = ["Dataset", "GroundTruth", "Split", "PlantedEncoder", "SyntheticConfig",
           "make_synthetic", "check_finite", "check_same_samples", "zscore_by_train"]
