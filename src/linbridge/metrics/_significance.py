"""Bootstrap significance of test R^2 with Benjamini-Hochberg FDR."""
from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control

from ._scores import _prepare, valid_units


def bootstrap_r2_pvalues(Y, Y_pred, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """p_v = fraction of bootstrap resamples of the test set with R^2_v <= 0."""
    Y, P = _prepare(Y, Y_pred)
    rng = np.random.default_rng(seed)
    n = Y.shape[0]
    valid = valid_units(Y)
    below = np.zeros(Y.shape[1])
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        y, p = Y[idx], P[idx]
        sst = ((y - y.mean(0)) ** 2).sum(0)
        sse = ((y - p) ** 2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = np.where(sst > 0, 1 - sse / sst, 0.0)
        below += r2 <= 0
    p = below / n_boot
    return np.where(valid, p, 1.0)


def fdr_bh(pvalues, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg: (adjusted p-values, significant mask at level q)."""
    p = np.asarray(pvalues, dtype=np.float64)
    adj = false_discovery_control(p, method="bh")
    return adj, adj < q
