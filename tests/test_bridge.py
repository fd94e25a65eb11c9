"""The LinBridge learner, its baselines, and the held-out / stability evaluations."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from linbridge.bridge import (COLLAPSE_RULES, CollapseWarning, LinBridge, SubsetSource,
                              effective_sample_size, elementwise_median, heldout_split_scores,
                              info_nce, least_squares_distillation, mean_jacobian, stability,
                              tempering)
from linbridge.jacobian import ArrayJacobianSource, LinearJacobianSource, ModelJacobianSource

HISTORY_KEYS = {"epoch", "loss", "info_nce", "similarity_gap", "bias_l1", "mean_split_l1",
                "cos_inherent_mean", "info_nats", "ess_fraction", "alpha_max"}


def relu_source(N=96, V=12, D=10, seed=0):
    """Exact Jacobians of y_v = w_v.x + relu(a_v.x): (N, V, D) with outputs."""
    g = np.random.default_rng(seed)
    X = g.standard_normal((N, D))
    W, A = g.standard_normal((V, D)), g.standard_normal((V, D))
    act = (X @ A.T > 0).astype(float)  # (N, V)
    J = W[None] + act[:, :, None] * A[None]
    out = X @ W.T + np.maximum(X @ A.T, 0)
    return ArrayJacobianSource(J, X, outputs=out), W, A


class CountingSource(ArrayJacobianSource):
    """Records the largest block requested and refuses to be materialised."""

    max_block_samples = 0

    def block(self, samples=slice(None), units=slice(None)):
        b = super().block(samples, units)
        self.max_block_samples = max(self.max_block_samples, b.shape[0])
        return b

    def materialize(self):  # pragma: no cover - must not be called
        raise AssertionError("the learner materialised a source it should have streamed")


def fit(src, **kw):
    kw = {"n_epochs": 3, "batch_size": 32, "progress": False, **kw}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", CollapseWarning)
        lb = LinBridge(**kw).fit(src)
    return lb, [x for x in w if issubclass(x.category, CollapseWarning)]


def test_fitted_attributes_and_identities():
    src, _, _ = relu_source()
    lb, _ = fit(src)
    N, V, D = src.shape
    assert lb.inherent_.shape == (V, D)
    assert lb.sample_weights_.shape == (N,) and np.isclose(lb.sample_weights_.sum(), 1)
    assert (lb.sample_weights_ >= 0).all()
    J = src.J.double().numpy()
    np.testing.assert_allclose(lb.inherent_, np.einsum("n,nud->ud", lb.sample_weights_, J),
                               atol=1e-10)
    np.testing.assert_allclose(lb.mean_jacobian_, J.mean(0), atol=1e-10)
    assert lb.projection_.shape == (D, 1)
    np.testing.assert_allclose(lb.bias_embedding_, (J - lb.inherent_) @ lb.projection_, atol=1e-9)
    np.testing.assert_allclose(lb.transform(src), lb.bias_embedding_, atol=1e-9)
    assert len(lb.history_) == 3 and HISTORY_KEYS <= set(lb.history_[0])
    np.testing.assert_allclose(lb.predict(src.X.numpy()), src.X.double().numpy() @ lb.inherent_.T)
    s = lb.summary()
    assert s["params"]["min_ess_fraction"] == 0.5 and "collapse_reasons" in s
    assert lb.ess_fraction_ == pytest.approx(effective_sample_size(lb.sample_weights_) / N)


def test_seeded_and_deterministic():
    src, _, _ = relu_source()
    a, _ = fit(src, seed=3)
    b, _ = fit(src, seed=3)
    c, _ = fit(src, seed=4, lr=3e-3)
    np.testing.assert_array_equal(a.inherent_, b.inherent_)
    assert not np.array_equal(a.sample_weights_, c.sample_weights_)


def test_mean_scorer_is_the_mean_jacobian_and_linear_source_is_exact():
    src, _, _ = relu_source()
    lb, w = fit(src, scorer="mean")
    np.testing.assert_allclose(lb.inherent_, mean_jacobian(src), atol=1e-12)
    assert lb.ess_fraction_ == pytest.approx(1.0)
    Wl = np.random.default_rng(1).standard_normal((5, 7))
    X = np.random.default_rng(2).standard_normal((40, 7))
    lb2, _ = fit(LinearJacobianSource(Wl, X, dtype=torch.float64), batch_size=8, n_epochs=2)
    np.testing.assert_allclose(lb2.inherent_, Wl, atol=1e-6)


@pytest.mark.parametrize("scorer", ["cnn", "attention"])
def test_guard_keeps_effective_sample_size(scorer):
    src, _, _ = relu_source()
    lb, w = fit(src, scorer=scorer, l1_weight=0.0, lr=1e-2, n_epochs=6)
    assert lb.ess_fraction_ >= 0.5 - 1e-9  # float64 final weights
    assert all(h["ess_fraction"] >= 0.5 - 1e-6 for h in lb.history_)
    assert not any("concentrated" in str(x.message) for x in w)


def test_unguarded_concentration_warns():
    src, _, _ = relu_source(N=128)
    lb, w = fit(src, min_ess_fraction=0.0, l1_weight=0.0, lr=3e-2, n_epochs=15)
    assert lb.ess_fraction_ < COLLAPSE_RULES["ess_fraction"]
    assert lb.collapsed_ and any("concentrated" in str(x.message) for x in w)


def test_uninformative_loss_warns():
    src, _, _ = relu_source()
    lb, w = fit(src, temperature=100.0)
    assert lb.history_[-1]["info_nats"] < 0.05 * lb.history_[-1]["info_max_nats"]
    assert lb.collapsed_ and any("no information" in str(x.message) for x in w)


def test_default_does_not_warn():
    src, _, _ = relu_source()
    lb, w = fit(src)
    assert not w and not lb.collapsed_ and lb.collapse_reasons_ == []


def test_streams_batches_without_materialising():
    src, _, _ = relu_source()
    cs = CountingSource(src.J, src.X, outputs=src.outputs(), memory_budget_mb=0.05)
    lb, _ = fit(cs, cache_mb=0.0, batch_size=16)
    assert cs.max_block_samples < cs.n_samples
    ref, _ = fit(src, batch_size=16)
    np.testing.assert_allclose(lb.inherent_, ref.inherent_, atol=1e-6)


def test_unit_subsampling_and_model_source():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(16, 9, bias=False)).eval()
    X = np.random.default_rng(0).standard_normal((48, 6)).astype(np.float32)
    src = ModelJacobianSource(model, X)
    lb, _ = fit(src, unit_batch=4, cache_mb=0.0, batch_size=16)
    assert lb.inherent_.shape == (9, 6)
    full = src.block(slice(None)).double().numpy()
    np.testing.assert_allclose(lb.inherent_, np.einsum("n,nud->ud", lb.sample_weights_, full),
                               atol=1e-5)


@pytest.mark.parametrize("param, value, rule", [
    ("temperature", 0.0, "> 0"), ("embed_dim", 0, ">= 1"), ("l1_weight", -0.1, ">= 0"),
    ("lr", 0.0, "> 0"), ("batch_size", 1, ">= 2"), ("min_ess_fraction", 1.5, "in \\[0, 1\\]"),
    ("unit_batch", 0, ">= 1"), ("n_epochs", -1, ">= 0")])
def test_bad_parameters_are_refused_before_any_work(param, value, rule):
    src, _, _ = relu_source(N=8, V=2, D=3)
    with pytest.raises(ValueError, match=f"LinBridge {param} must be {rule}, got"):
        LinBridge(progress=False, **{param: value}).fit(src)


def test_non_finite_jacobians_are_named_by_sample_and_unit():
    src, _, _ = relu_source(N=40, V=6, D=5)
    J = src.J.clone()
    J[17, 4, 2] = float("nan")
    with pytest.raises(ValueError, match="sample 17, unit 4, feature 2"):
        ArrayJacobianSource(J, src.X)
    # a source whose blocks turn bad later (e.g. a store): caught in the learner's first pass,
    # with global ids although it streams small blocks
    cs = CountingSource(src.J.clone(), src.X, memory_budget_mb=0.0005)
    cs.J[33, 5, 0] = float("inf")
    with pytest.raises(ValueError, match="the Jacobian source contains 1 non-finite value.*"
                                         "sample 33, unit 5, feature 0"):
        LinBridge(progress=False, cache_mb=0.0).fit(cs)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    with pytest.raises(ValueError, match="model parameter '2.weight' \\(2, 4\\) contains 1 "):
        ModelJacobianSource(model.eval(), src.X.float())


def test_predict_and_transform_check_their_inputs():
    src, _, _ = relu_source(N=24, V=3, D=4)
    with pytest.raises(NotFittedError, match="not fitted"):
        LinBridge().predict(src.X.numpy())
    lb, _ = fit(src, n_epochs=1, batch_size=8)
    assert lb.predict(src.X.numpy()).shape == (24, 3)
    with pytest.raises(ValueError, match="expected \\(n_samples, n_features=4\\)"):
        lb.predict(np.zeros((2, 5)))


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    src, _, _ = relu_source()
    ck = tmp_path / "ck.pt"
    fit(src, n_epochs=2, checkpoint_path=ck)
    resumed, _ = fit(src, n_epochs=4, checkpoint_path=ck)
    straight, _ = fit(src, n_epochs=4)
    assert len(resumed.history_) == 4
    np.testing.assert_allclose(resumed.inherent_, straight.inherent_, atol=1e-10)


def test_info_nce_chance_level_and_tempering():
    a = torch.ones(4)
    pos = torch.ones(8, 4)
    loss, gap = info_nce(a, pos, pos.clone(), 0.1)
    assert float(loss) == pytest.approx(math.log(9), abs=1e-6) and abs(float(gap)) < 1e-7
    s = torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    T = tempering(s, 0.5)
    assert T > 1 and effective_sample_size(torch.softmax(s / T, 0)) >= 4 - 1e-6
    assert tempering(torch.zeros(8), 0.5) == 1.0 and tempering(s, 0.0) == 1.0
    with pytest.raises(ValueError):
        LinBridge(min_ess_fraction=2.0).fit(relu_source()[0])


def test_baselines():
    src, W, A = relu_source(N=101)
    J = src.J.numpy()
    np.testing.assert_allclose(elementwise_median(src), np.median(J, 0), atol=1e-12)
    Wl = np.random.default_rng(3).standard_normal((4, 10))
    X = np.random.default_rng(4).standard_normal((60, 10))
    np.testing.assert_allclose(least_squares_distillation(X, X @ Wl.T), Wl, atol=1e-8)
    with pytest.raises(ValueError):
        least_squares_distillation(X, (X @ Wl.T)[:5])


def test_subset_source():
    src, _, _ = relu_source()
    idx = np.array([5, 2, 40, 7])
    sub = SubsetSource(src, idx)
    assert sub.shape == (4, src.n_units, src.n_features)
    np.testing.assert_array_equal(sub.block(slice(None)).numpy(), src.J.numpy()[idx])
    np.testing.assert_array_equal(sub.block(np.array([1, 3]), np.array([0, 2])).numpy(),
                                  src.J.numpy()[idx[[1, 3]]][:, [0, 2]])
    np.testing.assert_array_equal(sub.outputs().numpy(), src.outputs().numpy()[idx])
    np.testing.assert_allclose(mean_jacobian(sub), src.J.numpy()[idx].mean(0))
    with pytest.raises(ValueError):
        SubsetSource(src, np.array([0, 999]))


def test_heldout_split_scores_on_a_linear_truth():
    g = np.random.default_rng(5)
    src, W, A = relu_source(N=120, seed=5)
    X = src.X.double().numpy()
    Y = src.outputs().double().numpy() + 0.1 * g.standard_normal((120, W.shape[0]))
    Xv = g.standard_normal((50, X.shape[1]))
    Fv = Xv @ W.T + np.maximum(Xv @ A.T, 0)
    Yv = Fv + 0.1 * g.standard_normal(Fv.shape)
    res = heldout_split_scores(src, X, Y, learner_params={"n_epochs": 2, "batch_size": 16},
                               fixed={"truth_linear": W}, X_val=Xv, Y_val=Yv, F_val=Fv)
    assert set(res["methods"]) == {"learned", "mean_jacobian", "median", "ls_distillation",
                                   "truth_linear"}
    m = res["methods"]["mean_jacobian"]
    assert {"median_r", "median_r2", "r2_map_corr_with_nonlinear"} <= set(m["heldout"])
    assert m["val"]["median_r"] > 0.5 and -1 <= m["split_half_r"] <= 1
    assert "split_half_r" not in res["methods"]["truth_linear"]
    assert res["per_unit"]["learned"]["r"].shape == (W.shape[0],)
    assert res["n_fit"] == [60, 60] and len(res["learner"]) == 2
    with pytest.raises(ValueError, match="differs"):
        heldout_split_scores(src, X + 1, Y)


def test_stability_structure():
    src, _, _ = relu_source(N=80)
    res = stability(src, learner_params={"n_epochs": 2}, batch_sizes=(16, 32, 64),
                    seeds=(0, 1))
    assert set(res["batch_size"]) == {16, 32}  # 64 > N / 2 is skipped
    assert set(res["seed"]) == {0, 1}
    for v in list(res["batch_size"].values()) + list(res["seed"].values()):
        assert -1 <= v["r_with_full_batch"] <= 1 and v["collapse_warnings"] == []
    assert res["full_batch"]["batch_size"] == 80
    assert res["min_r_batch_size"] > 0.9 and "seed_pairwise_mean_r" in res
