"""Jacobian sources: the interface between jacobian/ and every stage above it.

A source knows its inputs X (n_samples, n_features) and yields blocks of the
Jacobian tensor (n_samples, n_units, n_features) on request, so the learner and
the metrics never need the whole tensor and never care where blocks come from
(an analytic product, torch.func, a constant matrix, or an array).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import check_finite
from ._analytic import MLPPlan, parse_mlp
from ._autodiff import autodiff_jacobian
from ._checks import check_eval_mode

Index = slice | np.ndarray | torch.Tensor


def _as_index(idx: Index) -> slice | torch.Tensor:
    if isinstance(idx, slice):
        return idx
    return torch.as_tensor(np.asarray(idx), dtype=torch.long)


class JacobianSource:
    """Base class. Subclasses implement ``block`` and ``outputs``.

    memory_budget_mb bounds the size of the blocks that ``iter_blocks`` yields
    (the block itself plus the working memory of producing it).
    """

    X: torch.Tensor
    n_units: int
    dtype: torch.dtype = torch.float32

    def __init__(self, X, memory_budget_mb: float = 1024.0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        X = np.asarray(X) if not isinstance(X, torch.Tensor) else X
        check_finite(np.asarray(X), "Jacobian inputs X", ("sample", "feature"))
        self.device = torch.device(device)
        self.dtype = dtype
        self.X = torch.as_tensor(X, dtype=dtype, device=self.device)
        if self.X.ndim != 2:
            raise ValueError(f"X must be (n_samples, n_features), got {tuple(self.X.shape)}")
        self.memory_budget_mb = float(memory_budget_mb)

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_samples, self.n_units, self.n_features)

    def block(self, samples: Index, units: Index = slice(None)) -> torch.Tensor:
        """J for the selected samples and units: (n_sel_samples, n_sel_units, n_features)."""
        raise NotImplementedError

    def outputs(self) -> torch.Tensor:
        """f(X): (n_samples, n_units)."""
        raise NotImplementedError

    def _bytes_per_entry(self) -> int:
        """Bytes of working memory per (sample, unit) pair of a block."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return itemsize * self.n_features * 3  # block + float64 copies in reductions

    def chunk_sizes(self, sample_chunk: int | None = None, unit_chunk: int | None = None,
                    budget_mb: float | None = None) -> tuple[int, int]:
        """Chunk sizes whose blocks fit the memory budget (or ``budget_mb`` when given)."""
        budget = (self.memory_budget_mb if budget_mb is None else budget_mb) * 2 ** 20
        pairs = max(1, int(budget // self._bytes_per_entry()))
        if unit_chunk is None:
            unit_chunk = min(self.n_units, max(1, pairs // max(1, min(self.n_samples, 32))))
        if sample_chunk is None:
            sample_chunk = max(1, min(self.n_samples, pairs // unit_chunk))
        return int(sample_chunk), int(unit_chunk)

    def iter_blocks(self, sample_chunk: int | None = None, unit_chunk: int | None = None
                    ) -> Iterator[tuple[slice, slice, torch.Tensor]]:
        """Yield (sample slice, unit slice, block) covering the whole tensor, unit chunks outer."""
        sc, uc = self.chunk_sizes(sample_chunk, unit_chunk)
        for u0 in range(0, self.n_units, uc):
            us = slice(u0, min(u0 + uc, self.n_units))
            for s0 in range(0, self.n_samples, sc):
                ss = slice(s0, min(s0 + sc, self.n_samples))
                yield ss, us, self.block(ss, us)

    def n_blocks(self, sample_chunk: int | None = None, unit_chunk: int | None = None) -> int:
        sc, uc = self.chunk_sizes(sample_chunk, unit_chunk)
        return math.ceil(self.n_samples / sc) * math.ceil(self.n_units / uc)

    def materialize(self) -> "ArrayJacobianSource":
        """The whole tensor in memory (small problems only)."""
        J = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for ss, us, blk in self.iter_blocks():
            J[ss, us] = blk
        return ArrayJacobianSource(J, self.X, outputs=self.outputs(),
                                   memory_budget_mb=self.memory_budget_mb)


class ModelJacobianSource(JacobianSource):
    """Jacobians of a trained torch model: analytic for the MLP family, torch.func otherwise.

    method: 'auto' (analytic when the model is a supported MLP), 'analytic', 'jacfwd',
    'jacrev' or 'autodiff' (torch.func, mode chosen per chunk). The model is never
    modified: the analytic path keeps its own views of the weights, the torch.func path
    a converted copy when dtype or device differ.
    """

    def __init__(self, model: nn.Module, X, method: str = "auto", memory_budget_mb: float = 1024.0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__(X, memory_budget_mb, dtype, device)
        check_eval_mode(model)
        for name, prm in model.named_parameters():  # NaN weights would give NaN Jacobians
            if not torch.isfinite(prm).all():
                raise ValueError(f"model parameter '{name}' {tuple(prm.shape)} contains "
                                 f"{int((~torch.isfinite(prm)).sum())} non-finite value(s)")
        self.steps = parse_mlp(model)
        if method == "auto":
            method = "analytic" if self.steps is not None else "autodiff"
        if method == "analytic" and self.steps is None:
            raise ValueError(f"{type(model).__name__} is not a supported MLP; use method='autodiff'")
        if method not in ("analytic", "jacfwd", "jacrev", "autodiff"):
            raise ValueError(f"unknown Jacobian method {method!r}")
        self.method = method
        self.plan: MLPPlan | None = None
        if method == "analytic":
            self.plan = MLPPlan(self.steps, dtype, self.device)
            if self.plan.n_features != self.n_features:
                raise ValueError(f"the model takes {self.plan.n_features} features but X has "
                                 f"{self.n_features}")
            self.model = model
            self.n_units = int(self.plan.n_units)
        else:
            self.model = _converted(model, dtype, self.device)
            with torch.no_grad():
                self.n_units = int(self.model(self.X[:1]).shape[1])
        self._outputs: torch.Tensor | None = None

    def _bytes_per_entry(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        width = self.n_features
        if self.steps is not None:
            width = max([width] + [st.linear.out_features for st in self.steps if st.linear is not None])
        return itemsize * (2 * width + 2 * self.n_features)

    def engine_chunks(self, result_bytes: int, n_refs: int, n_tangents: int,
                      sample_chunk: int | None = None, unit_chunk: int | None = None):
        """Chunk sizes of the structured reductions (MLP sources only)."""
        from ._engine import plan_chunks

        return plan_chunks(self.plan, self.n_samples, self.memory_budget_mb, result_bytes,
                           n_refs, n_tangents, sample_chunk, unit_chunk)

    @torch.no_grad()
    def block(self, samples: Index, units: Index = slice(None)) -> torch.Tensor:
        x = self.X[_as_index(samples)]
        u = _as_index(units)
        if isinstance(u, torch.Tensor):
            u = u.to(self.device)
        if self.method == "analytic":
            return self.plan.jacobian(x, u)
        mode = "auto" if self.method == "autodiff" else self.method
        with torch.enable_grad():
            return autodiff_jacobian(self.model, x, u, mode).detach()

    @torch.no_grad()
    def outputs(self) -> torch.Tensor:
        """f(X), (n_samples, n_units); computed in sample chunks on first use and cached."""
        if self._outputs is None:
            f = self.plan.outputs if self.plan is not None else self.model
            n = max(1, int(64 * 2 ** 20 // (4 * max(self.n_units, 1))))
            self._outputs = torch.cat([f(self.X[s:s + n]) for s in range(0, self.n_samples, n)])
        return self._outputs


def _converted(model: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The model itself when it already has this dtype and device, else a converted copy."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device == device and (t.dtype == dtype or not t.is_floating_point()) for t in tensors):
        return model
    import copy

    return copy.deepcopy(model).to(device=device, dtype=dtype)


class LinearJacobianSource(JacobianSource):
    """A linear encoder: the same (n_units, n_features) Jacobian for every sample."""

    def __init__(self, weights, X, memory_budget_mb: float = 1024.0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__(X, memory_budget_mb, dtype, device)
        check_finite(np.asarray(weights), "linear encoder weights", ("unit", "feature"))
        self.W = torch.as_tensor(np.asarray(weights), dtype=dtype, device=self.device)
        if self.W.shape[1] != self.n_features:
            raise ValueError(f"weights are {tuple(self.W.shape)} but X has {self.n_features} features")
        self.n_units = int(self.W.shape[0])

    def block(self, samples: Index, units: Index = slice(None)) -> torch.Tensor:
        n = self.X[_as_index(samples)].shape[0]
        return self.W[_as_index(units)].unsqueeze(0).expand(n, -1, -1)

    def outputs(self) -> torch.Tensor:
        return self.X @ self.W.T


class ArrayJacobianSource(JacobianSource):
    """A Jacobian tensor already in memory (tests, small problems, exact functions)."""

    def __init__(self, J, X, outputs=None, memory_budget_mb: float = 1024.0,
                 dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
        J = torch.as_tensor(J, device=device)
        super().__init__(X, memory_budget_mb, dtype or J.dtype, device)
        self.J = J.to(self.dtype)
        if self.J.ndim != 3 or self.J.shape[0] != self.n_samples or self.J.shape[2] != self.n_features:
            raise ValueError(
                f"Jacobians are {tuple(self.J.shape)}; expected (n_samples={self.n_samples}, "
                f"n_units, n_features={self.n_features})"
            )
        if not torch.isfinite(self.J).all():
            check_finite(self.J.cpu().numpy(), "Jacobians", ("sample", "unit", "feature"))
        self.n_units = int(self.J.shape[1])
        self._outputs = None if outputs is None else torch.as_tensor(outputs, dtype=self.dtype)

    def block(self, samples: Index, units: Index = slice(None)) -> torch.Tensor:
        return self.J[_as_index(samples)][:, _as_index(units)]

    def outputs(self) -> torch.Tensor:
        if self._outputs is None:
            raise ValueError("this ArrayJacobianSource was built without outputs f(X)")
        return self._outputs


def as_source(model_or_weights, X, **kwargs) -> JacobianSource:
    """A source for a torch module, a (n_units, n_features) weight matrix, or a Jacobian array."""
    if isinstance(model_or_weights, JacobianSource):
        return model_or_weights
    if isinstance(model_or_weights, nn.Module):
        return ModelJacobianSource(model_or_weights, X, **kwargs)
    arr = np.asarray(model_or_weights) if not isinstance(model_or_weights, torch.Tensor) else model_or_weights
    if arr.ndim == 2:
        return LinearJacobianSource(arr, X, **kwargs)
    return ArrayJacobianSource(arr, X, **kwargs)
