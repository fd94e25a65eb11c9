"""Streaming reductions over (sample chunk x unit chunk) blocks, accumulated in float64.

None of these holds the whole (n_samples, n_units, n_features) tensor: peak memory
follows the source's memory budget, whatever n_samples is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ._source import JacobianSource


def _bar(source: JacobianSource, desc: str, progress: bool, **chunks):
    return tqdm(source.iter_blocks(**chunks), total=source.n_blocks(**chunks), desc=desc,
                disable=None if progress else True, leave=False)


def weighted_mean_jacobian(source: JacobianSource, weights=None, progress: bool = False,
                           **chunks) -> np.ndarray:
    """sum_k w_k J_k with weights summing to one (uniform: the sample-mean Jacobian).

    Returns (n_units, n_features) float64.
    """
    N = source.n_samples
    if weights is None:
        w = torch.full((N,), 1.0 / N, dtype=torch.float64)
    else:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).flatten()
        if w.shape[0] != N:
            raise ValueError(f"weights have {w.shape[0]} entries but the source has {N} samples")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
        w = w / w.sum()
    w = w.to(source.device)
    out = torch.zeros((source.n_units, source.n_features), dtype=torch.float64, device=source.device)
    for ss, us, blk in _bar(source, "mean Jacobian", progress, **chunks):
        out[us] += torch.einsum("n,nud->ud", w[ss], blk.to(torch.float64))
    return out.cpu().numpy()


@dataclass
class DeviationStats:
    """Per-(sample, unit) statistics of J_k against one or more references.

    jac_l2sq : (n_samples, n_units)  ||J_k[v]||^2
    jx       : (n_samples, n_units)  J_k[v] . x_k  (Euler: equals f(x_k) for bias-free ReLU nets)
    l1[name], l2sq[name] : (n_samples, n_units)  ||J_k[v] - R[v]||_1 and ||.||_2^2
    down[name] : (n_samples, n_units, embed_dim)  (J_k[v] - R[v]) @ P, when a projection is given
    """

    jac_l2sq: np.ndarray
    jx: np.ndarray
    l1: dict[str, np.ndarray] = field(default_factory=dict)
    l2sq: dict[str, np.ndarray] = field(default_factory=dict)
    down: dict[str, np.ndarray] = field(default_factory=dict)


def deviation_statistics(source: JacobianSource, references: dict[str, np.ndarray],
                         projection: np.ndarray | None = None, progress: bool = False,
                         **chunks) -> DeviationStats:
    """One streaming pass computing deviation norms of every J_k from each reference.

    references : name -> (n_units, n_features); projection : (n_features, embed_dim).
    """
    N, V, D = source.shape
    refs = {}
    for name, R in references.items():
        R = np.asarray(R)
        if R.shape != (V, D):
            raise ValueError(f"reference '{name}' is {R.shape}, expected ({V}, {D})")
        refs[name] = torch.as_tensor(R, dtype=torch.float64, device=source.device)
    P = None
    if projection is not None:
        P = torch.as_tensor(np.asarray(projection), dtype=torch.float64, device=source.device)
        if P.ndim != 2 or P.shape[0] != D:
            raise ValueError(f"projection is {tuple(P.shape)}, expected ({D}, embed_dim)")
    z = lambda *s: np.zeros(s, dtype=np.float64)  # noqa: E731
    stats = DeviationStats(jac_l2sq=z(N, V), jx=z(N, V))
    for name in refs:
        stats.l1[name], stats.l2sq[name] = z(N, V), z(N, V)
        if P is not None:
            stats.down[name] = z(N, V, P.shape[1])
    X64 = source.X.to(torch.float64)
    for ss, us, blk in _bar(source, "Jacobian statistics", progress, **chunks):
        b = blk.to(torch.float64)
        stats.jac_l2sq[ss, us] = (b * b).sum(-1).cpu().numpy()
        stats.jx[ss, us] = torch.einsum("nud,nd->nu", b, X64[ss]).cpu().numpy()
        for name, R in refs.items():
            dev = b - R[us]
            stats.l1[name][ss, us] = dev.abs().sum(-1).cpu().numpy()
            stats.l2sq[name][ss, us] = (dev * dev).sum(-1).cpu().numpy()
            if P is not None:
                stats.down[name][ss, us] = (dev @ P).cpu().numpy()
    return stats


def median_jacobian(source: JacobianSource, progress: bool = False) -> np.ndarray:
    """Element-wise median over samples, one unit chunk (all samples) at a time: (V, D)."""
    _, uc = source.chunk_sizes()
    uc = max(1, uc * min(source.n_samples, 32) // source.n_samples)
    out = np.zeros((source.n_units, source.n_features))
    chunks = dict(sample_chunk=source.n_samples, unit_chunk=uc)
    for _, us, blk in _bar(source, "median Jacobian", progress, **chunks):
        out[us] = blk.to(torch.float64).median(dim=0).values.cpu().numpy() if source.n_samples % 2 \
            else blk.to(torch.float64).quantile(0.5, dim=0).cpu().numpy()
    return out
