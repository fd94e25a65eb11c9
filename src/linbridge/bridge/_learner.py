"""The LinBridge learner: a self-supervised split J_k = J_inh + dJ_k.

Reconstruction (see docs/method.md of the project, section 3, and our README):
* A scorer rates every sample of a batch from a fixed random sketch of its Jacobian;
  J_inh = sum_k alpha_k J_k with alpha = softmax(scores). A convex combination accepts
  any number of samples and keeps J_inh at the scale of the Jacobians (a free-form J_inh
  lets InfoNCE push its norm to infinity). Scorers: 'cnn' (1-D CNN along the sample axis,
  the paper's choice as reconstructed; batches are shuffled every epoch so it cannot
  exploit an arbitrary order), 'attention' (self-attention over the batch) and 'mean'
  (uniform alpha, no parameters: the sample-mean Jacobian).
* A learned projection P (n_features -> embed_dim), shared over units, embeds
  J_inh (anchor), J_k (positives) and dJ_k (negatives), flattened over units.
* loss = InfoNCE(cosine similarity / temperature) + l1_weight * mean|dJ| / mean|J|
  (the L1 term is made scale-free by the batch's mean |J|, detached).
The scorer's last layer starts at zero, so training starts from the mean Jacobian.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..jacobian import JacobianSource, weighted_mean_jacobian


class CollapseWarning(UserWarning):
    """The learned split has (nearly) collapsed onto the per-sample Jacobians."""


class _CNNScorer(nn.Module):
    def __init__(self, n_in: int, width: int = 32, kernel: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_in, width, 1), nn.GELU(),
            nn.Conv1d(width, width, kernel, padding=kernel // 2), nn.GELU(),
            nn.Conv1d(width, 1, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, c) -> (B,)
        return self.net(z.T.unsqueeze(0))[0, 0]


class _AttentionScorer(nn.Module):
    def __init__(self, n_in: int, width: int = 32):
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.attn = nn.MultiheadAttention(width, 1, batch_first=True)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.inp(z)).unsqueeze(0)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out(h)[0, :, 0]


class _MeanScorer(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


def make_scorer(kind: str, n_in: int) -> nn.Module:
    if kind == "cnn":
        return _CNNScorer(n_in)
    if kind == "attention":
        return _AttentionScorer(n_in)
    if kind == "mean":
        return _MeanScorer()
    raise ValueError(f"unknown scorer {kind!r}; choose 'cnn', 'attention' or 'mean'")


def jacobian_sketches(source: JacobianSource, sketch_units: int = 16, sketch_features: int = 8,
                      seed: int = 0) -> np.ndarray:
    """Fixed random sketch U^T J_k R of every sample's Jacobian, (n_samples, su * sf).

    Johnson-Lindenstrauss style: it keeps the geometry between samples' Jacobians at a
    size the scorer can take, and it is computed in one streaming pass.
    """
    g = torch.Generator().manual_seed(seed)
    N, V, D = source.shape
    su, sf = min(sketch_units, V), min(sketch_features, D)
    U = torch.randn(V, su, generator=g, dtype=torch.float64) / math.sqrt(V)
    R = torch.randn(D, sf, generator=g, dtype=torch.float64) / math.sqrt(D)
    U, R = U.to(source.device), R.to(source.device)
    out = torch.zeros(N, su, sf, dtype=torch.float64, device=source.device)
    for ss, us, blk in source.iter_blocks():
        out[ss] += torch.einsum("nud,df,us->nsf", blk.to(torch.float64), R, U[us])
    z = out.reshape(N, -1)
    z = (z - z.mean(0)) / (z.std(0) + 1e-12)  # standardised channels for the scorer
    return z.cpu().numpy()


def info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over positives of -log(e^{s+/tau} / (e^{s+/tau} + sum_j e^{s-_j/tau})).

    anchor (m,), pos (B, m), neg (B, m) -> (loss, similarity gap mean(s+) - mean(s-)).
    """
    cos = nn.functional.cosine_similarity
    sp = cos(pos, anchor.unsqueeze(0), dim=1, eps=1e-12) / tau
    sn = cos(neg, anchor.unsqueeze(0), dim=1, eps=1e-12) / tau
    logits = torch.cat([sp.unsqueeze(1), sn.unsqueeze(0).expand(len(sp), -1)], dim=1)
    loss = (torch.logsumexp(logits, dim=1) - sp).mean()
    return loss, (sp.mean() - sn.mean()) * tau


class LinBridge:
    """Learn the linear inherent component of a Jacobian source.

    Parameters mirror docs (every open choice of the method is one here).
    Fitted: inherent_ (n_units, n_features), sample_weights_ (n_samples,), projection_
    (n_features, embed_dim), bias_embedding_ is filled by ``transform``, history_ (a list
    of per-epoch monitors), collapsed_ (bool).
    """

    def __init__(self, scorer: str = "cnn", embed_dim: int = 1, temperature: float = 0.1,
                 l1_weight: float = 0.1, batch_size: int = 64, n_epochs: int = 20,
                 lr: float = 3e-4, unit_batch: int = 2048, sketch_units: int = 16,
                 sketch_features: int = 8, cache_mb: float = 1024.0, seed: int = 0,
                 progress: bool = True, checkpoint_path: str | Path | None = None):
        self.scorer = scorer
        self.embed_dim = embed_dim
        self.temperature = temperature
        self.l1_weight = l1_weight
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.lr = lr
        self.unit_batch = unit_batch
        self.sketch_units = sketch_units
        self.sketch_features = sketch_features
        self.cache_mb = cache_mb
        self.seed = seed
        self.progress = progress
        self.checkpoint_path = checkpoint_path

    # -- training ---------------------------------------------------------------------
    def _modules(self, n_in: int, n_features: int) -> nn.ModuleDict:
        torch.manual_seed(self.seed)
        proj = nn.Linear(n_features, self.embed_dim, bias=False)
        nn.init.normal_(proj.weight, std=1 / math.sqrt(n_features))
        return nn.ModuleDict({"scorer": make_scorer(self.scorer, n_in), "proj": proj})

    def _step(self, mods: nn.ModuleDict, z: torch.Tensor, J: torch.Tensor):
        alpha = torch.softmax(mods["scorer"](z), dim=0)
        J_inh = torch.einsum("n,nud->ud", alpha, J)
        dJ = J - J_inh
        P = mods["proj"].weight.T  # (D, e)
        anchor = (J_inh @ P).flatten()
        pos = (J @ P).flatten(1)
        neg = (dJ @ P).flatten(1)
        nce, gap = info_nce(anchor, pos, neg, self.temperature)
        scale = J.abs().mean().detach().clamp_min(1e-12)
        l1 = dJ.abs().mean() / scale
        loss = nce + self.l1_weight * l1
        with torch.no_grad():
            J_bar = J.mean(0)
            mon = {
                "loss": float(loss), "info_nce": float(nce), "similarity_gap": float(gap),
                "bias_l1": float(dJ.abs().mean()),
                "mean_split_l1": float((J - J_bar).abs().mean()),
                "cos_inherent_mean": float(nn.functional.cosine_similarity(
                    J_inh.flatten(), J_bar.flatten(), dim=0)),
                "alpha_max": float(alpha.max()),
            }
        return loss, mon

    def fit(self, source: JacobianSource) -> "LinBridge":
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        N, V, D = source.shape
        nbytes = N * V * D * 4
        if nbytes <= self.cache_mb * 2 ** 20:  # small enough: compute the Jacobians once
            source = source.materialize()
        self.z_ = jacobian_sketches(source, self.sketch_units, self.sketch_features, self.seed)
        z_all = torch.as_tensor(self.z_, dtype=torch.float32)
        mods = self._modules(z_all.shape[1], D)
        opt = torch.optim.Adam(mods.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        history: list[dict] = []
        start_epoch = 1
        ckpt = Path(self.checkpoint_path) if self.checkpoint_path else None
        if ckpt is not None and ckpt.exists():  # resume
            state = torch.load(ckpt, weights_only=False)
            mods.load_state_dict(state["modules"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            history = state["history"]
            start_epoch = len(history) + 1
        bsz = min(self.batch_size, N)
        bar = tqdm(range(start_epoch, self.n_epochs + 1), desc="LinBridge learner",
                   disable=None if self.progress else True, leave=False)
        for epoch in bar:
            mons = []
            perm = torch.randperm(N, generator=gen)
            for b0 in range(0, N - bsz + 1, bsz):
                idx = perm[b0:b0 + bsz]
                units = (torch.randperm(V, generator=gen)[:self.unit_batch].sort().values
                         if V > self.unit_batch else slice(None))
                J = source.block(idx.numpy(), units if isinstance(units, slice) else units.numpy())
                J = J.to(torch.float32)
                loss, mon = self._step(mods, z_all[idx], J)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                mons.append(mon)
            rec = {"epoch": epoch, **{k: float(np.mean([m[k] for m in mons])) for k in mons[0]}}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", l1=f"{rec['bias_l1']:.3g}")
            if ckpt is not None:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"modules": mods.state_dict(), "opt": opt.state_dict(),
                            "gen": gen.get_state(), "history": history}, tmp)
                os.replace(tmp, ckpt)
        self.modules_ = mods
        self.history_ = history
        with torch.no_grad():
            self.sample_weights_ = torch.softmax(mods["scorer"](z_all), 0).double().numpy()
        self.projection_ = mods["proj"].weight.detach().T.double().numpy()
        self.inherent_ = weighted_mean_jacobian(source, self.sample_weights_)
        self.collapsed_ = self._check_collapse()
        return self

    def _check_collapse(self) -> bool:
        last = self.history_[-1] if self.history_ else None
        if last is None:
            return False
        reasons = []
        if last["bias_l1"] < 0.5 * last["mean_split_l1"]:
            reasons.append(f"||dJ||_1 {last['bias_l1']:.3g} is below half of the mean-Jacobian "
                           f"split's {last['mean_split_l1']:.3g}")
        if abs(last["similarity_gap"]) < 1e-3:
            reasons.append("InfoNCE no longer separates positives from negatives "
                           f"(similarity gap {last['similarity_gap']:.2g})")
        if reasons:
            warnings.warn("LinBridge split may have collapsed: " + "; ".join(reasons),
                          CollapseWarning, stacklevel=3)
        self.collapse_reasons_ = reasons
        return bool(reasons)

    # -- use --------------------------------------------------------------------------
    def predict(self, X) -> np.ndarray:
        """The inherent component as a linear encoder: y_hat = J_inh x, (n, n_units)."""
        return np.asarray(X, dtype=np.float64) @ self.inherent_.T

    def transform(self, source: JacobianSource) -> np.ndarray:
        """Projected mapping biases dJ_k @ P, (n_samples, n_units, embed_dim), streamed."""
        from ..jacobian import deviation_statistics

        st = deviation_statistics(source, {"learned": self.inherent_}, self.projection_)
        self.bias_embedding_ = st.down["learned"]
        return self.bias_embedding_

    def summary(self) -> dict:
        return {"params": {k: getattr(self, k) for k in (
            "scorer", "embed_dim", "temperature", "l1_weight", "batch_size", "n_epochs", "lr",
            "unit_batch", "sketch_units", "sketch_features", "seed")},
            "collapsed": bool(getattr(self, "collapsed_", False)),
            "final": self.history_[-1] if getattr(self, "history_", None) else None}
