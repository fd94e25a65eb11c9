"""Per-unit prediction scores: Pearson r and R^2, float64 after centring."""
from __future__ import annotations

import warnings

import numpy as np

from ..data.preprocessing import CONSTANT_TOL, check_finite, check_same_samples, constant_columns


def _prepare(Y, Y_pred):
    Y = np.asarray(Y, dtype=np.float64)
    P = np.asarray(Y_pred, dtype=np.float64)
    check_same_samples(Y=Y, Y_pred=P)
    if Y.shape != P.shape:
        raise ValueError(f"Y is {Y.shape} but predictions are {P.shape}")
    check_finite(Y, "Y", ("sample", "unit"))
    check_finite(P, "predictions", ("sample", "unit"))
    return Y, P


def valid_units(Y, tol: float = CONSTANT_TOL) -> np.ndarray:
    """False for units whose responses are (near-)constant: (n_units,) bool."""
    Y = np.asarray(Y, dtype=np.float64)
    return ~constant_columns(Y, tol) & np.isfinite(Y).all(0)  # a NaN unit is not valid either


def _warn_constant(valid: np.ndarray, what: str) -> None:
    if not valid.all():
        warnings.warn(f"{what}: {int((~valid).sum())} constant unit(s) (first "
                      f"{np.flatnonzero(~valid)[:5].tolist()}) score 0", stacklevel=3)


def pearson_r(Y, Y_pred) -> np.ndarray:
    """Correlation per unit, (n_samples, n_units) x2 -> (n_units,). Constant units score 0."""
    Y, P = _prepare(Y, Y_pred)
    Yc, Pc = Y - Y.mean(0), P - P.mean(0)
    ny, npred = np.sqrt((Yc ** 2).sum(0)), np.sqrt((Pc ** 2).sum(0))
    valid = valid_units(Y) & valid_units(P)
    _warn_constant(valid, "pearson_r")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (Yc * Pc).sum(0) / (ny * npred)
    return np.where(valid, np.clip(r, -1, 1), 0.0)


def r2_score(Y, Y_pred) -> np.ndarray:
    """Coefficient of determination per unit, 1 - SSE/SST; constant units score 0."""
    Y, P = _prepare(Y, Y_pred)
    sst = ((Y - Y.mean(0)) ** 2).sum(0)
    sse = ((Y - P) ** 2).sum(0)
    valid = valid_units(Y)
    _warn_constant(valid, "r2_score")
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - sse / sst
    return np.where(valid, r2, 0.0)


def correlate_maps(a, b) -> float:
    """Pearson correlation between two per-unit maps (e.g. two R^2 maps), NaN-safe."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])
