import numpy as np
import pytest
import torch

from linbridge.encoders import MLPEncoder, RidgeEncoder, build_mlp


def test_ridge_recovers_linear_map(rng):
    X = rng.standard_normal((400, 10)).astype(np.float32)
    W = rng.standard_normal((10, 4))
    Y = X @ W + 0.01 * rng.standard_normal((400, 4))
    enc = RidgeEncoder().fit(X[:300], Y[:300])
    assert enc.coef_.shape == (10, 4) and enc.best_alphas_.shape == (4,)
    np.testing.assert_allclose(enc.coef_, W, atol=0.02)
    np.testing.assert_allclose(enc.jacobian_matrix(), W.T, atol=0.02)


def test_mlp_is_seeded_and_keeps_best_epoch(small_synthetic):
    ds = small_synthetic
    (Xtr, Ytr), (Xv, Yv) = ds.part("train"), ds.part("val")
    kw = dict(hidden=32, max_epochs=30, patience=3, seed=1, progress=False, lr=3e-3)
    a = MLPEncoder(**kw).fit(Xtr, Ytr, Xv, Yv)
    b = MLPEncoder(**kw).fit(Xtr, Ytr, Xv, Yv)
    for pa, pb in zip(a.module_.parameters(), b.module_.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert a.best_epoch_ >= 1
    vals = [h["val_loss"] for h in a.history_]
    assert a.best_val_loss_ == pytest.approx(min(vals))
    assert vals[a.best_epoch_] == pytest.approx(min(vals))
    # the module holds the best epoch's weights, not the last epoch's
    with torch.no_grad():
        now = float(torch.nn.functional.mse_loss(a.module_(torch.as_tensor(Xv)), torch.as_tensor(Yv)))
    assert now == pytest.approx(a.best_val_loss_, rel=1e-5)
    assert not a.module_.training


def test_linear_control_has_no_activation():
    net = build_mlp(5, 3, hidden=8, activation="identity")
    x = torch.randn(4, 5)
    with torch.no_grad():
        lhs = net(2 * x + x)
        rhs = 2 * net(x) + net(x)
    torch.testing.assert_close(lhs, rhs)


def test_paper_encoder_layout():
    net = build_mlp(768, 100)
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear"]
    assert net[0].weight.shape == (1024, 768) and net[0].bias is None and net[2].bias is None


def test_bad_inputs_are_named(rng):
    X = rng.standard_normal((20, 3)).astype(np.float32)
    Y = rng.standard_normal((19, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"X \(encoder fit\) has 20.*Y \(encoder fit\) has 19"):
        MLPEncoder(progress=False).fit(X, Y, X, Y)
    with pytest.raises(ValueError, match="unknown activation"):
        build_mlp(3, 2, activation="swishy")


def test_ridge_dual_path_equals_primal(rng):
    """With fewer samples than features the kernel (dual) solver is used: same coefficients."""
    import warnings

    from himalaya.ridge import RidgeCV

    X = rng.standard_normal((60, 100))
    Y = X @ rng.standard_normal((100, 3)) + rng.standard_normal((60, 3))
    enc = RidgeEncoder().fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = RidgeCV(alphas=np.asarray(enc.alphas)).fit(X, Y)
    np.testing.assert_allclose(enc.coef_, ref.coef_, atol=1e-5)
    np.testing.assert_array_equal(enc.best_alphas_, ref.best_alphas_)


def test_interrupted_training_resumes_to_the_same_result(small_synthetic, tmp_path):
    from linbridge.encoders import train_mlp

    ds = small_synthetic
    (Xtr, Ytr), (Xv, Yv) = ds.part("train"), ds.part("val")
    kw = dict(lr=3e-3, patience=50, seed=2, progress=False)

    def fresh():
        torch.manual_seed(0)
        return build_mlp(ds.n_features, ds.n_units, hidden=16)

    ref_model = fresh()
    ref = train_mlp(ref_model, Xtr, Ytr, Xv, Yv, max_epochs=6, **kw)
    ckpt = tmp_path / "enc.ckpt"
    part = fresh()
    train_mlp(part, Xtr, Ytr, Xv, Yv, max_epochs=3, checkpoint=ckpt, **kw)  # "interrupted"
    assert ckpt.exists()
    resumed_model = fresh()
    res = train_mlp(resumed_model, Xtr, Ytr, Xv, Yv, max_epochs=6, checkpoint=ckpt, **kw)
    assert res.best_epoch == ref.best_epoch and len(res.history) == len(ref.history)
    for a, b in zip(ref_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b)
