"""The JNE authors' simulations (method.md section 6), for JNE and for our index.

Three experiments, each computed for JNE as its authors define it (std over samples of
||J_k - Jbar||_1) and for the project's nonlinearity index NF (sum ||J_k - Jbar||^2 /
sum ||J_k||^2):

* ``activation_sweep``: one unit y = phi(x), x on a grid over [-10, 10]; a window slides
  along the grid and the index of the derivatives inside it is compared with the window
  average of |phi''| (the total variation of phi' over the window divided by its width:
  for ReLU and LeakyReLU, whose phi'' is a Dirac delta at 0, that is the delta smoothed
  by the window). Where phi' is constant over a window the index must be exactly 0.
* ``residual_nets``: untrained residual nets 768 -> 768 -> 1 (PyTorch's default nn.Linear
  init, biases included), inputs U[-10, 10]^(1000 x 768), activation nowhere / shallow
  (phi1) / deep (phi2) / both. method.md says only "untrained residual net 768 -> 768 -> 1";
  two readings are computed (``FIRST_LAYERS``):

  - ``"residual"`` (every layer a residual block, which the square first layer permits):
    h1 = x + phi1(W1 x), h2 = h1 + phi2(W2 h1), y = w3 . h2, so
    J_k = w3 (I + D2_k W2)(I + D1_k W1). A nonlinearity in either layer then changes the
    Jacobian by the same expected amount (one W times one I + W), and the JNE paper's
    ordering shallow < deep < both is what it measures.
  - ``"plain"`` (the issue's formula): h1 = phi1(W1 x), h2 = h1 + phi2(W2 h1), so
    J_k = w3 (I + D2_k W2) D1_k W1. Here the shallow deviation reaches the output through
    (I + W2) and W1, the deep one through W2 and W1; with default init (row gain
    g^2 = fan_in * Var(W) = 1/3) the deep one is smaller by g / sqrt(1 + g^2) = 1/2 in
    expected size, and deep < shallow in every repetition.

  Jacobians are analytic, formed from the output side with the activation derivatives D
  recorded in the forward pass (the same product ``linbridge.jacobian`` uses; a test
  checks both readings against ``ModelJacobianSource``).
* ``sample_size``: the index of y = phi(x - b) over x ~ U[-10, 10] as a function of the
  offset b (the planted curve, from a dense grid of 200,001 inputs) against its estimate
  from N random inputs. The JNE paper's own protocol for this is not public; this is our
  reconstruction and is labelled so.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..metrics import jne, nonlinear_fraction

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU}
PLACEMENTS = ("none", "shallow", "deep", "both")
FIRST_LAYERS = ("residual", "plain")


def _act_and_derivative(act: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi(z) and phi'(z) elementwise, by autograd through the module (torch's conventions
    at kinks)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        y = act(z)
        (g,) = torch.autograd.grad(y.sum(), z)
    return y.detach(), g.detach()


def dphi(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """phi'(z) elementwise."""
    return _act_and_derivative(act, z)[1]


def _indices_1d(J: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """JNE and NF of scalar Jacobians J (n_samples, n_curves) -> two (n_curves,)."""
    dev = J - J.mean(0, keepdims=True)
    return jne(np.abs(dev)), nonlinear_fraction(dev ** 2, J ** 2)


# -- 1. sliding-window sweep over one unit ------------------------------------------------
def activation_sweep(n_grid: int = 2001, window: int = 101, lo: float = -10.0,
                     hi: float = 10.0) -> dict:
    """Sliding-window index of phi' vs the window average of |phi''|, per activation."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    width = (hi - lo) * (window - 1) / (n_grid - 1)
    out = {}
    for name, cls in ACTIVATIONS.items():
        d = dphi(cls(), x).numpy()
        win = sliding_window_view(d, window)  # (n_windows, window)
        j, nf = _indices_1d(win.T)
        tv = np.abs(np.diff(win, axis=1)).sum(1) / width  # window mean of |phi''|
        flat = tv == 0.0
        out[name] = {
            "pearson_jne": float(np.corrcoef(j, tv)[0, 1]),
            "pearson_nf": float(np.corrcoef(nf, tv)[0, 1]),
            "n_windows": int(len(tv)), "n_flat_windows": int(flat.sum()),
            "max_jne_where_flat": float(j[flat].max()) if flat.any() else 0.0,
            "max_nf_where_flat": float(nf[flat].max()) if flat.any() else 0.0,
            "centres": ((x[window // 2: n_grid - window // 2]).numpy()),
            "jne": j, "nf": nf, "target": tv,
        }
    return out


# -- 2. untrained residual nets -----------------------------------------------------------
def _check_first_layer(first_layer: str, width: int, n_features: int) -> None:
    if first_layer not in FIRST_LAYERS:
        raise ValueError(f"first_layer must be one of {FIRST_LAYERS}, got {first_layer!r}")
    if first_layer == "residual" and width != n_features:
        raise ValueError(f"a residual first layer needs width == n_features, got {width} "
                         f"and {n_features}")


class _ResNet:
    """Weights of one repetition (PyTorch default nn.Linear init under a seed)."""

    def __init__(self, width: int, n_features: int, seed: int, dtype=torch.float32):
        torch.manual_seed(seed)
        l1, l2, l3 = nn.Linear(n_features, width), nn.Linear(width, width), nn.Linear(width, 1)
        cv = lambda t: t.detach().to(dtype)  # noqa: E731
        self.W1, self.b1, self.W2, self.b2 = cv(l1.weight), cv(l1.bias), cv(l2.weight), cv(l2.bias)
        self.w3 = cv(l3.weight)[0]

    def module(self, act1: nn.Module | None, act2: nn.Module | None,
               first_layer: str = "residual") -> nn.Sequential:
        """The same network as an nn.Sequential (for cross-checks with linbridge.jacobian)."""
        from ..encoders import Residual

        width, D = self.W1.shape
        _check_first_layer(first_layer, width, D)

        def block(W, b, act):
            res = Residual(width, "identity", bias=True)
            res.act = act if act is not None else nn.Identity()
            with torch.no_grad():
                res.linear.weight.copy_(W); res.linear.bias.copy_(b)  # noqa: E702
            return res

        if first_layer == "residual":
            first = [block(self.W1, self.b1, act1)]
        else:
            l1 = nn.Linear(D, width)
            with torch.no_grad():
                l1.weight.copy_(self.W1); l1.bias.copy_(self.b1)  # noqa: E702
            first = [l1, act1 if act1 is not None else nn.Identity()]
        l3 = nn.Linear(width, 1)
        with torch.no_grad():
            l3.weight.copy_(self.w3[None]); l3.bias.zero_()  # noqa: E702
        return nn.Sequential(*first, block(self.W2, self.b2, act2), l3).eval()


SECOND_LAYERS = ("residual", "plain", "post")


@torch.no_grad()
def residual_jacobians(net: _ResNet, X: torch.Tensor, act1: nn.Module | None,
                       act2: nn.Module | None, first_layer: str = "residual",
                       second_layer: str = "residual") -> torch.Tensor:
    """Jacobians of y = w3 . h2 for every row of X: (n, n_features).

    first layer  ``"residual"``: h1 = x + phi1(W1 x + b1);  ``"plain"``: h1 = phi1(W1 x + b1)
    second layer ``"residual"``: h2 = h1 + phi2(W2 h1 + b2) (the readings the suite judges);
    ``"plain"``: h2 = phi2(W2 h1 + b2); ``"post"``: h2 = phi2(h1 + W2 h1 + b2) (other
    readings, measured by scripts/residual_readings.py). No activation means D = I.
    """
    _check_first_layer(first_layer, *net.W1.shape)
    if second_layer not in SECOND_LAYERS:
        raise ValueError(f"second_layer must be one of {SECOND_LAYERS}, got {second_layer!r}")
    z1 = X @ net.W1.T + net.b1
    h1, d1 = (z1, None) if act1 is None else _act_and_derivative(act1, z1)
    if first_layer == "residual":
        h1 = X + h1
    w3 = net.w3
    z2 = h1 @ net.W2.T + net.b2 + (h1 if second_layer == "post" else 0)
    g = w3 if act2 is None else dphi(act2, z2) * w3  # w3 D2, one row per sample
    G2 = {"residual": w3 + g @ net.W2, "plain": g @ net.W2, "post": g + g @ net.W2}[second_layer]
    G2 = G2.expand(X.shape[0], -1)
    J = (G2 if d1 is None else G2 * d1) @ net.W1
    return J + G2 if first_layer == "residual" else J


def _net_indices(J: torch.Tensor) -> tuple[float, float]:
    """JNE and NF of one output unit's Jacobians J (n, n_features).

    Per-sample sums over features in the Jacobians' dtype, the reductions over samples in
    float64 (the per-sample sums have 768 terms; float32 keeps them to ~1e-6 relative).
    """
    dev = J - J.double().mean(0, keepdim=True).to(J.dtype)
    s = dev.abs().sum(1, dtype=torch.float64)
    j = float(jne(s[:, None].numpy())[0])
    nf = float(nonlinear_fraction(dev.pow(2).sum(1, dtype=torch.float64)[:, None].numpy(),
                                  J.pow(2).sum(1, dtype=torch.float64)[:, None].numpy())[0])
    return j, nf


@torch.no_grad()
def residual_rep(net: "_ResNet", X: torch.Tensor, first_layer: str = "residual"
                 ) -> dict[str, dict[str, tuple[float, float]]]:
    """(JNE, NF) of every placement and activation for one repetition.

    The same products as ``residual_jacobians``, arranged to share work. With A = I + W1
    (residual first layer) or W1 (plain), z1 = W1 x + b1 and the linear first layer's
    output h1 = A x + b1 are computed once, and with the activation only in the second
    block ('deep') J_k = w3 A + (w3 * d2_k)(W2 A): one GEMM with the shared M = W2 A.
    """
    _check_first_layer(first_layer, *net.W1.shape)
    residual = first_layer == "residual"
    z1 = X @ net.W1.T + net.b1
    h1_lin = X + z1 if residual else z1
    w3 = net.w3
    A = net.W1 + torch.eye(net.W1.shape[1], dtype=net.W1.dtype) if residual else net.W1
    M, c = net.W2 @ A, w3 @ A
    G2c = w3 + w3 @ net.W2

    def out_jac(G2: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:  # G2 (I + D1 W1) or G2 D1 W1
        J = (G2 * d1) @ net.W1
        return J + G2 if residual else J

    none = _net_indices(c.expand(X.shape[0], -1))
    z2_lin = h1_lin @ net.W2.T + net.b2
    out = {}
    for name, cls in ACTIVATIONS.items():
        act = cls()
        a1, d1 = _act_and_derivative(act, z1)
        h1 = X + a1 if residual else a1
        _, d2_deep = _act_and_derivative(act, z2_lin)
        _, d2_both = _act_and_derivative(act, h1 @ net.W2.T + net.b2)
        out[name] = {
            "none": none,
            "shallow": _net_indices(out_jac(G2c.expand(X.shape[0], -1), d1)),
            "deep": _net_indices(torch.addmm(c, d2_deep * w3, M)),
            "both": _net_indices(out_jac(w3 + (d2_both * w3) @ net.W2, d1)),
        }
    return out


def residual_nets(n_reps: int = 200, n_samples: int = 1000, width: int = 768,
                  seed: int = 0, progress: bool = False, first_layer: str = "residual") -> dict:
    """JNE and NF of the four placements for every activation, over repetitions.

    Each repetition draws fresh weights and inputs; the four placements and four
    activations share them, so orderings are compared within a repetition.
    """
    from tqdm.auto import tqdm

    vals = {ix: {p: np.zeros((n_reps, len(ACTIVATIONS))) for p in PLACEMENTS}
            for ix in ("jne", "nf")}
    for r in tqdm(range(n_reps), desc=f"residual nets ({first_layer} first layer)",
                  disable=None if progress else True, leave=False):
        net = _ResNet(width, width, seed * 100003 + r)
        g = torch.Generator().manual_seed(seed * 100003 + r + 1)
        X = torch.rand(n_samples, width, generator=g) * 20 - 10
        res = residual_rep(net, X, first_layer)
        for a, name in enumerate(ACTIVATIONS):
            for p, (j, nf) in res[name].items():
                vals["jne"][p][r, a], vals["nf"][p][r, a] = j, nf
    out: dict = {"n_reps": n_reps, "n_samples": n_samples, "width": width,
                 "first_layer": first_layer, "per_activation": {}}
    for a, name in enumerate(ACTIVATIONS):
        d = {}
        for ix in ("jne", "nf"):
            v = {p: vals[ix][p][:, a] for p in PLACEMENTS}
            scale = np.mean([v[p].mean() for p in ("shallow", "deep", "both")])
            d[ix] = {
                "median": {p: float(np.median(v[p])) for p in PLACEMENTS},
                "max_none_relative": float(v["none"].max() / scale) if scale > 0 else 0.0,
                "frac_shallow_lt_deep_lt_both": float(np.mean((v["shallow"] < v["deep"])
                                                              & (v["deep"] < v["both"]))),
                "frac_shallow_lt_deep": float(np.mean(v["shallow"] < v["deep"])),
                "frac_deep_lt_both": float(np.mean(v["deep"] < v["both"])),
                "frac_shallow_lt_both": float(np.mean(v["shallow"] < v["both"])),
                "frac_deep_lt_shallow_lt_both": float(np.mean((v["deep"] < v["shallow"])
                                                              & (v["shallow"] < v["both"]))),
            }
        out["per_activation"][name] = d
    out["values"] = vals
    return out


# -- 3. sample size ---------------------------------------------------------------------
def sample_size(sizes=(10, 30, 100, 300, 1000), n_reps: int = 50, n_offsets: int = 41,
                offset_range: float = 8.0, n_dense: int = 200001, seed: int = 0) -> dict:
    """Agreement (Pearson r over offsets) of N-sample index curves with the planted curve."""
    rng = np.random.default_rng(seed)
    b = torch.linspace(-offset_range, offset_range, n_offsets, dtype=torch.float64)
    xd = torch.linspace(-10, 10, n_dense, dtype=torch.float64)
    out: dict = {"sizes": list(sizes), "n_reps": n_reps, "offsets": b.numpy(), "per_activation": {}}
    for name, cls in ACTIVATIONS.items():
        act = cls()
        pj, pn = _indices_1d(dphi(act, xd[:, None] - b[None]).numpy())
        rows = {"jne": {}, "nf": {}}
        for N in sizes:
            rj, rn = [], []
            for _ in range(n_reps):
                x = torch.as_tensor(rng.uniform(-10, 10, N))
                j, nf = _indices_1d(dphi(act, x[:, None] - b[None]).numpy())
                rj.append(np.corrcoef(j, pj)[0, 1] if j.std() > 0 else 0.0)
                rn.append(np.corrcoef(nf, pn)[0, 1] if nf.std() > 0 else 0.0)
            rows["jne"][int(N)] = float(np.mean(rj))
            rows["nf"][int(N)] = float(np.mean(rn))
        out["per_activation"][name] = {**rows, "planted_jne": pj, "planted_nf": pn}
    return out
