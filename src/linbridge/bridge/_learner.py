"""The LinBridge learner: a self-supervised split J_k = J_inh + dJ_k.

Reconstruction (docs/method.md of the project, section 3; docs/validation.md for what it
does on known answers):

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
  (the L1 term is made scale-free by the mean |J| of the whole source).
* The scorer's last layer starts at zero, so training starts from the mean Jacobian.

How this objective collapses, and the guard against it
------------------------------------------------------
With a convex-combination anchor the reviewers' collapse (J_inh -> J_k, dJ -> 0) cannot
show up as a small ||dJ||_1: for every element, E|X - mean| <= 2 E|X - c| for any constant
c, so no sample-invariant J_inh has a mean |dJ| below half of the mean-Jacobian split's.
It shows up instead as *concentration*: InfoNCE is lowest when every negative dJ_j points
away from the anchor, and since sum_j alpha_j dJ_j = 0 that is reached by putting the
weight on the few samples with the most extreme Jacobians, i.e. J_inh becomes the local
linearisation of a handful of samples. ``min_ess_fraction`` guards against this: the
softmax is tempered (alpha = softmax(s / T), T >= 1 found by bisection, not
differentiated through) whenever the effective sample size 1 / sum alpha^2 would fall
below that fraction of the samples. Set it to 0 to train the unguarded objective.

Collapse monitors (every epoch, ``history_``): ||dJ||_1 of the learned and of the
mean-Jacobian split, cos(J_inh, mean J), the InfoNCE value and the information it carries
(log(B + 1) - InfoNCE, the InfoNCE lower bound on mutual information, 0 at chance), the
similarity gap between positives and negatives, the effective sample size of alpha.
``CollapseWarning`` is raised at the end of ``fit`` when any rule in ``COLLAPSE_RULES``
fires.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from tqdm.auto import tqdm

from ..data.preprocessing import check_finite
from ..jacobian import JacobianSource

#: Thresholds of the collapse warnings (fixed; not tuned to any data set).
COLLAPSE_RULES = {
    # ||dJ||_1 of the learned split below this fraction of the mean-Jacobian split's
    "bias_l1_fraction": 0.5,
    # InfoNCE information (log(B+1) - InfoNCE) below this fraction of its maximum log(B+1)
    "info_fraction": 0.05,
    # |mean cos(positives) - mean cos(negatives)| below this
    "similarity_gap": 1e-3,
    # effective sample size of the final weights below this fraction of the samples
    "ess_fraction": 0.5,
}


class CollapseWarning(UserWarning):
    """The learned split has (nearly) collapsed, or its loss no longer carries information."""


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
    return _sketch_pass(source, sketch_units, sketch_features, seed)[0]


def _sketch_pass(source: JacobianSource, sketch_units: int, sketch_features: int, seed: int
                 ) -> tuple[np.ndarray, float]:
    """The sketches and mean |J| over the whole tensor, in one streaming pass."""
    g = torch.Generator().manual_seed(seed)
    N, V, D = source.shape
    su, sf = min(sketch_units, V), min(sketch_features, D)
    U = torch.randn(V, su, generator=g, dtype=torch.float64) / math.sqrt(V)
    R = torch.randn(D, sf, generator=g, dtype=torch.float64) / math.sqrt(D)
    U, R = U.to(source.device), R.to(source.device)
    out = torch.zeros(N, su, sf, dtype=torch.float64, device=source.device)
    abs_sum = 0.0
    for ss, us, blk in source.iter_blocks():
        b = blk.to(torch.float64)
        if not torch.isfinite(b).all():  # before any training: nothing is lost
            check_finite(b.cpu().numpy(), "the Jacobian source", ("sample", "unit", "feature"),
                         positions=[np.arange(N)[ss], np.arange(V)[us]])
        out[ss] += torch.einsum("nud,df,us->nsf", b, R, U[us])
        abs_sum += float(b.abs().sum())
    z = out.reshape(N, -1)
    z = (z - z.mean(0)) / (z.std(0) + 1e-12)  # standardised channels for the scorer
    return z.cpu().numpy(), abs_sum / (N * V * D)


def info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over positives of -log(e^{s+/tau} / (e^{s+/tau} + sum_j e^{s-_j/tau})).

    anchor (m,), pos (B, m), neg (B, m) -> (loss, similarity gap mean(s+) - mean(s-)),
    s = cosine similarity. At chance (all similarities equal) the loss is log(B + 1).
    """
    cos = nn.functional.cosine_similarity
    sp = cos(pos, anchor.unsqueeze(0), dim=1, eps=1e-12) / tau
    sn = cos(neg, anchor.unsqueeze(0), dim=1, eps=1e-12) / tau
    logits = torch.cat([sp.unsqueeze(1), sn.unsqueeze(0).expand(len(sp), -1)], dim=1)
    loss = (torch.logsumexp(logits, dim=1) - sp).mean()
    return loss, (sp.mean() - sn.mean()) * tau


def effective_sample_size(alpha) -> float:
    """1 / sum alpha_k^2 for weights summing to one (n for uniform weights, 1 for one-hot)."""
    a = torch.as_tensor(np.asarray(alpha) if not isinstance(alpha, torch.Tensor) else alpha)
    a = a.double()
    a = a / a.sum()
    return float(1.0 / (a * a).sum())


@torch.no_grad()
def tempering(scores: torch.Tensor, min_ess_fraction: float, iters: int = 40) -> float:
    """The smallest T >= 1 with ESS(softmax(scores / T)) >= min_ess_fraction * n.

    ESS rises monotonically from ESS(softmax(s)) towards n as T grows, so a bisection on
    log T finds it. Returns 1.0 when the constraint already holds (or is off).
    """
    n = scores.shape[0]
    if min_ess_fraction <= 0 or n < 2:
        return 1.0
    target = min(min_ess_fraction, 1.0) * n
    s = scores.detach().double()
    ess = lambda t: float(1.0 / (torch.softmax(s / t, 0) ** 2).sum())  # noqa: E731
    if ess(1.0) >= target:
        return 1.0
    hi = 2.0
    while ess(hi) < target * (1 - 1e-9) and hi < 1e12:
        hi *= 4.0
    lo = 1.0
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if ess(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


class LinBridge:
    """Learn the linear inherent component of a Jacobian source (sklearn-style).

    Parameters (every open choice of the method is one here)
    ----------
    scorer : 'cnn' | 'attention' | 'mean'
    embed_dim : size of the learned projection of the Jacobians (shared over units)
    temperature : InfoNCE temperature tau
    l1_weight : lambda of the scale-free L1 term mean|dJ| / mean|J|
    batch_size, n_epochs, lr : Adam on batches of samples, reshuffled every epoch
    unit_batch : units per step (a random subset when the source has more)
    sketch_units, sketch_features : size of the random Jacobian sketch the scorer reads
    cache_mb : sources whose whole tensor is smaller than this are computed once and kept
        in memory; larger ones are streamed block by block (never held whole)
    seed : seeds the modules, the batch order and the sketch
    checkpoint_path : resumable training state, written every epoch
    min_ess_fraction : the aggregator's weights are tempered so that their effective sample
        size stays >= this fraction of the batch (and of all samples at the end); 0 = off

    Fitted attributes
    -----------------
    inherent_ (n_units, n_features), sample_weights_ (n_samples,), projection_
    (n_features, embed_dim), bias_embedding_ (n_samples, n_units, embed_dim) = dJ_k @ P,
    mean_jacobian_ (by-product of the final pass), ess_fraction_, history_ (per-epoch
    monitors), collapsed_ (bool), collapse_reasons_ (list of str).
    """

    def __init__(self, scorer: str = "cnn", embed_dim: int = 1, temperature: float = 0.1,
                 l1_weight: float = 0.1, batch_size: int = 64, n_epochs: int = 20,
                 lr: float = 3e-4, unit_batch: int = 2048, sketch_units: int = 16,
                 sketch_features: int = 8, cache_mb: float = 1024.0, seed: int = 0,
                 progress: bool = True, checkpoint_path: str | Path | None = None,
                 min_ess_fraction: float = 0.5):
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
        self.min_ess_fraction = min_ess_fraction

    # -- training ---------------------------------------------------------------------
    def _modules(self, n_in: int, n_features: int) -> nn.ModuleDict:
        torch.manual_seed(self.seed)
        proj = nn.Linear(n_features, self.embed_dim, bias=False)
        nn.init.normal_(proj.weight, std=1 / math.sqrt(n_features))
        return nn.ModuleDict({"scorer": make_scorer(self.scorer, n_in), "proj": proj})

    def _weights(self, mods: nn.ModuleDict, z: torch.Tensor) -> tuple[torch.Tensor, float]:
        s = mods["scorer"](z).double()
        T = tempering(s, self.min_ess_fraction)
        return torch.softmax(s / T, dim=0), T

    def _step(self, mods: nn.ModuleDict, z: torch.Tensor, J: torch.Tensor):
        alpha, T = self._weights(mods, z)
        alpha = alpha.to(J.dtype)
        J_inh = torch.einsum("n,nud->ud", alpha, J)
        dJ = J - J_inh
        P = mods["proj"].weight.T  # (D, e)
        pos3 = J @ P  # (B, V, e); the anchor and negatives follow from it linearly
        anchor = torch.einsum("n,nue->ue", alpha, pos3)
        pos = pos3.flatten(1)
        neg = (pos3 - anchor).flatten(1)
        anchor = anchor.flatten()
        nce, gap = info_nce(anchor, pos, neg, self.temperature)
        l1 = dJ.abs().mean()
        loss = nce + self.l1_weight * l1 / self.scale_
        with torch.no_grad():
            J_bar = J.mean(0)
            B = J.shape[0]
            mon = {
                "loss": float(loss), "info_nce": float(nce),
                "info_nats": math.log(B + 1) - float(nce), "info_max_nats": math.log(B + 1),
                "similarity_gap": float(gap),
                "bias_l1": float(l1),
                "mean_split_l1": float((J - J_bar).abs().mean()),
                "cos_inherent_mean": float(nn.functional.cosine_similarity(
                    J_inh.flatten(), J_bar.flatten(), dim=0)),
                "alpha_max": float(alpha.max()),
                "ess_fraction": float(1.0 / (alpha * alpha).sum()) / B,
                "temper": T,
            }
        return loss, mon

    def check_params(self) -> None:
        """Raise ValueError naming the first parameter outside its valid range."""
        make_scorer(self.scorer, 1)  # raises on an unknown scorer
        rules = [("batch_size", self.batch_size >= 2, ">= 2"),
                 ("embed_dim", self.embed_dim >= 1, ">= 1"),
                 ("temperature", self.temperature > 0, "> 0"),
                 ("l1_weight", self.l1_weight >= 0, ">= 0"),
                 ("n_epochs", self.n_epochs >= 0, ">= 0"),
                 ("lr", self.lr > 0, "> 0"),
                 ("unit_batch", self.unit_batch >= 1, ">= 1"),
                 ("sketch_units", self.sketch_units >= 1, ">= 1"),
                 ("sketch_features", self.sketch_features >= 1, ">= 1"),
                 ("min_ess_fraction", 0.0 <= self.min_ess_fraction <= 1.0, "in [0, 1]")]
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"LinBridge {name} must be {rule}, got {getattr(self, name)!r}")

    def fit(self, source: JacobianSource) -> "LinBridge":
        self.check_params()
        N, V, D = source.shape
        if N < 2:
            raise ValueError(f"the source has {N} sample(s); the split needs at least 2")
        nbytes = N * V * D * torch.empty((), dtype=source.dtype).element_size()
        if nbytes <= self.cache_mb * 2 ** 20 and not hasattr(source, "J"):
            source = source.materialize()  # small enough: compute the Jacobians once
        self.z_, scale = _sketch_pass(source, self.sketch_units, self.sketch_features, self.seed)
        self.scale_ = max(scale, 1e-12)  # mean |J|: makes the L1 term scale-free
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
                units = (torch.randperm(V, generator=gen)[:self.unit_batch].sort().values.numpy()
                         if V > self.unit_batch else slice(None))
                J = source.block(idx.numpy(), units).to(torch.float32)
                loss, mon = self._step(mods, z_all[idx], J)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                mons.append(mon)
            rec = {"epoch": epoch, **{k: float(np.mean([m[k] for m in mons])) for k in mons[0]}}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", ess=f"{rec['ess_fraction']:.2f}")
            if ckpt is not None:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"modules": mods.state_dict(), "opt": opt.state_dict(),
                            "gen": gen.get_state(), "history": history}, tmp)
                os.replace(tmp, ckpt)
        self.modules_ = mods
        self.history_ = history
        with torch.no_grad():
            alpha, self.final_temper_ = self._weights(mods, z_all)
        self.sample_weights_ = alpha.double().numpy()
        self.sample_weights_ /= self.sample_weights_.sum()
        self.ess_fraction_ = effective_sample_size(self.sample_weights_) / N
        self.projection_ = mods["proj"].weight.detach().T.double().numpy()
        self._final_pass(source)
        self.collapsed_ = self._check_collapse()
        return self

    @torch.no_grad()
    def _final_pass(self, source: JacobianSource) -> None:
        """One streaming pass: inherent_, mean_jacobian_ and the projected biases."""
        N, V, D = source.shape
        w = torch.as_tensor(self.sample_weights_, dtype=torch.float64, device=source.device)
        P = torch.as_tensor(self.projection_, dtype=torch.float64, device=source.device)
        inh = torch.zeros(V, D, dtype=torch.float64, device=source.device)
        mean = torch.zeros(V, D, dtype=torch.float64, device=source.device)
        JP = torch.zeros(N, V, P.shape[1], dtype=torch.float64, device=source.device)
        for ss, us, blk in source.iter_blocks():
            b = blk.to(torch.float64)
            inh[us] += torch.einsum("n,nud->ud", w[ss], b)
            mean[us] += b.sum(0) / N
            JP[ss, us] = b @ P
        self.inherent_ = inh.cpu().numpy()
        self.mean_jacobian_ = mean.cpu().numpy()
        self.bias_embedding_ = (JP - (inh @ P).unsqueeze(0)).cpu().numpy()

    def _check_collapse(self) -> bool:
        last = self.history_[-1] if self.history_ else None
        reasons = []
        R = COLLAPSE_RULES
        if last is not None:
            if last["bias_l1"] < R["bias_l1_fraction"] * last["mean_split_l1"]:
                reasons.append(f"||dJ||_1 {last['bias_l1']:.3g} is below {R['bias_l1_fraction']} "
                               f"of the mean-Jacobian split's {last['mean_split_l1']:.3g}")
            info = last.get("info_nats", float("inf"))  # absent in pre-monitor checkpoints
            if info < R["info_fraction"] * last["info_max_nats"]:
                reasons.append(f"InfoNCE {last['info_nce']:.4g} is at chance level "
                               f"(information {last['info_nats']:.3g} of at most "
                               f"{last['info_max_nats']:.3g} nats): the loss carries no "
                               "information")
            if abs(last["similarity_gap"]) < R["similarity_gap"]:
                reasons.append("InfoNCE no longer separates positives from negatives "
                               f"(similarity gap {last['similarity_gap']:.2g})")
        if self.ess_fraction_ < R["ess_fraction"] - 1e-6:
            reasons.append(f"the weights concentrated on a few samples (effective sample size "
                           f"{self.ess_fraction_:.3f} of the samples, below "
                           f"{R['ess_fraction']}): J_inh is their local linearisation")
        if reasons:
            warnings.warn("LinBridge split may have collapsed: " + "; ".join(reasons),
                          CollapseWarning, stacklevel=3)
        self.collapse_reasons_ = reasons
        return bool(reasons)

    # -- use --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "inherent_"):
            raise NotFittedError("this LinBridge is not fitted yet; call fit(source) first")

    def predict(self, X) -> np.ndarray:
        """The inherent component as a linear encoder: y_hat = J_inh x, (n, n_units)."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.inherent_.shape[1]:
            raise ValueError(f"X is {X.shape}; expected (n_samples, n_features="
                             f"{self.inherent_.shape[1]})")
        return X @ self.inherent_.T

    def transform(self, source: JacobianSource) -> np.ndarray:
        """Projected mapping biases (J_k - J_inh) @ P of any source, (n, n_units, embed_dim)."""
        from ..jacobian import deviation_statistics

        self._check_fitted()
        st = deviation_statistics(source, {"learned": self.inherent_}, self.projection_)
        return st.down["learned"]

    def summary(self) -> dict:
        return {"params": {k: getattr(self, k) for k in (
            "scorer", "embed_dim", "temperature", "l1_weight", "batch_size", "n_epochs", "lr",
            "unit_batch", "sketch_units", "sketch_features", "seed", "min_ess_fraction")},
            "collapsed": bool(getattr(self, "collapsed_", False)),
            "collapse_reasons": list(getattr(self, "collapse_reasons_", [])),
            "ess_fraction": float(getattr(self, "ess_fraction_", float("nan"))),
            "final": self.history_[-1] if getattr(self, "history_", None) else None}
