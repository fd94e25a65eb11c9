"""Dataset names for configs and the CLI."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ._dataset import Dataset

# name -> (module, loader function, does it read files under data_home)
DATASETS: dict[str, tuple[str, str, bool]] = {
    "synthetic": ("linbridge.data.synthetic", "make_synthetic", False),
    "cowley2023-v4": ("linbridge.data.cowley2023", "load_cowley2023_v4", True),
    "nsd": ("linbridge.data.nsd", "load_nsd", True),
}


def resolve_data_home(data_home: str | Path | None) -> Path | None:
    """The argument, else $LINBRIDGE_DATA, else None."""
    if data_home:
        return Path(data_home).expanduser()
    env = os.environ.get("LINBRIDGE_DATA")
    return Path(env).expanduser() if env else None


def dataset_parameters(name: str) -> set[str]:
    """The keys a config's ``dataset.params`` may hold for this dataset."""
    import dataclasses
    import inspect

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    module, func, _ = DATASETS[name]
    mod = importlib.import_module(module)
    if name == "synthetic":  # make_synthetic(**overrides) forwards them to SyntheticConfig
        return {f.name for f in dataclasses.fields(mod.SyntheticConfig)}
    return set(inspect.signature(getattr(mod, func)).parameters) - {"data_home", "cache_dir",
                                                                     "progress"}


def load_dataset(name: str, data_home: str | Path | None = None, cache_dir: str | Path | None = None,
                 progress: bool = True, **params: Any) -> Dataset:
    """Load a dataset by its registry name, passing ``params`` to its loader."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}")
    module, func, reads_files = DATASETS[name]
    loader = getattr(importlib.import_module(module), func)
    if not reads_files:
        return loader(**params)
    home = resolve_data_home(data_home)
    return loader(data_home=home, cache_dir=cache_dir, progress=progress, **params)
