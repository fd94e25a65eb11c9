"""The MLP encoder family and its training loop (functional core)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import atomic_write

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


class Residual(nn.Module):
    """h <- h + act(W h): the follow-up paper's residual block."""

    def __init__(self, width: int, activation: str = "relu", bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(width, width, bias=bias)
        self.act = make_activation(activation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.act(self.linear(h))


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def build_mlp(n_features: int, n_units: int, hidden: int = 1024, depth: int = 1,
              activation: str = "relu", bias: bool = False, residual_blocks: int = 0) -> nn.Sequential:
    """Linear -> act (x depth) -> residual blocks -> Linear, as an ``nn.Sequential``.

    depth=1, residual_blocks=0 is the LinBridge paper's encoder; activation='identity'
    is its linear control; residual_blocks=2 is the JNE follow-up's.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    layers: list[nn.Module] = []
    width_in = n_features
    for _ in range(depth):
        layers += [nn.Linear(width_in, hidden, bias=bias), make_activation(activation)]
        width_in = hidden
    layers += [Residual(hidden, activation, bias) for _ in range(residual_blocks)]
    layers.append(nn.Linear(hidden, n_units, bias=bias))
    return nn.Sequential(*layers)


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def train_mlp(model: nn.Module, X_train: np.ndarray, Y_train: np.ndarray,
              X_val: np.ndarray, Y_val: np.ndarray, *, lr: float = 1e-3,
              weight_decay: float = 1e-2, batch_size: int = 128, max_epochs: int = 200,
              patience: int = 8, seed: int = 0, progress: bool = True,
              checkpoint: str | Path | None = None) -> TrainResult:
    """AdamW on MSE with early stopping on validation MSE; the best weights are kept.

    The model is left holding a deep copy of the weights of its best epoch (epochs
    count from 1; best_epoch 0 would mean no epoch improved on the initial weights).
    With ``checkpoint`` (a file path) the full training state is written atomically after
    every epoch and training resumes from it if the file exists; the result is the same
    as an uninterrupted run.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    Xt, Yt = torch.as_tensor(X_train), torch.as_tensor(Y_train)
    Xv, Yv = torch.as_tensor(X_val), torch.as_tensor(Y_val)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.MSELoss()

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(Xv), Yv))

    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        best_loss, best_epoch, best_state = st["best_loss"], st["best_epoch"], st["best_state"]
        history, stale, first = st["history"], st["stale"], st["epoch"] + 1
    else:
        best_loss, best_epoch = val_loss(), 0
        best_state = copy.deepcopy(model.state_dict())
        history = [{"epoch": 0, "train_loss": math.nan, "val_loss": best_loss}]
        stale, first = 0, 1
    bar = tqdm(range(first, max_epochs + 1), desc="train encoder",
               disable=None if progress else True, leave=False)
    for epoch in bar:
        if stale >= patience:
            break
        model.train()
        perm = torch.randperm(len(Xt), generator=gen)
        total = 0.0
        for start in range(0, len(Xt), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), Yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        vl = val_loss()
        history.append({"epoch": epoch, "train_loss": total / len(Xt), "val_loss": vl})
        if vl < best_loss:
            best_loss, best_epoch, stale = vl, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        bar.set_postfix(val=f"{vl:.4f}", best=best_epoch)
        if ckpt is not None:
            state = {"model": model.state_dict(), "opt": opt.state_dict(),
                     "gen": gen.get_state(), "best_loss": best_loss, "best_epoch": best_epoch,
                     "best_state": best_state, "history": history, "stale": stale,
                     "epoch": epoch}
            atomic_write(ckpt, lambda fh: torch.save(state, fh))
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_epoch=best_epoch, best_val_loss=best_loss, history=history,
                       stopped_early=stale >= patience)
