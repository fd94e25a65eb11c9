"""Closed-form inherent components to set beside the learned one."""
from __future__ import annotations

import numpy as np
import torch

from ..jacobian import JacobianSource, median_jacobian, weighted_mean_jacobian


def mean_jacobian(source: JacobianSource, progress: bool = False) -> np.ndarray:
    """Jbar = (1/N) sum_k J_k, (n_units, n_features). For Gaussian inputs E[grad f] is also
    the best linear fit of f (Stein's lemma)."""
    return weighted_mean_jacobian(source, progress=progress)


def elementwise_median(source: JacobianSource, progress: bool = False) -> np.ndarray:
    """Element-wise median of J_k over samples, (n_units, n_features)."""
    return median_jacobian(source, progress=progress)


def least_squares_distillation(X, outputs) -> np.ndarray:
    """W* = argmin_W sum_k ||f(x_k) - W x_k||^2 (no intercept), (n_units, n_features)."""
    X = np.asarray(X, dtype=np.float64)
    F = outputs.cpu() if isinstance(outputs, torch.Tensor) else outputs
    F = np.asarray(F, dtype=np.float64)
    if X.shape[0] != F.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but outputs have {F.shape[0]}")
    W, *_ = np.linalg.lstsq(X, F, rcond=None)
    return W.T
