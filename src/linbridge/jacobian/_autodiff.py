"""Generic Jacobians of any torch module through torch.func (the fallback)."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacfwd, jacrev, vmap


def choose_mode(n_features: int, n_units: int) -> str:
    """Forward mode costs one pass per input dim, reverse one per output: take the fewer."""
    return "jacfwd" if n_features < n_units else "jacrev"


def autodiff_jacobian(model: nn.Module, x: torch.Tensor, units: slice | torch.Tensor = slice(None),
                      mode: str = "auto") -> torch.Tensor:
    """Per-sample Jacobians through vmapped jacfwd/jacrev.

    x : (n_samples, n_features) -> (n_samples, n_units_selected, n_features)
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(xi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return out[0, units]

    if mode == "auto":
        with torch.no_grad():
            n_sel = model(x[:1])[0, units].numel()
        mode = choose_mode(x.shape[1], n_sel)
    if mode not in ("jacfwd", "jacrev"):
        raise ValueError(f"mode must be 'auto', 'jacfwd' or 'jacrev', got {mode!r}")
    jac = jacfwd(f) if mode == "jacfwd" else jacrev(f)
    return vmap(jac)(x)
