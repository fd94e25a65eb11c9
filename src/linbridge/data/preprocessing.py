"""Checks at stage boundaries and z-scoring with training statistics."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

#: a column whose std is below this (relative to its scale, or absolutely) counts as constant
CONSTANT_TOL = 1e-8


def check_same_samples(**arrays) -> int:
    """Raise if the named arrays disagree on their first axis; return the common count."""
    counts = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(counts.values())) > 1:
        desc = ", ".join(f"{k} has {n}" for k, n in counts.items())
        raise ValueError(f"sample counts differ: {desc}")
    return next(iter(counts.values())) if counts else 0


def check_finite(a: np.ndarray, what: str, axis_names: Sequence[str] = ("row", "column"),
                 names: Sequence[Sequence] | None = None,
                 positions: Sequence[Sequence[int] | None] | None = None) -> None:
    """Raise on NaN/inf, naming the first offending position (and its ids when given).

    positions: per axis, the position in the whole array of each index of ``a`` (when
    ``a`` is one block of something larger), so the message names the global position.
    """
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    pos = np.argwhere(bad)
    first = tuple(int(i) for i in pos[0])
    parts = []
    for ax, i in enumerate(first):
        label = axis_names[ax] if ax < len(axis_names) else f"axis{ax}"
        ident = ""
        if names is not None and ax < len(names) and names[ax] is not None:
            ident = f" ({names[ax][i]!s})"
        at = i
        if positions is not None and ax < len(positions) and positions[ax] is not None:
            at = int(positions[ax][i])
        parts.append(f"{label} {at}{ident}")
    raise ValueError(
        f"{what} contains {int(bad.sum())} non-finite value(s) "
        f"({a[first]} at {', '.join(parts)}); fix or drop them first - "
        "they are never replaced silently"
    )


def is_constant(mean: np.ndarray, std: np.ndarray, tol: float = CONSTANT_TOL) -> np.ndarray:
    """The project's one rule for a (near-)constant column: std <= tol * max(1, |mean|).

    NaN statistics are not constant (False): callers that must reject NaN check it apart."""
    with np.errstate(invalid="ignore"):
        return std <= tol * np.maximum(1.0, np.abs(mean))


def constant_columns(a: np.ndarray, tol: float = CONSTANT_TOL) -> np.ndarray:
    """Boolean mask of the (near-)constant columns of ``a`` (see ``is_constant``)."""
    a64 = np.asarray(a, dtype=np.float64)
    mean = a64.mean(axis=0)
    return is_constant(mean, (a64 - mean).std(axis=0), tol)


def zscore_by_train(a: np.ndarray, train: np.ndarray, what: str = "array"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score every column with the mean and std of the training rows.

    Returns (z as float32, mean, std). A constant training column is centred only
    (its std is set to 1) with a warning, so it carries no information but no NaN.
    """
    a64 = np.asarray(a, dtype=np.float64)
    ref = a64[train]
    mean = ref.mean(axis=0)
    std = (ref - mean).std(axis=0)
    const = is_constant(mean, std)
    if const.any():
        warnings.warn(
            f"{what}: {int(const.sum())} column(s) are constant on the training samples "
            f"(first: {np.flatnonzero(const)[:5].tolist()}); they are centred, not scaled",
            stacklevel=2,
        )
        std = np.where(const, 1.0, std)
    return ((a64 - mean) / std).astype(np.float32), mean, std
