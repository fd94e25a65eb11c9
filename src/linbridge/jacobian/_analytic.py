"""Analytic Jacobians of the MLP family: J(x) = W_L D_{L-1}(x) ... D_1(x) W_1.

The activation derivatives are recorded in one forward pass; the product is then
formed from the output side, so the intermediate is (n, units, width) and the work
is batched GEMMs. Residual blocks h + act(W h) contribute (I + D W) factors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..encoders._mlp import Residual


def _act_derivative(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """phi'(z) for the supported elementwise activations."""
    if isinstance(act, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(act, nn.LeakyReLU):
        one = torch.ones((), dtype=z.dtype)
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
        elif isinstance(mod, Residual) and isinstance(mod.act, SUPPORTED_ACTIVATIONS):
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


@torch.no_grad()
def analytic_jacobian(steps: list[_Step], x: torch.Tensor, units: slice | torch.Tensor = slice(None),
                      derivs: list | None = None) -> torch.Tensor:
    """Per-sample Jacobians of the parsed MLP.

    x : (n_samples, n_features) -> (n_samples, n_units_selected, n_features)
    """
    if derivs is None:
        _, derivs = forward_record(steps, x)
    last = steps[-1].linear.weight[units]  # (u, H)
    G = last.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    for st, d in zip(reversed(steps[:-1]), reversed(derivs[:-1])):
        if st.kind == "linear":
            G = G @ st.linear.weight.to(x.dtype)
        elif st.kind == "act":
            G = G * d.unsqueeze(1)
        else:  # d/dh [h + act(W h)] = I + D W
            G = G + (G * d.unsqueeze(1)) @ st.linear.weight.to(x.dtype)
    return G.contiguous()
