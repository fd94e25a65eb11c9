"""Synthetic encoding data with planted linear and nonlinear units (known answers).

Features: D dimensions with covariance eigenvalues proportional to 1/i under a random
rotation, z-scored with training statistics. Units come in three tiers:

* tier 1, linear:     g = w.x
* tier 2, rectified:  g = w.x + s * relu(a.x),   s ~ U(1, 3)
* tier 3, quadratic:  g = w.x + s * (a.x)(b.x),  s ~ U(0.7, 2)

with w, a, b ~ N(0, I/D) per unit. Responses y = g + sigma * std(g) * eps with
sigma ~ U(0.2, 0.8) per unit (independent of tier), then z-scored with training
statistics. The planted functions are kept as a torch module (``PlantedEncoder``)
whose output is g in the z-scored response units, so they can stand in for a
trained encoder when exact Jacobians are wanted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ._dataset import Dataset, GroundTruth, Split
from .preprocessing import zscore_by_train

TIER_NAMES = ("tier1_linear", "tier2_relu", "tier3_quadratic")


@dataclass
class SyntheticConfig:
    seed: int = 0
    n_features: int = 128
    n_train: int = 3000
    n_val: int = 500
    n_test: int = 500
    units_per_tier: int = 100
    relu_strength: tuple[float, float] = (1.0, 3.0)
    quad_strength: tuple[float, float] = (0.7, 2.0)
    noise: tuple[float, float] = (0.2, 0.8)


class PlantedEncoder(nn.Module):
    """The noise-free planted functions, in z-scored response units.

    forward(x): (n, D) -> (n, V), computing (g(x) - offset) / scale per unit.
    """

    def __init__(self, W: np.ndarray, A: np.ndarray, B: np.ndarray, s: np.ndarray,
                 tier: np.ndarray, offset: np.ndarray, scale: np.ndarray):
        super().__init__()
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
        self.register_buffer("W", as_t(W))  # (V, D)
        self.register_buffer("A", as_t(A))
        self.register_buffer("B", as_t(B))
        self.register_buffer("s", as_t(s))  # (V,)
        self.register_buffer("is_relu", as_t(tier == 2))
        self.register_buffer("is_quad", as_t(tier == 3))
        self.register_buffer("offset", as_t(offset))
        self.register_buffer("scale", as_t(scale))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W.dtype)
        lin, ax, bx = x @ self.W.T, x @ self.A.T, x @ self.B.T
        g = lin + self.s * (self.is_relu * torch.relu(ax) + self.is_quad * ax * bx)
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.offset) / self.scale

    def mean_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """E_x[grad] over the rows of x, exactly: (V, D)."""
        x = x.to(self.W.dtype)
        ax, bx = x @ self.A.T, x @ self.B.T
        p_active = (ax > 0).to(x.dtype).mean(0)
        coef_a = self.s * (self.is_relu * p_active + self.is_quad * bx.mean(0))
        coef_b = self.s * self.is_quad * ax.mean(0)
        J = self.W + coef_a[:, None] * self.A + coef_b[:, None] * self.B
        return J / self.scale[:, None]


def _features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    eig = 1.0 / np.arange(1, d + 1)
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    Q = Q * np.sign(np.diag(R))  # a uniformly random rotation
    return (rng.standard_normal((n, d)) * np.sqrt(eig)) @ Q.T


def linear_fit_r2(X: np.ndarray, g: np.ndarray) -> np.ndarray:
    """R^2 of the least-squares fit g ~ X b + c, per column of g. (n, D), (n, V) -> (V,)."""
    Xc = X - X.mean(0)
    gc = g - g.mean(0)
    coef, *_ = np.linalg.lstsq(Xc, gc, rcond=None)
    resid = gc - Xc @ coef
    ss_tot = (gc ** 2).sum(0)
    return 1.0 - (resid ** 2).sum(0) / np.where(ss_tot > 0, ss_tot, 1.0)


def make_synthetic(config: SyntheticConfig | None = None, **overrides) -> Dataset:
    """Generate the synthetic dataset; see the module docstring."""
    cfg = config or SyntheticConfig()
    if overrides:
        cfg = SyntheticConfig(**{**cfg.__dict__, **overrides})
    rng = np.random.default_rng(cfg.seed)
    D, per = cfg.n_features, cfg.units_per_tier
    n = cfg.n_train + cfg.n_val + cfg.n_test
    perm = rng.permutation(n)
    split = Split(train=np.sort(perm[:cfg.n_train]),
                  val=np.sort(perm[cfg.n_train:cfg.n_train + cfg.n_val]),
                  test=np.sort(perm[cfg.n_train + cfg.n_val:]))

    X_raw = _features(rng, n, D)
    X, _, _ = zscore_by_train(X_raw, split.train, "synthetic features")
    X64 = X.astype(np.float64)

    V = 3 * per
    tier = np.repeat([1, 2, 3], per)
    W, A, B = (rng.standard_normal((V, D)) / np.sqrt(D) for _ in range(3))
    s = np.zeros(V)
    s[tier == 2] = rng.uniform(*cfg.relu_strength, per)
    s[tier == 3] = rng.uniform(*cfg.quad_strength, per)
    sigma = rng.uniform(*cfg.noise, V)

    planted = PlantedEncoder(W, A, B, s, tier, np.zeros(V), np.ones(V))
    with torch.no_grad():
        g = planted.raw(torch.from_numpy(X64)).numpy()
    y = g + sigma * g.std(0) * rng.standard_normal(g.shape)
    Y, y_mean, y_std = zscore_by_train(y, split.train, "synthetic responses")

    # the encoder sees z-scored responses: express the planted answers in those units
    planted.offset.copy_(torch.from_numpy(y_mean))
    planted.scale.copy_(torch.from_numpy(y_std))
    with torch.no_grad():
        planted_linear = planted.mean_jacobian(torch.from_numpy(X64[split.test])).numpy()
    strength = 1.0 - linear_fit_r2(X64[split.test], g[split.test])

    return Dataset(
        name="synthetic",
        X=X,
        Y=Y,
        unit_ids=np.array([f"u{v:04d}" for v in range(V)]),
        unit_labels=np.array([TIER_NAMES[t - 1] for t in tier]),
        sample_ids=np.array([f"s{k:05d}" for k in range(n)]),
        split=split,
        ground_truth=GroundTruth(planted_linear=planted_linear.astype(np.float64),
                                 planted_strength=strength),
        meta={"config": dict(cfg.__dict__), "noise_sigma": sigma, "strength_s": s,
              "tier": tier, "planted_encoder": planted},
    )
