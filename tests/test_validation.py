"""The known-answer suite: its parts on small sizes, and `linbridge validate --quick`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from linbridge.jacobian import ModelJacobianSource
from linbridge.validation import Check, auc, table, write_results
from linbridge.validation.jne_sims import (ACTIVATIONS, _ResNet, activation_sweep,
                                           residual_jacobians, residual_rep, sample_size)


def test_check_judgement_and_files(tmp_path):
    a = Check("1a", "exact", "r", 0.99, 0.98, ">=")
    b = Check("1b", "exact", "max |x|", 2e-7, 1e-6, "<=")
    c = Check("2c", "trained", "reported", 0.5)
    d = Check("3d", "sims", "fails", 0.2, 0.95)
    e = Check("3e", "sims", "nan", float("nan"), 0.5)
    assert a.passed and b.passed and c.passed is None and d.passed is False and e.passed is False
    md = table([a, c])
    assert "| 1a |" in md and "reported" in md and "max \\|x\\|" in table([b])
    doc = write_results(tmp_path, [a, b, c, d], {"wall_seconds": 1.0})
    assert doc["n_checks"] == 3 and doc["n_failed"] == 1 and not doc["passed"]
    on_disk = json.loads((tmp_path / "validation.json").read_text())
    assert set(on_disk["checks"]["1a"]) >= {"value", "threshold", "passed"}
    assert (tmp_path / "validation.md").read_text().startswith("# linbridge validate")


def test_auc():
    assert auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert auc([0.9, 0.1], [0, 1]) == 0.0


def test_activation_sweep_tracks_second_derivative():
    sw = activation_sweep(n_grid=801, window=41)
    assert set(sw) == set(ACTIVATIONS)
    for name, v in sw.items():
        assert v["pearson_jne"] >= 0.9, name
        if name in ("relu", "leaky_relu"):
            assert v["n_flat_windows"] > 0
            assert v["max_jne_where_flat"] == 0.0 and v["max_nf_where_flat"] < 1e-20


@pytest.mark.parametrize("first_layer", ["residual", "plain"])
def test_residual_products_match_linbridge_jacobian(first_layer):
    net = _ResNet(24, 24, seed=1)
    X = torch.rand(7, 24) * 20 - 10
    for a1, a2 in [(None, None), (torch.nn.ReLU(), None), (None, torch.nn.GELU()),
                   (torch.nn.SiLU(), torch.nn.LeakyReLU())]:
        J = residual_jacobians(net, X, a1, a2, first_layer)
        ref = ModelJacobianSource(net.module(a1, a2, first_layer), X,
                                  method="autodiff").block(slice(None))
        torch.testing.assert_close(J, ref[:, 0], rtol=1e-4, atol=1e-5)
    rep = residual_rep(net, X, first_layer)
    from linbridge.validation.jne_sims import _net_indices

    for name, cls in ACTIVATIONS.items():
        assert rep[name]["none"][0] < 1e-6 and rep[name]["none"][1] < 1e-12
        for p, (a1, a2) in {"shallow": (cls(), None), "deep": (None, cls()),
                            "both": (cls(), cls())}.items():
            j, nf = _net_indices(residual_jacobians(net, X, a1, a2, first_layer))
            assert rep[name][p][0] == pytest.approx(j, rel=1e-4)
            assert rep[name][p][1] == pytest.approx(nf, rel=1e-4)


@pytest.mark.parametrize("first_layer", ["residual", "plain"])
@pytest.mark.parametrize("second_layer", ["plain", "post"])
def test_other_second_layers_match_autodiff(first_layer, second_layer):
    """The readings scripts/residual_readings.py measures, against torch.func on the forward."""
    net = _ResNet(12, 12, seed=2, dtype=torch.float64)
    X = torch.rand(5, 12, dtype=torch.float64) * 20 - 10
    a1, a2 = torch.nn.GELU(), torch.nn.SiLU()

    def f(x):
        h1 = a1(net.W1 @ x + net.b1) + (x if first_layer == "residual" else 0)
        z2 = net.W2 @ h1 + net.b2 + (h1 if second_layer == "post" else 0)
        return net.w3 @ a2(z2)

    ref = torch.func.vmap(torch.func.jacrev(f))(X)
    torch.testing.assert_close(residual_jacobians(net, X, a1, a2, first_layer, second_layer), ref)
    with pytest.raises(ValueError, match="second_layer must be one of"):
        residual_jacobians(net, X, a1, a2, first_layer, "dense")


def test_residual_first_layer_needs_square_weights():
    with pytest.raises(ValueError, match="width == n_features"):
        residual_jacobians(_ResNet(8, 5, seed=0), torch.zeros(2, 5), None, None)
    with pytest.raises(ValueError, match="first_layer must be one of"):
        residual_rep(_ResNet(8, 8, seed=0), torch.zeros(2, 8), "dense")


def test_residual_orderings_of_both_readings():
    """The two readings' orderings (what 3d and 3e measure), two repetitions at full size.

    With the issue's formula the deep deviation is damped by g / sqrt(1 + g^2) = 1/2 in
    expected size, so deep < shallow; with every layer residual shallow < deep < both.
    """
    from linbridge.validation.jne_sims import residual_nets

    res = residual_nets(n_reps=2, seed=3, first_layer="residual")
    plain = residual_nets(n_reps=2, seed=3, first_layer="plain")
    for name in ACTIVATIONS:
        assert res["per_activation"][name]["jne"]["frac_shallow_lt_deep_lt_both"] == 1.0, name
        assert plain["per_activation"][name]["jne"]["frac_shallow_lt_deep"] == 0.0, name
        med = plain["per_activation"][name]["jne"]["median"]
        assert 0.5 < med["deep"] / med["shallow"] < 0.9, (name, med)


def test_sample_size_shape():
    ss = sample_size(sizes=(20, 200), n_reps=3, n_offsets=11, n_dense=20001)
    for v in ss["per_activation"].values():
        assert set(v["nf"]) == {20, 200} and v["nf"][200] > 0.95


def test_relu_half_blind_spot():
    from linbridge.validation.synthetic_checks import relu_half_checks

    g = np.random.default_rng(0)
    checks = {c.id: c for c in relu_half_checks(g.standard_normal((60, 5)), g.standard_normal(5))}
    assert checks["1d"].value == pytest.approx(0.5, abs=1e-9)
    assert checks["1e"].value < 1e-12 and checks["1f"].passed


def test_gabor_exact_separation():
    from linbridge.validation.gabor import make_gabor_data
    from linbridge.validation.synthetic_checks import indices

    gd = make_gabor_data(n_per_class=4, patch=8, n_train=200, n_val=50, n_test=80)
    nf, _, _ = indices(ModelJacobianSource(gd.cells, gd.X[gd.test], method="autodiff",
                                           dtype=torch.float64))
    assert nf[~gd.is_complex].max() < 1e-20 and auc(nf, gd.is_complex) == 1.0


EXPECTED = {"1a", "1b", "1c", "1d", "1e", "1f", "2a", "2b", "2c", "2d", "2e", "3a", "3b", "3c", "3d",
            "3e", "3f", "3g", "4a", "4b", "5a", "5b", "5c"}
# exact known answers: these must pass even at the quick suite's small sizes
MUST_PASS = {"1a", "1b", "1c", "1d", "1e", "1f", "3a", "3b", "3c", "3f", "4a", "5a", "5b", "5c"}


def test_validate_cli_quick(tmp_path):
    from typer.testing import CliRunner

    from linbridge.cli import app

    threads = torch.get_num_threads()
    try:  # one thread: the quick suite is latency-bound, and CI machines are shared
        res = CliRunner().invoke(app, ["validate", "--quick", "--quiet", "--threads", "1",
                                       "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code in (0, 1), res.output
    doc = json.loads((tmp_path / "validation.json").read_text())
    assert set(doc["checks"]) == EXPECTED
    for cid, c in doc["checks"].items():
        assert {"value", "threshold", "passed", "applies_to", "details"} <= set(c), cid
        assert (c["threshold"] is None) == (c["passed"] is None), cid
    failed = {k for k, c in doc["checks"].items() if c["passed"] is False}
    assert not failed & MUST_PASS, failed
    assert res.exit_code == (1 if failed else 0)
    assert "| 1a |" in res.output and (tmp_path / "validation.md").exists()
    assert doc["meta"]["quick"] is True
