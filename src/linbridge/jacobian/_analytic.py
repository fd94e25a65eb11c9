"""Analytic Jacobians of the MLP family: J(x) = W_L D_{L-1}(x) ... D_1(x) W_1.

The activation derivatives are recorded in one forward pass. The product is formed
from the input side, one sample at a time: A_k, the Jacobian of the last hidden
layer (width H x n_features), costs O(H^2 D) per hidden layer and does not depend on
the number of units V; the last factor is one GEMM, J_k = W_L A_k (V x H x D).
Residual blocks h + act(W h) contribute (I + D W) factors.

Structure that pays:
* a ReLU zeroes the rows of A_k of its inactive units, so A_k is kept compact as
  (support indices, rows) and every later product only touches the active units;
* for one hidden layer with a two-valued derivative (ReLU, LeakyReLU), J_k =
  a M + (b - a) W_L[:, S] W_1[S] with M = W_L W_1, or equally b M - (b - a) W_L[:, S'] W_1[S']
  with S' the complement; the engine takes the smaller of S and S';
* statistics linear in J (the mean Jacobian, J_k x_k, J_k P) never need J_k itself:
  W_L (sum_k w_k A_k) and W_L (A_k x_k) are cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..encoders._mlp import Residual


def _act_derivative(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """phi'(z) for the supported elementwise activations (torch's own conventions at 0)."""
    if isinstance(act, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(act, nn.LeakyReLU):
        one = torch.ones((), dtype=z.dtype, device=z.device)
        return torch.where(z > 0, one, one * act.negative_slope)
    if isinstance(act, nn.Identity):
        return torch.ones_like(z)
    if isinstance(act, nn.Sigmoid):
        s = torch.sigmoid(z)
        return s * (1 - s)
    if isinstance(act, nn.Tanh):
        return 1 - torch.tanh(z) ** 2
    if isinstance(act, nn.SiLU):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if isinstance(act, nn.GELU):
        if act.approximate == "tanh":
            c = (2 / torch.pi) ** 0.5
            u = c * (z + 0.044715 * z ** 3)
            t = torch.tanh(u)
            return 0.5 * (1 + t) + 0.5 * z * (1 - t ** 2) * c * (1 + 3 * 0.044715 * z ** 2)
        cdf = 0.5 * (1 + torch.erf(z / 2 ** 0.5))
        pdf = torch.exp(-0.5 * z ** 2) / (2 * torch.pi) ** 0.5
        return cdf + z * pdf
    raise TypeError(f"no analytic derivative for {type(act).__name__}")


SUPPORTED_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU)


def _two_values(act: nn.Module) -> tuple[float, float] | None:
    """(a, b) when phi' takes only the values a (z <= 0) and b (z > 0)."""
    if isinstance(act, nn.ReLU):
        return 0.0, 1.0
    if isinstance(act, nn.LeakyReLU):
        return float(act.negative_slope), 1.0
    if isinstance(act, nn.Identity):
        return 1.0, 1.0
    return None


@dataclass
class _Step:
    kind: str  # "linear" | "act" | "residual"
    linear: nn.Linear | None = None
    act: nn.Module | None = None


def parse_mlp(model: nn.Module) -> list[_Step] | None:
    """The layer steps of a supported MLP, or None when the model is not one.

    Supported: an ``nn.Sequential`` of ``nn.Linear``, elementwise activations and
    ``Residual`` blocks, starting and ending with a Linear.
    """
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return None
    steps: list[_Step] = []
    for mod in model:
        if isinstance(mod, nn.Linear):
            steps.append(_Step("linear", linear=mod))
        elif isinstance(mod, SUPPORTED_ACTIVATIONS):
            steps.append(_Step("act", act=mod))
        elif (type(mod) is Residual and isinstance(mod.linear, nn.Linear)
              and isinstance(mod.act, SUPPORTED_ACTIVATIONS)):
            steps.append(_Step("residual", linear=mod.linear, act=mod.act))
        else:
            return None
    if steps[0].kind != "linear" or steps[-1].kind != "linear":
        return None
    return steps


def forward_record(steps: list[_Step], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Run the MLP, returning its output and phi'(pre-activation) for every step."""
    derivs: list[torch.Tensor | None] = []
    h = x
    for st in steps:
        if st.kind == "linear":
            h = st.linear(h)
            derivs.append(None)
        elif st.kind == "act":
            derivs.append(_act_derivative(st.act, h))
            h = st.act(h)
        else:  # residual
            z = st.linear(h)
            derivs.append(_act_derivative(st.act, z))
            h = h + st.act(z)
    return h, derivs


@dataclass
class FrontRep:
    """J_k = c0 * M + alpha * W_L[:, idx] @ rows for one sample (idx None: all of H).

    rows : (len(idx) or H, n_features). c0 is nonzero only for the one-hidden-layer
    two-valued case, where M = W_L W_1 is shared by all samples.
    """

    idx: torch.Tensor | None
    rows: torch.Tensor
    alpha: float = 1.0
    c0: float = 0.0


class MLPPlan:
    """Weights of a parsed MLP, laid out for the structured Jacobian products.

    Holds detached tensors in one dtype/device; the model itself is not modified.
    """

    def __init__(self, steps: list[_Step], dtype: torch.dtype, device: torch.device):
        self.steps = steps
        self.dtype, self.device = dtype, torch.device(device)
        cv = lambda t: t.detach().to(device=self.device, dtype=dtype)  # noqa: E731
        self.front = steps[:-1]
        self.W = [cv(st.linear.weight) if st.linear is not None else None for st in self.front]
        self.b = [cv(st.linear.bias) if st.linear is not None and st.linear.bias is not None
                  else None for st in self.front]
        last = steps[-1].linear
        self.WL = cv(last.weight)  # (V, H)
        self.bL = cv(last.bias) if last.bias is not None else None
        self.n_units, self.width = self.WL.shape
        self.n_features = steps[0].linear.in_features
        # one hidden layer, two-valued derivative: J_k = c0 M + alpha W_L[:, S] W_1[S]
        self.two_valued = None
        if len(self.front) == 2 and self.front[1].kind == "act":
            self.two_valued = _two_values(self.front[1].act)
        self.depth1 = len(self.front) == 2 and self.front[1].kind == "act"

    # -- forward -----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Hidden activations of the front, (n, H), and phi' for every front step."""
        derivs: list[torch.Tensor | None] = []
        h = x
        for st, W, b in zip(self.front, self.W, self.b):
            if st.kind == "linear":
                h = torch.nn.functional.linear(h, W, b)
                derivs.append(None)
            elif st.kind == "act":
                derivs.append(_act_derivative(st.act, h))
                h = st.act(h)
            else:
                z = torch.nn.functional.linear(h, W, b)
                derivs.append(_act_derivative(st.act, z))
                h = h + st.act(z)
        return h, derivs

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.forward(x)
        return torch.nn.functional.linear(h, self.WL, self.bL)

    # -- per-sample front Jacobians ------------------------------------------------------
    def front_rep(self, derivs: list[torch.Tensor | None], k: int,
                  complement: bool = False) -> FrontRep:
        """A_k (the Jacobian of the last hidden layer) of sample k in compact form.

        complement=True allows the shared-M form for one two-valued hidden layer.
        """
        if self.two_valued is not None:
            a, b = self.two_valued
            d = derivs[1][k]
            on = d != a if a != b else torch.zeros_like(d, dtype=torch.bool)
            n_on = int(on.sum())
            W1 = self.W[0]
            if complement and a != 0.0 and a == b:  # identity: J = M
                return FrontRep(torch.zeros(0, dtype=torch.long, device=self.device),
                                W1[:0], 0.0, a)
            if complement and (a != 0.0 or n_on > self.width - n_on):
                if n_on <= self.width - n_on:
                    idx = on.nonzero().flatten()
                    return FrontRep(idx, W1.index_select(0, idx), b - a, a)
                idx = (~on).nonzero().flatten()
                return FrontRep(idx, W1.index_select(0, idx), a - b, b)
            if a == 0.0:
                idx = on.nonzero().flatten()
                rows = W1.index_select(0, idx)
                return FrontRep(idx, rows if b == 1.0 else rows * b)
            return FrontRep(None, W1 * d.unsqueeze(1))
        idx: torch.Tensor | None = None
        rows: torch.Tensor | None = None  # None: the identity (n_features x n_features)
        for st, W, dd in zip(self.front, self.W, derivs):
            if st.kind == "linear":
                if rows is None:
                    rows = W
                elif idx is None:
                    rows = W @ rows
                else:
                    rows = W.index_select(1, idx) @ rows
                idx = None
            elif st.kind == "act":
                d = dd[k]
                if isinstance(st.act, nn.ReLU):
                    keep = (d > 0).nonzero().flatten()
                    rows = _dense(rows, idx, d.shape[0], self.n_features)
                    rows, idx = rows.index_select(0, keep), keep
                elif isinstance(st.act, nn.Identity):
                    pass
                else:
                    rows = _dense(rows, idx, d.shape[0], self.n_features) * d.unsqueeze(1)
                    idx = None
            else:  # residual: A <- A + diag(d) W A, only the rows where d != 0 change
                d = dd[k]
                full = rows.clone() if idx is None else _dense(rows, idx, W.shape[0],
                                                                self.n_features)
                nz = (d != 0).nonzero().flatten()
                Wn = W.index_select(0, nz)
                if idx is not None:
                    upd = Wn.index_select(1, idx) @ rows
                elif rows is None:
                    upd = Wn
                else:
                    upd = Wn @ rows
                if not isinstance(st.act, nn.ReLU):
                    upd = upd * d.index_select(0, nz).unsqueeze(1)
                full.index_add_(0, nz, upd)
                rows, idx = full, None
        assert rows is not None
        return FrontRep(idx, rows)

    # -- whole Jacobian blocks -----------------------------------------------------------
    @torch.no_grad()
    def jacobian(self, x: torch.Tensor, units: slice | torch.Tensor = slice(None),
                 derivs: list | None = None) -> torch.Tensor:
        """(n, n_units_selected, n_features) per-sample Jacobians."""
        if derivs is None:
            _, derivs = self.forward(x)
        WL = self.WL[units]
        n = x.shape[0]
        out = torch.empty((n, WL.shape[0], self.n_features), dtype=self.dtype, device=self.device)
        for k in range(n):
            rep = self.front_rep(derivs, k)
            L = WL if rep.idx is None else WL.index_select(1, rep.idx)
            torch.mm(L, rep.rows, out=out[k])
            if rep.alpha != 1.0:
                out[k].mul_(rep.alpha)
        return out


def _dense(rows: torch.Tensor | None, idx: torch.Tensor | None, height: int | None,
           n_features: int) -> torch.Tensor:
    """Expand a compact (idx, rows) into a dense (height, n_features) matrix."""
    assert rows is not None  # parse_mlp guarantees a Linear first
    if idx is None:
        return rows
    full = rows.new_zeros((height, rows.shape[1]))
    full.index_copy_(0, idx, rows)
    return full


@torch.no_grad()
def analytic_jacobian(steps: list[_Step], x: torch.Tensor, units: slice | torch.Tensor = slice(None),
                      derivs: list | None = None) -> torch.Tensor:
    """Per-sample Jacobians of the parsed MLP.

    x : (n_samples, n_features) -> (n_samples, n_units_selected, n_features)
    derivs : the front steps' phi' as returned by ``forward_record`` (optional).
    """
    plan = MLPPlan(steps, x.dtype, x.device)
    if derivs is not None:
        derivs = list(derivs[:-1])
    return plan.jacobian(x, units, derivs)
