"""Datasets: features, responses, unit table and split, z-scored with training statistics."""
from ._dataset import Dataset, GroundTruth, Split
from .preprocessing import check_finite, check_same_samples, zscore_by_train
from .cowley2023 import available_sessions, load_cowley2023_v4
from .fetch import fetch_cowley2023_v4
from .nsd import DEFAULT_TIERS, NSDPaths, StimulusIds, load_nsd, noise_ceiling
from .nsd_fixture import nsd_fixture_command, write_nsd_fixture
from .registry import DATASETS, load_dataset, resolve_data_home
from .synthetic import PlantedEncoder, SyntheticConfig, make_synthetic

__all__ = ["Dataset", "GroundTruth", "Split", "PlantedEncoder", "SyntheticConfig",
           "make_synthetic", "check_finite", "check_same_samples", "zscore_by_train",
           "available_sessions", "load_cowley2023_v4", "fetch_cowley2023_v4", "DATASETS",
           "load_dataset", "resolve_data_home", "DEFAULT_TIERS", "NSDPaths", "StimulusIds",
           "load_nsd", "noise_ceiling", "nsd_fixture_command", "write_nsd_fixture"]
