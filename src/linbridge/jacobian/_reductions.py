"""Streaming reductions over (sample chunk x unit chunk) blocks, accumulated in float64.

None of these holds the whole (n_samples, n_units, n_features) tensor. The memory
budget of the source (``memory_budget_mb``) bounds what a reduction allocates: its
per-(sample, unit) result arrays first, the rest is working memory. Peak memory does
not grow with n_samples beyond the result arrays (8 bytes per sample and unit each).

MLP sources take the structured fast path (``_engine``); every other source
(torch.func fallback, arrays, stores) is reduced block by block here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _engine
from ._source import JacobianSource, LinearJacobianSource, ModelJacobianSource

#: what ``deviation_statistics`` computes by default ("down" only with a projection)
DEFAULT_STATS = ("jac_l2sq", "jx", "l1", "l2sq", "down")
ALL_STATS = ("jac_l2sq", "jx", "l1", "l2sq", "down", "euler")


def _bar(source: JacobianSource, desc: str, progress: bool, **chunks):
    return tqdm(source.iter_blocks(**chunks), total=source.n_blocks(**chunks), desc=desc,
                disable=None if progress else True, leave=False)


def _check_chunks(chunks: dict) -> dict:
    bad = set(chunks) - {"sample_chunk", "unit_chunk"}
    if bad:
        raise TypeError(f"unexpected keyword(s) {sorted(bad)}; chunks are sample_chunk, unit_chunk")
    return chunks


def _weights(N: int, weights, device) -> torch.Tensor:
    if weights is None:
        w = torch.full((N,), 1.0 / N, dtype=torch.float64)
    else:
        w = torch.as_tensor(np.asarray(weights), dtype=torch.float64).flatten()
        if w.shape[0] != N:
            raise ValueError(f"weights have {w.shape[0]} entries but the source has {N} samples")
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
        if not w.sum() > 0:
            raise ValueError("weights sum to zero")
        w = w / w.sum()
    return w.to(device)


def weighted_mean_jacobian(source: JacobianSource, weights=None, progress: bool = False,
                           **chunks) -> np.ndarray:
    """sum_k w_k J_k with weights summing to one (uniform: the sample-mean Jacobian).

    Returns (n_units, n_features) float64. For MLP sources this is W_L (sum_k w_k A_k),
    which costs O(N H^2 D + V H D) instead of O(N V H D).
    """
    _check_chunks(chunks)
    N = source.n_samples
    w = _weights(N, weights, source.device)
    if isinstance(source, ModelJacobianSource) and source.plan is not None:
        ep = source.engine_chunks(0, 0, 0, **chunks)
        return _engine.mean_jacobian(source.plan, source.X, w, ep.sample_chunk, ep.unit_chunk,
                                     progress).cpu().numpy()
    if isinstance(source, LinearJacobianSource):
        return source.W.to(torch.float64).cpu().numpy().copy()
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
    outputs, linear[name] : f(x_k) and R[v] . x_k (with stats 'euler'), for the Euler split
        f(x_k) = R x_k + (J_k - R) x_k + (f(x_k) - J_k x_k)
    A field not asked for (``stats``) is None (or an empty dict).
    """

    jac_l2sq: np.ndarray | None
    jx: np.ndarray | None
    l1: dict[str, np.ndarray] = field(default_factory=dict)
    l2sq: dict[str, np.ndarray] = field(default_factory=dict)
    down: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: np.ndarray | None = None
    linear: dict[str, np.ndarray] = field(default_factory=dict)

    def jne(self, name: str = "mean") -> np.ndarray:
        """JNE per unit: population std over samples of s_kv = ||J_k[v] - R[v]||_1, (n_units,)."""
        s = self.l1[name]
        return np.sqrt(((s - s.mean(0)) ** 2).mean(0))

    def jne_ss(self, name: str = "mean") -> np.ndarray:
        """JNE-SS per (sample, unit): (s_kv - mean_k s_kv)^2."""
        s = self.l1[name]
        return (s - s.mean(0)) ** 2

    def nonlinear_fraction(self, name: str = "mean") -> np.ndarray:
        """sum_k ||J_k[v] - R[v]||^2 / sum_k ||J_k[v]||^2 per unit (0 where J is 0)."""
        num, den = self.l2sq[name].sum(0), self.jac_l2sq.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, 0.0)

    def euler(self, name: str = "mean") -> dict[str, np.ndarray]:
        """The Euler split of the outputs, per (sample, unit): f = linear + bias + remainder.

        linear = R x_k, bias = (J_k - R) x_k, remainder = f(x_k) - J_k x_k (0 for bias-free
        positively homogeneous nets, e.g. ReLU MLPs without biases).
        """
        if self.outputs is None or name not in self.linear or self.jx is None:
            raise ValueError("compute deviation_statistics with stats including 'euler' and 'jx'")
        return {"linear": self.linear[name], "bias": self.jx - self.linear[name],
                "remainder": self.outputs - self.jx}


def _result_layout(N: int, V: int, names: list[str], e: int, want: set[str]) -> dict:
    z = lambda *s: np.zeros(s, dtype=np.float64)  # noqa: E731
    out: dict = {"jac_l2sq": z(N, V) if "jac_l2sq" in want else None,
                 "jx": z(N, V) if "jx" in want else None,
                 "l1": {n: z(N, V) for n in names} if "l1" in want else {},
                 "l2sq": {n: z(N, V) for n in names} if "l2sq" in want else {},
                 "down": {n: z(N, V, e) for n in names} if "down" in want else {},
                 "outputs": z(N, V) if "outputs" in want else None,
                 "linear": {n: z(N, V) for n in names} if "linear" in want else {}}
    return out


def _nbytes(out: dict) -> int:
    total = 0
    for v in out.values():
        if isinstance(v, dict):
            total += sum(a.nbytes for a in v.values())
        elif v is not None:
            total += v.nbytes
    return total


def deviation_statistics(source: JacobianSource, references: dict[str, np.ndarray],
                         projection: np.ndarray | None = None, progress: bool = False,
                         stats=None, **chunks) -> DeviationStats:
    """One streaming pass computing deviation norms of every J_k from each reference.

    references : name -> (n_units, n_features); projection : (n_features, embed_dim).
    stats : which fields to compute, among 'jac_l2sq', 'jx', 'l1', 'l2sq', 'down' (needs a
        projection) and 'euler' (outputs and R x_k); default all but 'euler'.
    chunks : sample_chunk / unit_chunk override the sizes the memory budget gives.
    """
    _check_chunks(chunks)
    N, V, D = source.shape
    want = set(DEFAULT_STATS if stats is None else stats)
    unknown = want - set(ALL_STATS)
    if unknown:
        raise ValueError(f"unknown stats {sorted(unknown)}; choose from {ALL_STATS}")
    if "euler" in want:
        want |= {"outputs", "linear", "jx"}
    if projection is None:
        if stats is not None and "down" in want:
            raise ValueError("stats 'down' needs a projection")
        want.discard("down")
    refs: dict[str, np.ndarray] = {}
    for name, R in references.items():
        R = np.ascontiguousarray(np.asarray(R, dtype=np.float64))
        if R.shape != (V, D):
            raise ValueError(f"reference '{name}' is {R.shape}, expected ({V}, {D})")
        if not np.isfinite(R).all():
            raise ValueError(f"reference '{name}' contains non-finite values")
        refs[name] = R
    P = None
    if projection is not None and "down" in want:
        P = torch.as_tensor(np.asarray(projection), dtype=torch.float64, device=source.device)
        if P.ndim != 2 or P.shape[0] != D:
            raise ValueError(f"projection is {tuple(P.shape)}, expected ({D}, embed_dim)")
    e = 0 if P is None else int(P.shape[1])
    out = _result_layout(N, V, list(refs), e, want)
    if isinstance(source, ModelJacobianSource) and source.plan is not None:
        ep = source.engine_chunks(_nbytes(out), len(refs), 1 + e, **chunks)
        _engine.deviation_statistics(source.plan, source.X, refs, P, want, out, ep, progress)
    elif isinstance(source, LinearJacobianSource):
        _linear_statistics(source, refs, P, want, out)
    else:
        _block_statistics(source, refs, P, want, out, progress, _nbytes(out), **chunks)
    return DeviationStats(**out)


def _linear_statistics(source: LinearJacobianSource, refs: dict, P, want: set, out: dict) -> None:
    """J_k = W for every k: per-unit values broadcast over samples."""
    W = source.W.to(torch.float64)
    X64 = source.X.to(torch.float64)
    if out["jac_l2sq"] is not None:
        out["jac_l2sq"][:] = (W * W).sum(1).cpu().numpy()
    if out["jx"] is not None:
        out["jx"][:] = (X64 @ W.T).cpu().numpy()
    if out["outputs"] is not None:
        out["outputs"][:] = source.outputs().to(torch.float64).cpu().numpy()
    for name, R in refs.items():
        dev = W - torch.as_tensor(R, device=W.device)
        if "l1" in want:
            out["l1"][name][:] = dev.abs().sum(1).cpu().numpy()
        if "l2sq" in want:
            out["l2sq"][name][:] = (dev * dev).sum(1).cpu().numpy()
        if "down" in want:
            out["down"][name][:] = (dev @ P).cpu().numpy()
        if "linear" in want:
            out["linear"][name][:] = X64.cpu().numpy() @ R.T


def _block_statistics(source: JacobianSource, refs: dict, P, want: set, out: dict,
                      progress: bool, result_bytes: int, **chunks) -> None:
    """Any source: reduce each (sample chunk x unit chunk) block in float64."""
    if not chunks:
        budget = source.memory_budget_mb - result_bytes / 2 ** 20
        if budget < 0.25 * source.memory_budget_mb:
            warnings.warn(f"the per-(sample, unit) results take {result_bytes / 2 ** 20:.1f} MB of "
                          f"the {source.memory_budget_mb:g} MB memory budget", ResourceWarning,
                          stacklevel=3)
            budget = 0.25 * source.memory_budget_mb
        chunks = dict(zip(("sample_chunk", "unit_chunk"), source.chunk_sizes(budget_mb=budget)))
    f64 = torch.float64
    X64 = source.X.to(f64)
    R = {n: torch.as_tensor(r, device=source.device) for n, r in refs.items()}
    for ss, us, blk in _bar(source, "Jacobian statistics", progress, **chunks):
        b = blk.to(f64)
        if out["jac_l2sq"] is not None:
            out["jac_l2sq"][ss, us] = torch.linalg.vector_norm(b, 2, dim=-1).square().cpu().numpy()
        if out["jx"] is not None:
            out["jx"][ss, us] = torch.einsum("nud,nd->nu", b, X64[ss]).cpu().numpy()
        for name, Rn in R.items():
            dev = b - Rn[us]
            if "l1" in want:
                out["l1"][name][ss, us] = torch.linalg.vector_norm(dev, 1, dim=-1).cpu().numpy()
            if "l2sq" in want:
                out["l2sq"][name][ss, us] = torch.linalg.vector_norm(dev, 2, dim=-1).square().cpu().numpy()
            if "down" in want:
                out["down"][name][ss, us] = (dev @ P).cpu().numpy()
            if "linear" in want:
                out["linear"][name][ss, us] = (X64[ss] @ Rn[us].T).cpu().numpy()
    if out["outputs"] is not None:
        out["outputs"][:] = source.outputs().to(f64).cpu().numpy()


def jacobian_sketch(source: JacobianSource, left: np.ndarray, right: np.ndarray,
                    progress: bool = False, **chunks) -> np.ndarray:
    """left^T J_k right for every sample, (n_samples, a, b) float64 (a random sketch of J_k
    when left (n_units, a) and right (n_features, b) are random).

    For MLP sources this is (left^T W_L)[:, S_k] (A_k[S_k] right): O(N H (D b + a b)), no
    per-sample (V x D) product at all.
    """
    _check_chunks(chunks)
    N, V, D = source.shape
    f64 = torch.float64
    Lm = torch.as_tensor(np.asarray(left), dtype=f64, device=source.device)
    Rm = torch.as_tensor(np.asarray(right), dtype=f64, device=source.device)
    if Lm.ndim != 2 or Lm.shape[0] != V or Rm.ndim != 2 or Rm.shape[0] != D:
        raise ValueError(f"left must be ({V}, a) and right ({D}, b); got {tuple(Lm.shape)} and "
                         f"{tuple(Rm.shape)}")
    out = torch.zeros(N, Lm.shape[1], Rm.shape[1], dtype=f64, device=source.device)
    if isinstance(source, ModelJacobianSource) and source.plan is not None:
        plan = source.plan
        LW = Lm.T @ plan.WL.to(f64)  # (a, H)
        ep = source.engine_chunks(0, 0, 0, **chunks)
        for s0 in tqdm(range(0, N, ep.sample_chunk), desc="Jacobian sketch", leave=False,
                       disable=None if progress else True):
            _, derivs = plan.forward(source.X[s0:s0 + ep.sample_chunk])
            for k in range(min(ep.sample_chunk, N - s0)):
                rep = plan.front_rep(derivs, k)
                Lk = LW if rep.idx is None else LW.index_select(1, rep.idx)
                out[s0 + k] = rep.alpha * (Lk @ (rep.rows.to(f64) @ Rm))
        return out.cpu().numpy()
    for ss, us, blk in _bar(source, "Jacobian sketch", progress, **chunks):
        out[ss] += torch.einsum("ua,nud,db->nab", Lm[us], blk.to(f64), Rm)
    return out.cpu().numpy()


def median_jacobian(source: JacobianSource, progress: bool = False) -> np.ndarray:
    """Element-wise median over samples (the mean of the middle two for even N), (V, D).

    One unit chunk (all samples) at a time; the sort holds ~4 float64 copies of a block.
    """
    N, V, D = source.shape
    pairs = source.memory_budget_mb * 2 ** 20 / (D * (source.X.element_size() + 32))
    uc = int(max(1, min(V, pairs // N)))
    out = np.zeros((V, D))
    chunks = dict(sample_chunk=N, unit_chunk=uc)
    m = N // 2
    for _, us, blk in _bar(source, "median Jacobian", progress, **chunks):
        vals = blk.to(torch.float64).sort(dim=0).values
        med = vals[m] if N % 2 else 0.5 * (vals[m - 1] + vals[m])
        out[us] = med.cpu().numpy()
    return out
