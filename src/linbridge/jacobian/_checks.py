"""Guards for Jacobian computation."""
from __future__ import annotations

from torch import nn


def check_eval_mode(model: nn.Module) -> None:
    """Raise if the model (or any submodule) would compute a training-mode function.

    A Jacobian of a model in training mode is the Jacobian of a different, random
    function (dropout) or of batch statistics (BatchNorm) - never what was meant.
    """
    stochastic = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm,
                  nn.modules.instancenorm._InstanceNorm)
    for name, mod in model.named_modules():
        if isinstance(mod, stochastic) and mod.training:
            kind = type(mod).__name__
            raise RuntimeError(
                f"submodule '{name or '<root>'}' ({kind}) is in training mode; call model.eval() "
                "before computing Jacobians"
            )
    if model.training:
        raise RuntimeError("model is in training mode; call model.eval() before computing Jacobians")
