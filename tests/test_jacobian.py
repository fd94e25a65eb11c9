"""Jacobian engine: exactness against finite differences and autodiff, streaming reductions
against the dense computation, eval-mode guards, and the GPU path when there is one."""
import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from linbridge.encoders import build_mlp
from linbridge.jacobian import (ArrayJacobianSource, DeviationStats, LinearJacobianSource,
                                ModelJacobianSource, analytic_jacobian, as_source,
                                autodiff_jacobian, check_eval_mode, deviation_statistics,
                                forward_record, jacobian_sketch, median_jacobian,
                                parse_mlp, weighted_mean_jacobian)
from linbridge.metrics import jne, jne_ss, nonlinear_fraction

F64 = torch.float64
ACTS = ["relu", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "identity"]
ALL = ("jac_l2sq", "jx", "l1", "l2sq", "down", "euler")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(act="relu", bias=False, depth=1, residual=0, D=6, V=5, H=9, seed=0):
    torch.manual_seed(seed)
    m = build_mlp(D, V, hidden=H, depth=depth, activation=act, bias=bias,
                  residual_blocks=residual).to(F64).eval()
    if bias:  # make biases matter
        with torch.no_grad():
            for p in m.parameters():
                if p.ndim == 1:
                    p.normal_(0, 0.5)
    return m


def _central_fd(f, x, eps=1e-6):
    """(V, D) central differences of f at x (float64)."""
    cols = []
    for i in range(x.shape[0]):
        e = torch.zeros_like(x)
        e[i] = eps
        cols.append((f(x + e) - f(x - e)) / (2 * eps))
    return torch.stack(cols, -1)


def _unit_loop(model, X):
    """The JNE authors' way: one backward pass per unit through a retained graph."""
    Xg = X.clone().requires_grad_(True)
    Y = model(Xg)
    J = torch.stack([torch.autograd.grad(Y[:, v].sum(), Xg, retain_graph=True)[0]
                     for v in range(Y.shape[1])], 1)
    return J.detach()


def _dense_stats(J, X, refs, P, outputs):
    """Reference per-(sample, unit) statistics from the whole tensor, float64 numpy."""
    J, X = np.asarray(J, np.float64), np.asarray(X, np.float64)
    out = {"jac_l2sq": (J ** 2).sum(-1), "jx": np.einsum("nud,nd->nu", J, X),
           "outputs": np.asarray(outputs, np.float64)}
    for n, R in refs.items():
        d = J - R
        out[f"l1_{n}"] = np.abs(d).sum(-1)
        out[f"l2sq_{n}"] = (d ** 2).sum(-1)
        out[f"down_{n}"] = d @ P
        out[f"linear_{n}"] = X @ R.T
    return out


def _assert_stats(st: DeviationStats, ref: dict, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(st.jac_l2sq, ref["jac_l2sq"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(st.jx, ref["jx"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(st.outputs, ref["outputs"], rtol=rtol, atol=atol)
    for n in st.l1:
        np.testing.assert_allclose(st.l1[n], ref[f"l1_{n}"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(st.l2sq[n], ref[f"l2sq_{n}"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(st.down[n], ref[f"down_{n}"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(st.linear[n], ref[f"linear_{n}"], rtol=rtol, atol=atol)


# -- exactness of the analytic Jacobians ------------------------------------------------------

@pytest.mark.parametrize("act,bias,residual", list(itertools.product(ACTS, [False, True], [0, 1])))
def test_analytic_equals_central_differences(act, bias, residual):
    depth = 2 if act in ("relu", "tanh") else 1  # deeper chains for two of them
    m = _model(act, bias, depth=depth, residual=residual, seed=hash((act, bias, residual)) % 1000)
    X = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    src = ModelJacobianSource(m, X, dtype=F64)
    assert src.method == "analytic"
    J = src.block(slice(None))
    with torch.no_grad():
        fd = torch.stack([_central_fd(lambda z: m(z[None])[0], x) for x in X])
    torch.testing.assert_close(J, fd, rtol=1e-6, atol=1e-7)
    # the same through the public functional API
    steps = parse_mlp(m)
    torch.testing.assert_close(analytic_jacobian(steps, X), J)
    _, derivs = forward_record(steps, X)
    torch.testing.assert_close(analytic_jacobian(steps, X, slice(1, 3), derivs), J[:, 1:3])


def test_euler_identity_bias_free_relu():
    m = _model("relu", bias=False, depth=2, residual=2, V=7)
    X = torch.randn(12, 6, dtype=F64)
    src = ModelJacobianSource(m, X, dtype=F64)
    J = src.block(slice(None))
    with torch.no_grad():
        f = m(X)
    torch.testing.assert_close(torch.einsum("nud,nd->nu", J, X), f, rtol=1e-12, atol=1e-12)
    st = deviation_statistics(src, {"mean": weighted_mean_jacobian(src)}, stats=("jx", "euler"))
    np.testing.assert_allclose(st.jx, f.numpy(), rtol=1e-12, atol=1e-12)
    split = st.euler("mean")
    np.testing.assert_allclose(split["remainder"], 0, atol=1e-12)
    np.testing.assert_allclose(split["linear"] + split["bias"] + split["remainder"], f.numpy(),
                               rtol=1e-12, atol=1e-12)
    # with biases the remainder is its own, nonzero term
    mb = _model("relu", bias=True, depth=1)
    st = deviation_statistics(ModelJacobianSource(mb, X, dtype=F64), {"r": np.zeros((5, 6))},
                              stats=("euler",))
    assert np.abs(st.euler("r")["remainder"]).max() > 1e-3


def test_analytic_equals_torchfunc_and_unit_loop():
    m = _model("gelu", bias=True, depth=2, residual=1, V=11)
    X = torch.randn(9, 6, dtype=F64)
    J_an = ModelJacobianSource(m, X, dtype=F64).block(slice(None))
    J_loop = _unit_loop(m, X)
    for mode in ("jacfwd", "jacrev", "autodiff"):
        src = ModelJacobianSource(m, X, method=mode, dtype=F64)
        torch.testing.assert_close(src.block(slice(None)), J_an, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(J_loop, J_an, rtol=1e-12, atol=1e-12)
    # unit selection by index array
    idx = np.array([0, 3, 10])
    torch.testing.assert_close(ModelJacobianSource(m, X, dtype=F64).block([1, 4], idx),
                               J_an[[1, 4]][:, idx])
    torch.testing.assert_close(autodiff_jacobian(m, X[:3], torch.as_tensor(idx)), J_an[:3][:, idx])


class _WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.b = nn.Linear(8, 5)

    def forward(self, x):
        return self.b(torch.tanh(self.norm(self.a(x))))


def test_unsupported_module_falls_back_and_matches():
    torch.manual_seed(0)
    m = _WithLayerNorm().to(F64).eval()
    seq = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 5)).to(F64).eval()
    assert parse_mlp(m) is None and parse_mlp(seq) is None
    X = torch.randn(10, 6, dtype=F64)
    src = as_source(m, X, dtype=F64)
    assert isinstance(src, ModelJacobianSource) and src.method == "autodiff" and src.plan is None
    J = src.block(slice(None))
    torch.testing.assert_close(J, _unit_loop(m, X), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        fd = torch.stack([_central_fd(lambda z: m(z[None])[0], x) for x in X[:3]])
    torch.testing.assert_close(J[:3], fd, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="not a supported MLP"):
        ModelJacobianSource(m, X, method="analytic")
    # reductions through the block path give the dense numbers
    refs = {"mean": J.mean(0).numpy()}
    P = np.random.default_rng(0).standard_normal((6, 2))
    st = deviation_statistics(src, refs, P, stats=ALL, sample_chunk=3, unit_chunk=2)
    _assert_stats(st, _dense_stats(J, X, refs, P, m(X).detach()))
    np.testing.assert_allclose(weighted_mean_jacobian(src, sample_chunk=4), refs["mean"], rtol=1e-12)


def test_eval_mode_is_required():
    m = _model("relu")
    X = torch.randn(3, 6, dtype=F64)
    m.train()
    with pytest.raises(RuntimeError, match="model.eval"):
        ModelJacobianSource(m, X)
    bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    bn[1].train()
    with pytest.raises(RuntimeError, match="BatchNorm1d.*training mode"):
        check_eval_mode(bn)
    do = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    do[1].train()
    with pytest.raises(RuntimeError, match="Dropout"):
        ModelJacobianSource(do, X)
    do.eval()
    bn.eval()
    assert ModelJacobianSource(do, X).method == "autodiff"  # eval-mode dropout is the identity
    assert ModelJacobianSource(bn, X).n_units == 2


def test_source_does_not_modify_the_model():
    m = build_mlp(6, 5, hidden=9).eval()
    X = torch.randn(4, 6)
    ModelJacobianSource(m, X, dtype=F64)
    ModelJacobianSource(m, X, method="autodiff", dtype=F64)
    assert all(p.dtype == torch.float32 for p in m.parameters())


# -- streaming reductions ------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [dict(act="relu"), dict(act="leaky_relu", bias=True),
                                 dict(act="identity"), dict(act="silu", depth=2, residual=1),
                                 dict(act="relu", depth=2, residual=2, bias=True)])
def test_streaming_equals_dense_for_any_budget(cfg):
    m = _model(V=23, H=17, **cfg)
    X = torch.randn(19, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    J = ModelJacobianSource(m, X, method="autodiff", dtype=F64).block(slice(None)).numpy()
    rng = np.random.default_rng(1)
    refs = {"mean": J.mean(0), "other": J.mean(0) + 0.1 * rng.standard_normal(J.shape[1:])}
    P = rng.standard_normal((6, 2))
    with torch.no_grad():
        dense = _dense_stats(J, X, refs, P, m(X))
    runs = [dict(memory_budget_mb=b) for b in (0.02, 0.2, 1e3)]
    runs += [dict(chunks=dict(sample_chunk=4, unit_chunk=5)), dict(chunks=dict(sample_chunk=1,
                                                                              unit_chunk=3))]
    for run in runs:
        chunks = run.pop("chunks", {})
        src = ModelJacobianSource(m, X, dtype=F64, **run)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            np.testing.assert_allclose(weighted_mean_jacobian(src, **chunks), J.mean(0),
                                       rtol=1e-12, atol=1e-14)
            st = deviation_statistics(src, refs, P, stats=ALL, **chunks)
        _assert_stats(st, dense)
    # the block path (an in-memory array) gives the same numbers
    st = deviation_statistics(ArrayJacobianSource(J, X, outputs=dense["outputs"],
                                                  memory_budget_mb=0.01), refs, P, stats=ALL)
    _assert_stats(st, dense)


def test_default_stats_and_derived_indices():
    m = _model("relu", V=13)
    X = torch.randn(30, 6, dtype=F64)
    src = ModelJacobianSource(m, X, dtype=F64)
    Jbar = weighted_mean_jacobian(src)
    P = np.ones((6, 1))
    st = deviation_statistics(src, {"mean": Jbar}, P)
    assert st.outputs is None and st.linear == {} and st.down["mean"].shape == (30, 13, 1)
    np.testing.assert_allclose(st.jne("mean"), jne(st.l1["mean"]))
    np.testing.assert_allclose(st.jne_ss("mean"), jne_ss(st.l1["mean"]))
    np.testing.assert_allclose(st.nonlinear_fraction("mean"),
                               nonlinear_fraction(st.l2sq["mean"], st.jac_l2sq))
    assert np.all(st.nonlinear_fraction() <= 1) and st.nonlinear_fraction().max() > 0.05
    only = deviation_statistics(src, {"mean": Jbar}, stats=("l1",))
    assert only.jac_l2sq is None and only.l2sq == {} and only.jx is None
    np.testing.assert_array_equal(only.l1["mean"], st.l1["mean"])
    with pytest.raises(ValueError, match="needs a projection"):
        deviation_statistics(src, {"mean": Jbar}, stats=("down",))
    with pytest.raises(ValueError, match="expected"):
        deviation_statistics(src, {"mean": Jbar[:3]})
    with pytest.raises(TypeError, match="sample_chunk"):
        deviation_statistics(src, {"mean": Jbar}, samplechunk=3)


def test_float32_engine_within_float32_tolerance():
    torch.manual_seed(3)
    m = build_mlp(40, 60, hidden=50).eval()
    X = torch.randn(25, 40)
    src = ModelJacobianSource(m, X, memory_budget_mb=0.5)
    J = _unit_loop(m.double(), X.double()).numpy()
    m.float()
    Jbar = weighted_mean_jacobian(src)
    np.testing.assert_allclose(Jbar, J.mean(0), rtol=1e-5, atol=1e-6)
    st = deviation_statistics(src, {"mean": Jbar}, stats=("l1", "l2sq", "jac_l2sq", "jx"))
    d = J - Jbar
    np.testing.assert_allclose(st.l1["mean"], np.abs(d).sum(-1), rtol=2e-5)
    np.testing.assert_allclose(st.l2sq["mean"], (d ** 2).sum(-1), rtol=2e-5)
    np.testing.assert_allclose(st.jac_l2sq, (J ** 2).sum(-1), rtol=2e-5)
    np.testing.assert_allclose(st.jx, np.einsum("nud,nd->nu", J, X.double().numpy()),
                               rtol=1e-4, atol=1e-5)


def test_weighted_mean_jacobian_weights():
    m = _model("tanh", bias=True, depth=2, V=7)
    X = torch.randn(15, 6, dtype=F64)
    src = ModelJacobianSource(m, X, dtype=F64)
    J = src.block(slice(None)).numpy()
    w = np.random.default_rng(0).random(15)
    expect = np.einsum("n,nud->ud", w / w.sum(), J)
    np.testing.assert_allclose(weighted_mean_jacobian(src, w), expect, rtol=1e-12)
    np.testing.assert_allclose(weighted_mean_jacobian(src, 3 * w, sample_chunk=2), expect, rtol=1e-12)
    arr = ArrayJacobianSource(J, X, memory_budget_mb=0.001)
    np.testing.assert_allclose(weighted_mean_jacobian(arr, w), expect, rtol=1e-12)
    one_hot = np.eye(15)[4]
    np.testing.assert_allclose(weighted_mean_jacobian(src, one_hot), J[4], rtol=1e-12)
    for bad, msg in [(w[:3], "15 samples"), (-w, "non-negative"), (0 * w, "sum to zero")]:
        with pytest.raises(ValueError, match=msg):
            weighted_mean_jacobian(src, bad)


def test_linear_source_fast_path_matches_blocks():
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((5, 4)), rng.standard_normal((8, 4))
    lin = LinearJacobianSource(W, X, dtype=F64)
    J = np.broadcast_to(W, (8, 5, 4))
    refs = {"z": np.zeros((5, 4)), "w": W}
    P = rng.standard_normal((4, 3))
    st = deviation_statistics(lin, refs, P, stats=ALL)
    _assert_stats(st, _dense_stats(J, X, refs, P, X @ W.T))
    np.testing.assert_allclose(weighted_mean_jacobian(lin), W)
    np.testing.assert_allclose(st.jne("w"), 0)


def test_median_and_materialize():
    m = _model("relu", depth=2, V=9)
    X = torch.randn(12, 6, dtype=F64)
    src = ModelJacobianSource(m, X, dtype=F64, memory_budget_mb=0.01)
    J = src.block(slice(None)).numpy()
    np.testing.assert_allclose(median_jacobian(src), np.median(J, 0))
    np.testing.assert_allclose(median_jacobian(ModelJacobianSource(m, X[:11], dtype=F64)),
                               np.median(J[:11], 0))
    mat = src.materialize()
    np.testing.assert_array_equal(mat.J.numpy(), J)
    assert src.n_blocks() > 1 and mat.shape == (12, 9, 6)
    np.testing.assert_allclose(src.outputs().numpy(), m(X).detach().numpy(), rtol=1e-14)


@pytest.mark.parametrize("cfg", [dict(act="relu"), dict(act="leaky_relu", bias=True),
                                 dict(act="gelu", depth=2, residual=1)])
def test_jacobian_sketch(cfg):
    m = _model(V=21, **cfg)
    X = torch.randn(11, 6, dtype=F64)
    src = ModelJacobianSource(m, X, dtype=F64)
    J = src.block(slice(None)).numpy()
    rng = np.random.default_rng(0)
    L, R = rng.standard_normal((21, 4)), rng.standard_normal((6, 3))
    expect = np.einsum("ua,nud,db->nab", L, J, R)
    np.testing.assert_allclose(jacobian_sketch(src, L, R, sample_chunk=4), expect, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(jacobian_sketch(ArrayJacobianSource(J, X, memory_budget_mb=1e-3),
                                               L, R), expect, rtol=1e-10, atol=1e-12)


def test_budget_too_small_for_results_warns():
    m = _model("relu", V=20)
    X = torch.randn(40, 6, dtype=F64)
    src = ModelJacobianSource(m, X, dtype=F64, memory_budget_mb=0.02)
    with pytest.warns(ResourceWarning, match="too small"):
        st = deviation_statistics(src, {"z": np.zeros((20, 6))})
    ok = deviation_statistics(ModelJacobianSource(m, X, dtype=F64), {"z": np.zeros((20, 6))})
    np.testing.assert_allclose(st.l1["z"], ok.l1["z"], rtol=1e-12)


# -- CUDA ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = _model("relu", depth=1, V=300, H=64, D=48)
    X = torch.randn(40, 48, dtype=F64)
    out = []
    for device in ("cpu", "cuda"):
        src = ModelJacobianSource(m, X, dtype=F64, device=device, memory_budget_mb=2)
        Jbar = weighted_mean_jacobian(src)
        st = deviation_statistics(src, {"mean": Jbar}, np.ones((48, 1)), stats=ALL)
        out.append((Jbar, st))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-12)
    for f in ("jac_l2sq", "jx", "outputs"):
        np.testing.assert_allclose(getattr(out[0][1], f), getattr(out[1][1], f), rtol=1e-10)
    for f in ("l1", "l2sq", "down", "linear"):
        np.testing.assert_allclose(getattr(out[0][1], f)["mean"], getattr(out[1][1], f)["mean"],
                                   rtol=1e-10, atol=1e-12)
