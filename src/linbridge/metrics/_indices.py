"""Nonlinearity indices from per-sample Jacobian deviations.

JNE (Jacobian-based nonlinearity evaluation, arXiv 2510.13688): with
s_kv = ||J_k[v] - Jbar[v]||_1, JNE_v = population std over k of s_kv and
JNE-SS_kv = (s_kv - mean_k s_kv)^2. Its blind spot: it measures the spread of the
deviation *sizes*; for relu(w.x) active half the time every |deviation| is equal and
JNE = 0. Our default index, the Jacobian nonlinear fraction
    NF_v = sum_k ||J_k[v] - Jbar[v]||^2 / sum_k ||J_k[v]||^2,
is 0 exactly for a linear unit, bounded by 1, and has no such blind spot.
"""
from __future__ import annotations

import numpy as np


def jne(dev_l1: np.ndarray) -> np.ndarray:
    """(n_samples, n_units) L1 deviations from the mean Jacobian -> (n_units,)."""
    s = np.asarray(dev_l1, dtype=np.float64)
    return np.sqrt(((s - s.mean(0)) ** 2).mean(0))


def jne_ss(dev_l1: np.ndarray) -> np.ndarray:
    """Sample-specific JNE, (n_samples, n_units): squared deviation of s_kv from its mean."""
    s = np.asarray(dev_l1, dtype=np.float64)
    return (s - s.mean(0)) ** 2


def nonlinear_fraction(dev_l2sq: np.ndarray, jac_l2sq: np.ndarray) -> np.ndarray:
    """Jacobian nonlinear fraction per unit, in [0, 1]; 0 where every Jacobian is 0."""
    num = np.asarray(dev_l2sq, dtype=np.float64).sum(0)
    den = np.asarray(jac_l2sq, dtype=np.float64).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0)


def afd(dev_down: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Absolute first derivative: |slope| of a line fitted to the projected mapping
    bias along a 1-D ordering of the samples.

    dev_down : (n_samples, n_units) or (n_samples, n_units, embed_dim)
    order : (n_samples,) position of each sample along the ordering (e.g. a 1-D t-SNE
        coordinate's rank); positions are rescaled to [0, 1], so the slope is the change
        over the whole ordering. With embed_dim > 1 the slopes' Euclidean norm is used.
    """
    d = np.asarray(dev_down, dtype=np.float64)
    if d.ndim == 2:
        d = d[..., None]
    rank = np.argsort(np.argsort(np.asarray(order)))
    if rank.shape[0] != d.shape[0]:
        raise ValueError(f"order has {rank.shape[0]} samples, mapping biases {d.shape[0]}")
    t = rank / max(1, rank.size - 1)
    tc = t - t.mean()
    slope = np.einsum("n,nue->ue", tc, d - d.mean(0)) / (tc ** 2).sum()
    return np.sqrt((slope ** 2).sum(-1))


def euler_split(jx: np.ndarray, X: np.ndarray, inherent: np.ndarray, outputs: np.ndarray
                ) -> dict[str, np.ndarray]:
    """Split predictions f(x_k) = J_inh x_k + dJ_k x_k + remainder, per (sample, unit).

    The remainder f(x) - J(x) x is zero only for bias-free positively homogeneous nets.
    """
    linear = np.asarray(X, dtype=np.float64) @ np.asarray(inherent, dtype=np.float64).T
    return {"linear": linear, "bias": np.asarray(jx) - linear,
            "remainder": np.asarray(outputs, dtype=np.float64) - np.asarray(jx)}
