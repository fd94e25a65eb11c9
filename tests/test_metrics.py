import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control, pearsonr

from linbridge.jacobian import ModelJacobianSource, deviation_statistics, weighted_mean_jacobian
from linbridge.metrics import (afd, bootstrap_r2_pvalues, correlate_maps, fdr_bh, jne, jne_ss,
                               nonlinear_fraction, pearson_r, r2_score)


def test_pearson_and_r2_match_references(rng):
    Y = rng.standard_normal((200, 5))
    P = Y + rng.standard_normal((200, 5))
    r = pearson_r(Y, P)
    for v in range(5):
        assert r[v] == pytest.approx(pearsonr(Y[:, v], P[:, v])[0], abs=1e-12)
    r2 = r2_score(Y, P)
    ref = 1 - ((Y - P) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(r2, ref)


def test_correlation_exact_with_large_offset_float32(rng):
    Y = rng.standard_normal((500, 3))
    P = Y + 0.5 * rng.standard_normal((500, 3))
    ref = pearson_r(Y, P)
    off = pearson_r((Y + 1e4).astype(np.float32), (P + 1e4).astype(np.float32))
    np.testing.assert_allclose(off, ref, atol=1e-3)


def test_constant_unit_scores_zero_with_warning(rng):
    Y = rng.standard_normal((50, 3))
    Y[:, 1] = 4.2
    P = rng.standard_normal((50, 3))
    with pytest.warns(UserWarning, match="constant unit"):
        r = pearson_r(Y, P)
    with pytest.warns(UserWarning, match="constant unit"):
        r2 = r2_score(Y, P)
    assert r[1] == 0 and r2[1] == 0
    assert np.isfinite(r).all() and np.isfinite(r2).all()


def test_nan_prediction_is_an_error(rng):
    P = rng.standard_normal((20, 2))
    P[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"sample 3, unit 1"):
        pearson_r(rng.standard_normal((20, 2)), P)


def _relu_unit(w: np.ndarray) -> torch.nn.Sequential:
    """y = relu(w.x) as a supported MLP (Linear -> ReLU -> Linear(1,1)=1)."""
    D = w.size
    net = torch.nn.Sequential(torch.nn.Linear(D, 1, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.as_tensor(w[None]))
        net[2].weight.fill_(1.0)
    return net.eval()


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_jne_of_relu_unit_matches_closed_form(p, rng):
    """For y = relu(w.x) active a fraction p: JNE = ||w||_1 |1-2p| sqrt(p(1-p)), NF = 1-p."""
    D, N = 6, 400
    w = rng.standard_normal(D)
    X = rng.standard_normal((N, D))
    proj = X @ w / (w @ w)
    n_act = int(round(p * N))
    sign = np.r_[np.ones(n_act), -np.ones(N - n_act)]
    X = X - np.outer(proj, w) + np.outer(sign * (0.5 + np.abs(proj)), w)  # set w.x sign exactly
    assert ((X @ w) > 0).sum() == n_act
    src = ModelJacobianSource(_relu_unit(w), X, dtype=torch.float64)
    Jbar = weighted_mean_jacobian(src)
    st = deviation_statistics(src, {"mean": Jbar})
    j = jne(st.l1["mean"])[0]
    expected = np.abs(w).sum() * abs(1 - 2 * p) * np.sqrt(p * (1 - p))
    assert j == pytest.approx(expected, rel=1e-9, abs=1e-12)
    nf = nonlinear_fraction(st.l2sq["mean"], st.jac_l2sq)[0]
    assert nf == pytest.approx(1 - p, rel=1e-9)
    if p == 0.5:
        assert j == pytest.approx(0, abs=1e-12) and nf == pytest.approx(0.5)  # JNE's blind spot
    ss = jne_ss(st.l1["mean"])
    assert np.sqrt(ss.mean(0))[0] == pytest.approx(j)


def test_nonlinear_fraction_zero_for_linear_unit(rng):
    net = torch.nn.Sequential(torch.nn.Linear(5, 7, bias=False), torch.nn.Identity(),
                              torch.nn.Linear(7, 3, bias=False)).double().eval()
    X = rng.standard_normal((50, 5))
    src = ModelJacobianSource(net, X, dtype=torch.float64)
    st = deviation_statistics(src, {"mean": weighted_mean_jacobian(src)})
    assert nonlinear_fraction(st.l2sq["mean"], st.jac_l2sq).max() < 1e-20
    assert jne(st.l1["mean"]).max() < 1e-12


def test_afd_recovers_planted_slope(rng):
    N = 101
    order = rng.permutation(N).astype(float)
    rank = np.argsort(np.argsort(order)) / (N - 1)
    d = np.stack([3.0 * rank + 1, -0.5 * rank, np.full(N, 2.0)], axis=1)
    np.testing.assert_allclose(afd(d, order), [3.0, 0.5, 0.0], atol=1e-12)


def test_bootstrap_pvalues_and_fdr(rng):
    Y = rng.standard_normal((200, 4))
    P = np.c_[Y[:, :2] + 0.3 * rng.standard_normal((200, 2)), rng.standard_normal((200, 2))]
    p = bootstrap_r2_pvalues(Y, P, n_boot=200, seed=1)
    assert p[0] == 0 and p[1] == 0  # well predicted
    assert p[2] > 0.5 and p[3] > 0.5  # noise predictions have negative R^2
    adj, sig = fdr_bh(p)
    np.testing.assert_allclose(adj, false_discovery_control(p, method="bh"))
    assert sig.tolist() == [True, True, False, False]


def test_correlate_maps_nan_safe():
    a = np.array([1.0, 2, 3, np.nan, 5])
    b = np.array([2.0, 4, 6, 1, 10])
    assert correlate_maps(a, b) == pytest.approx(1.0)
    assert np.isnan(correlate_maps(np.ones(4), b[:4]))
