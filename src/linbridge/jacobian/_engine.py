"""Structured streaming reductions for the MLP family (the fast path).

Nothing here forms more than one (unit sub-chunk x n_features) slice of one sample's
Jacobian at a time, and the slice is reduced while it is still in cache:

* per sample k, J_k - R = c0 M - R + alpha W_L[:, S_k] A_k[S_k] is ONE GEMM over the
  active (or, for one ReLU layer, the smaller of the active and inactive) hidden units,
  with the centring on the first reference fused into it (``addmm``);
* L1 and L2 norms of that slice are reduced straight away (float64 accumulators);
  further references differ by a constant, R1 - Rr, and J itself by R1;
* J_k x_k and J_k P (the Euler split, the projections ΔJ_k P) are linear in J_k and
  come from a forward-mode pass in float64: W_L (A_k [x_k, P]), never J_k itself;
* the (weighted) mean Jacobian is W_L (sum_k w_k A_k): for one hidden layer a single
  GEMM W_L diag(sum_k w_k d_k) W_1.

Loop order: unit macro-chunks (whose per-unit tensors the memory budget sizes) outer,
sample chunks next, then samples and unit sub-chunks (sized for the CPU cache).
"""
from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ._analytic import MLPPlan

#: unit sub-chunk of the inner GEMM + reductions: (SUB x n_features) float32 stays in L2
SUB_UNITS = 256
#: default sample chunk for forward passes and tangents
SAMPLE_CHUNK = 128
MB = 2 ** 20


@dataclass
class EnginePlan:
    sample_chunk: int
    unit_chunk: int
    sub_units: int
    result_bytes: int
    workers: int = 1


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def plan_chunks(plan: MLPPlan, n_samples: int, budget_mb: float, result_bytes: int,
                n_refs: int, n_tangents: int, sample_chunk: int | None = None,
                unit_chunk: int | None = None, sub_units: int | None = None) -> EnginePlan:
    """Chunk sizes so that results + working memory stay within the budget."""
    V, H, D = plan.n_units, plan.width, plan.n_features
    it = _itemsize(plan.dtype)
    widths = sum(W.shape[0] for W in plan.W if W is not None)
    n = min(n_samples, sample_chunk or SAMPLE_CHUNK)
    n_bases = 2 if plan.two_valued is not None else 0
    n_deltas = max(n_refs - 1, 0)
    # per unit of a macro-chunk: W_L^T columns, gathered W_L^T, R1, bases, deltas (+ f64 temps
    # while building them), R_r P
    workers = max(1, torch.get_num_threads()) if plan.device.type == "cpu" else 1
    per_unit = (1 + workers) * it * H + it * D * (1 + n_bases) + 8 * D * n_deltas + 8 * n_tangents * n_refs
    # per sample of a sample chunk: derivatives, activations, tangents (f64, two copies)
    per_sample = it * (widths + H) + 16 * H * max(n_tangents, 1) + 8 * (n_tangents + 1) * 2
    sub = min(sub_units or (SUB_UNITS if plan.device.type == "cpu" else V), V)
    fixed = (workers * (it * sub * D + 24 * sub * D + 8 * sub * H + it * H * D + 8 * H * D)
             + 8 * n * sub * max(n_tangents, 1)  # slices, f64 W_L slice, one A_k per worker
             + 1024 * (it * H + 24 * D))  # transients while building the bases
    budget = budget_mb * MB
    left = budget - result_bytes
    if left < 0.25 * budget:  # the results eat the budget: keep a sane working set anyway
        warnings.warn(
            f"memory_budget_mb={budget_mb:g} is too small for these results: the per-(sample, unit) "
            f"arrays take {result_bytes / MB:.1f} MB; working memory is held to a quarter of the "
            f"budget, so the peak exceeds it. Raise memory_budget_mb or ask for fewer stats.",
            ResourceWarning, stacklevel=4)
        left = 0.25 * budget
    if left < fixed + n * per_sample + per_unit and sample_chunk is None:
        n = max(1, min(n, int((left - fixed - per_unit) // max(per_sample, 1))))
    if left < fixed + n * per_sample + per_unit:
        warnings.warn(
            f"memory_budget_mb={budget_mb:g} is too small for the minimal working set "
            f"({(fixed + n * per_sample + per_unit) / MB:.1f} MB); using the smallest chunks",
            ResourceWarning, stacklevel=4)
        left = fixed + n * per_sample + per_unit
    if unit_chunk is None:
        U = int((left - fixed - n * per_sample) // per_unit)
        U = max(1, min(V, U))
    else:
        U = max(1, min(V, int(unit_chunk)))
    sub = min(sub, U)
    return EnginePlan(n, U, sub, int(result_bytes), workers)


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, disable=None if progress else True, leave=False)


@torch.no_grad()
def mean_jacobian(plan: MLPPlan, X: torch.Tensor, w: torch.Tensor, sample_chunk: int,
                  unit_chunk: int, progress: bool = False) -> torch.Tensor:
    """W_L (sum_k w_k A_k) in float64, (V, D)."""
    N, D = X.shape
    H = plan.width
    f64 = torch.float64
    bar = _bar(math.ceil(N / sample_chunk), "mean Jacobian", progress)
    if plan.depth1:  # A_k = diag(d_k) W_1: the mean is diag(sum_k w_k d_k) W_1
        dbar = torch.zeros(H, dtype=f64, device=X.device)
        for s0 in range(0, N, sample_chunk):
            _, derivs = plan.forward(X[s0:s0 + sample_chunk])
            dbar += w[s0:s0 + sample_chunk] @ derivs[1].to(f64)
            bar.update()
        Abar = dbar.unsqueeze(1) * plan.W[0].to(f64)
    else:
        Abar = torch.zeros(H, D, dtype=f64, device=X.device)
        for s0 in range(0, N, sample_chunk):
            xs = X[s0:s0 + sample_chunk]
            _, derivs = plan.forward(xs)
            for k in range(xs.shape[0]):
                rep = plan.front_rep(derivs, k)
                wk = float(w[s0 + k]) * rep.alpha
                if rep.idx is None:
                    Abar.add_(rep.rows.to(f64), alpha=wk)
                else:
                    Abar.index_add_(0, rep.idx, rep.rows.to(f64), alpha=wk)
            bar.update()
    bar.close()
    V = plan.n_units
    out = torch.empty(V, D, dtype=f64, device=X.device)
    step = min(unit_chunk, 1024)  # a float64 copy of 1024 rows of W_L at a time, no temporaries
    for u0 in range(0, V, step):
        torch.matmul(plan.WL[u0:u0 + step].to(f64), Abar, out=out[u0:u0 + step])
    return out


@torch.no_grad()
def tangents(plan: MLPPlan, x: torch.Tensor, derivs: list, extra: torch.Tensor | None
             ) -> torch.Tensor:
    """A_k [x_k, extra] for every sample of the chunk, float64: (n, H, 1 + e)."""
    f64 = torch.float64
    T = None
    for st, W, d in zip(plan.front, plan.W, derivs):
        if st.kind == "linear":
            W64 = W.to(f64)
            if T is None:
                T = (x.to(f64) @ W64.T).unsqueeze(-1)
                if extra is not None:
                    T = torch.cat([T, (W64 @ extra).unsqueeze(0).expand(x.shape[0], -1, -1)], -1)
            else:
                T = torch.matmul(W64, T)
        elif st.kind == "act":
            T = T * d.to(f64).unsqueeze(-1)
        else:
            T = T + d.to(f64).unsqueeze(-1) * torch.matmul(W.to(f64), T)
    return T


@torch.no_grad()
def deviation_statistics(plan: MLPPlan, X: torch.Tensor, refs: dict[str, np.ndarray],
                         P: torch.Tensor | None, want: set[str], out: dict, ep: EnginePlan,
                         progress: bool = False) -> None:
    """Fill the requested per-(sample, unit) statistics into the arrays of ``out``.

    out: 'jac_l2sq', 'jx', 'outputs' -> (N, V) float64 numpy arrays; 'l1', 'l2sq',
    'down', 'linear' -> dicts name -> arrays.
    """
    N, D = X.shape
    V = plan.n_units
    dt, dev, f64 = plan.dtype, plan.device, torch.float64
    names = list(refs)
    norms = want & {"jac_l2sq", "l1", "l2sq"}
    need_tan = bool(want & {"jx", "down"})
    on_cpu = dev.type == "cpu"
    # destination tensors: on CPU the result arrays themselves (written in place); on an
    # accelerator a staging tensor per sample chunk, copied back once per chunk
    host: dict[tuple[str, str | None], torch.Tensor] = {}
    for key, val in out.items():
        if isinstance(val, dict):
            for n, a in val.items():
                host[(key, n)] = torch.from_numpy(a)
        elif val is not None:
            host[(key, None)] = torch.from_numpy(val)

    complement = plan.two_valued is not None
    nU = math.ceil(V / ep.unit_chunk)
    nS = math.ceil(N / ep.sample_chunk)
    bar = _bar(nU * nS, "Jacobian statistics", progress)
    local = threading.local()

    def buffers():
        if not hasattr(local, "buf"):
            local.buf = torch.empty(ep.sub_units, D, dtype=dt, device=dev)
            local.b64 = torch.empty(ep.sub_units, D, dtype=f64, device=dev)  # centred slice
            local.c64, local.t64 = torch.empty_like(local.b64), torch.empty_like(local.b64)
        return local.buf, local.b64, local.c64, local.t64

    X64 = X.to(f64) if "linear" in want else None
    lock = threading.Lock()
    with _Workers(ep.workers if on_cpu else 1) as run:
        for u0 in range(0, V, ep.unit_chunk):
            u1 = min(V, u0 + ep.unit_chunk)
            Ucur = u1 - u0
            subs = [(a, min(Ucur, a + ep.sub_units)) for a in range(0, Ucur, ep.sub_units)]
            WLU = plan.WL[u0:u1]
            WLT = WLU.T.contiguous() if norms else None  # (H, U): gathers are row copies
            R64 = {n: torch.as_tensor(refs[n][u0:u1], device=dev) for n in names}
            R1 = R64[names[0]].to(dt) if names and norms else None
            # other references differ from the first by a constant: (J - R1) + (R1 - Rr), f64
            deltas = {n: R64[names[0]] - R64[n] for n in names[1:]} if norms else {}
            bases: dict[float, tuple[torch.Tensor | None, float]] = {}

            def base_for(c0: float):
                """(input, beta) of the addmm that yields J - R1 (or J without references)."""
                with lock:
                    if c0 in bases:
                        return bases[c0]
                    if c0 == 0.0:
                        bases[c0] = (R1, -1.0) if R1 is not None else (None, 0.0)
                        return bases[c0]
                    # c0 M - R1 for every c0 this layer can need; M itself is not kept
                    cs = sorted(set(plan.two_valued) - {0.0})
                    new = {c: torch.empty(Ucur, D, dtype=dt, device=dev) for c in cs}
                    for a in range(0, Ucur, 1024):
                        M = (WLU[a:a + 1024] @ plan.W[0]).to(f64)
                        for c in cs:
                            bc = c * M
                            if R1 is not None:
                                bc -= R64[names[0]][a:a + 1024]
                            new[c][a:a + 1024] = bc
                    bases.update({c: (t, 1.0) for c, t in new.items()})
                    return bases[c0]

            RP = {n: R64[n] @ P for n in names} if "down" in want and P is not None else {}
            for s0 in range(0, N, ep.sample_chunk):
                s1 = min(N, s0 + ep.sample_chunk)
                n_cur = s1 - s0
                if on_cpu:
                    dst = {k: t[s0:s1, u0:u1] for k, t in host.items()}
                else:
                    dst = {k: torch.empty((n_cur, Ucur) + tuple(t.shape[2:]), dtype=f64, device=dev)
                           for k, t in host.items()}
                x = X[s0:s1]
                h, derivs = plan.forward(x)
                if "outputs" in want:
                    dst[("outputs", None)].copy_(torch.nn.functional.linear(
                        h, WLU, None if plan.bL is None else plan.bL[u0:u1]))
                if "linear" in want:
                    for n in names:
                        torch.matmul(X64[s0:s1], R64[n].T, out=dst[("linear", n)])
                if need_tan:
                    T = tangents(plan, x, derivs, P if "down" in want else None)

                    def tan_task(ab):
                        a, b = ab
                        o = torch.matmul(WLU[a:b].to(f64), T)  # (n, sub, 1 + e)
                        if "jx" in want:
                            dst[("jx", None)][:, a:b] = o[..., 0]
                        if "down" in want:
                            for n in names:
                                torch.sub(o[..., 1:], RP[n][a:b], out=dst[("down", n)][:, a:b])

                    run(tan_task, subs)
                if norms:
                    n0 = names[0] if names else None

                    def sample_task(k):
                        rep = plan.front_rep(derivs, k, complement)
                        L = WLT if rep.idx is None else WLT.index_select(0, rep.idx)
                        inp, beta = base_for(rep.c0)
                        buf, b64, c64, t64 = buffers()
                        for a, b in subs:
                            o, o64, c, t = buf[:b - a], b64[:b - a], c64[:b - a], t64[:b - a]
                            if inp is None:
                                torch.mm(L[:, a:b].T, rep.rows, out=o)
                                if rep.alpha != 1.0:
                                    o.mul_(rep.alpha)
                            else:
                                torch.addmm(inp[a:b], L[:, a:b].T, rep.rows, beta=beta,
                                            alpha=rep.alpha, out=o)
                            # o is J_k - R1 (or J_k): reduce it while it is in cache, in float64
                            o64.copy_(o)
                            if n0 is not None:
                                _norms(o64, t, want, dst, n0, k, a, b)
                                for n in names[1:]:
                                    _norms(torch.add(o64, deltas[n][a:b], out=c), t, want, dst, n,
                                           k, a, b)
                                if "jac_l2sq" in want:
                                    _l2sq(torch.add(o64, R64[n0][a:b], out=c),
                                          dst[("jac_l2sq", None)][k, a:b])
                            elif "jac_l2sq" in want:
                                _l2sq(o64, dst[("jac_l2sq", None)][k, a:b])

                    run(sample_task, range(n_cur))
                if not on_cpu:
                    for k, t in host.items():
                        t[s0:s1, u0:u1].copy_(dst[k])
                bar.update()
    bar.close()


class _Workers:
    """Sample-parallel execution on CPU: w Python threads, each running single-threaded
    torch ops (torch releases the GIL). Unlike intra-op threading this needs no barrier
    per op, which matters for many mid-sized ops and on a shared, oversubscribed machine.
    Inside the context torch runs with one intra-op thread; the setting is restored after.
    """

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.pool = None

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(1)
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="linbridge-jac")
        return self

    def __call__(self, fn, items) -> None:
        if self.pool is None:
            for it in items:
                fn(it)
        else:
            for _ in self.pool.map(fn, items):  # re-raises the first exception
                pass

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            torch.set_num_threads(self.threads)
        return False


# torch's reductions with a dtype= cast are slow on CPU; a copy into a float64 buffer
# followed by plain float64 reductions is several times faster
def _l2sq(o64: torch.Tensor, target: torch.Tensor) -> None:
    torch.linalg.vector_norm(o64, 2, dim=1, out=target)
    target.square_()


def _norms(o64: torch.Tensor, tmp: torch.Tensor, want: set, dst: dict, name: str, k: int,
           a: int, b: int) -> None:
    if "l1" in want:
        torch.sum(torch.abs(o64, out=tmp), 1, out=dst[("l1", name)][k, a:b])
    if "l2sq" in want:
        _l2sq(o64, dst[("l2sq", name)][k, a:b])
