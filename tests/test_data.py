import numpy as np
import pytest
import torch

from linbridge.data import Dataset, Split, make_synthetic, zscore_by_train
from linbridge.data.synthetic import linear_fit_r2
from linbridge.jacobian import ModelJacobianSource


def test_synthetic_shapes_split_and_zscore(small_synthetic):
    ds = small_synthetic
    assert ds.X.shape == (950, 16) and ds.Y.shape == (950, 24)
    parts = [ds.split.train, ds.split.val, ds.split.test]
    assert sum(p.size for p in parts) == 950
    assert np.unique(np.concatenate(parts)).size == 950
    Xtr, Ytr = ds.part("train")
    np.testing.assert_allclose(Xtr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Xtr.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(Ytr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Ytr.std(0), 1, atol=1e-4)


def test_synthetic_defaults_match_issue():
    ds = make_synthetic(seed=0)
    assert (ds.n_samples, ds.n_features, ds.n_units) == (4000, 128, 300)
    assert (ds.split.train.size, ds.split.val.size, ds.split.test.size) == (3000, 500, 500)
    labels, counts = np.unique(ds.unit_labels, return_counts=True)
    assert list(counts) == [100, 100, 100]
    tier = ds.meta["tier"]
    s = ds.meta["strength_s"]
    assert s[tier == 2].min() >= 1 and s[tier == 2].max() <= 3
    assert s[tier == 3].min() >= 0.7 and s[tier == 3].max() <= 2
    # tier 1 is exactly linear: its planted strength is 0
    assert np.abs(ds.ground_truth.planted_strength[tier == 1]).max() < 1e-10
    st = ds.ground_truth.planted_strength
    assert np.median(st[tier == 2]) < np.median(st[tier == 3])


def test_synthetic_is_seeded():
    a = make_synthetic(seed=5, n_features=8, n_train=50, n_val=20, n_test=30, units_per_tier=2)
    b = make_synthetic(seed=5, n_features=8, n_train=50, n_val=20, n_test=30, units_per_tier=2)
    c = make_synthetic(seed=6, n_features=8, n_train=50, n_val=20, n_test=30, units_per_tier=2)
    np.testing.assert_array_equal(a.Y, b.Y)
    assert not np.allclose(a.Y, c.Y)


def test_planted_linear_is_mean_of_exact_jacobians(small_synthetic):
    """E_test[grad g] in z-scored response units, checked against autodiff of the module."""
    ds = small_synthetic
    planted = ds.meta["planted_encoder"]
    X = torch.as_tensor(ds.X[ds.split.test], dtype=torch.float64)
    src = ModelJacobianSource(planted.eval(), X, method="autodiff", dtype=torch.float64)
    J = src.block(slice(None)).numpy()
    np.testing.assert_allclose(J.mean(0), ds.ground_truth.planted_linear, rtol=1e-8, atol=1e-10)
    # and the module reproduces the noise-free responses up to the noise
    with torch.no_grad():
        g = planted(torch.as_tensor(ds.X, dtype=torch.float64)).numpy()
    corr = [np.corrcoef(g[:, v], ds.Y[:, v])[0, 1] for v in range(ds.n_units)]
    assert min(corr) > 0.7


def test_linear_fit_r2_known_values(rng):
    X = rng.standard_normal((300, 4))
    g = np.c_[X @ [1.0, 2, 0, 0], (X[:, 0]) ** 2]
    r2 = linear_fit_r2(X, g)
    assert r2[0] == pytest.approx(1.0)
    assert r2[1] < 0.05


def _tiny(Y=None, X=None, n=10):
    X = np.zeros((n, 3), np.float32) if X is None else X
    Y = np.zeros((n, 2), np.float32) if Y is None else Y
    return Dataset(name="t", X=X, Y=Y, unit_ids=np.array(["a", "b"]), unit_labels=np.array(["", ""]),
                   sample_ids=np.array([f"img{i}" for i in range(len(X))]),
                   split=Split(np.arange(6), np.arange(6, 8), np.arange(8, 10)))


def test_nan_in_responses_names_unit_and_sample():
    Y = np.zeros((10, 2), np.float32)
    Y[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"sample 4 \(img4\).*unit 1 \(b\)"):
        _tiny(Y=Y)


def test_sample_count_mismatch_states_both_counts():
    with pytest.raises(ValueError, match=r"X has 10.*Y has 9"):
        _tiny(Y=np.zeros((9, 2), np.float32))


def test_overlapping_split_rejected():
    with pytest.raises(ValueError, match="overlap"):
        Split([0, 1], [1], [2]).check(3)


def test_zscore_constant_column_warns_not_nan():
    a = np.c_[np.arange(10.0), np.full(10, 7.0)]
    with pytest.warns(UserWarning, match="constant"):
        z, mean, std = zscore_by_train(a, np.arange(8))
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 1], 0)


def test_zscore_large_offset_is_exact():
    base = np.random.default_rng(1).standard_normal((1000, 3))
    z, _, _ = zscore_by_train((base + 1e6).astype(np.float32), np.arange(1000))
    ref, _, _ = zscore_by_train(base.astype(np.float32), np.arange(1000))
    np.testing.assert_allclose(z, ref, atol=5e-2)  # float32 input quantisation at 1e6 only
    assert abs(z.mean()) < 1e-6
