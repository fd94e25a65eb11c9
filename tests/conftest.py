import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# small, quiet, reproducible
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def isolated_feature_cache(tmp_path_factory):
    """Tests never write into the user's feature cache (fixture models make fake features)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LINBRIDGE_CACHE", str(tmp_path_factory.mktemp("feature_cache")))
    yield
    mp.undo()


@pytest.fixture
def one_thread():
    """Tiny problems: intra-op threads only add barrier waits (long ones on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def small_synthetic():
    from linbridge.data import make_synthetic

    return make_synthetic(seed=3, n_features=16, n_train=600, n_val=150, n_test=200,
                          units_per_tier=8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
