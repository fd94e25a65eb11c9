"""Known answers on the planted synthetic dataset: exact level, trained level, collapse.

Exact level: the planted functions (``ds.meta['planted_encoder']``) stand in for the
encoder, so the Jacobians are exact and the planted linear component is, by definition,
their test-set mean E_test[grad g] (for these Gaussian features also the best linear fit,
Stein's lemma). Trained level: encoders fitted to the noisy responses.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bridge import CollapseWarning, LinBridge, elementwise_median, mean_jacobian
from ..data import Dataset
from ..jacobian import (ArrayJacobianSource, JacobianSource, ModelJacobianSource,
                         deviation_statistics)
from ..metrics import jne, nonlinear_fraction
from ._core import Check, corr, spearman

LINEAR_TOL = 1e-6


def indices(source: JacobianSource, reference: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NF, JNE, mean Jacobian) of every unit of a source."""
    Jm = mean_jacobian(source) if reference is None else reference
    st = deviation_statistics(source, {"mean": Jm})
    return nonlinear_fraction(st.l2sq["mean"], st.jac_l2sq), jne(st.l1["mean"]), Jm


def fit_learner(source: JacobianSource, params: dict[str, Any]) -> tuple[LinBridge, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CollapseWarning)
        lb = LinBridge(**params).fit(source)
    return lb, [str(w.message) for w in caught if issubclass(w.category, CollapseWarning)]


def _learner_details(lb: LinBridge, warns: list[str]) -> dict[str, Any]:
    last = lb.history_[-1]
    return {"ess_fraction": lb.ess_fraction_, "final_temper": lb.final_temper_,
            "warnings": warns, "final_epoch": {k: last[k] for k in (
                "loss", "info_nce", "info_nats", "similarity_gap", "bias_l1", "mean_split_l1",
                "cos_inherent_mean", "alpha_max", "ess_fraction")}}


def _tiers(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.meta["tier"])


def exact_level(ds: Dataset, learner: dict[str, Any]) -> tuple[list[Check], dict[str, Any]]:
    """Checks 1a-1f. Returns the checks and the exact source + default learner for check 5."""
    gt = ds.ground_truth
    planted = ds.meta["planted_encoder"].eval()
    X_test = ds.X[ds.split.test]
    src = ModelJacobianSource(planted, X_test, method="autodiff", dtype=torch.float64)
    src = src.materialize()
    nf, j, Jm = indices(src)
    lb, warns = fit_learner(src, learner)
    strength = np.asarray(gt.planted_strength, dtype=np.float64)
    tier = _tiers(ds)
    lin = tier == 1
    checks = [
        Check("1a", "exact", "learned inherent vs planted linear component (Pearson r)",
              corr(lb.inherent_, gt.planted_linear), 0.98, ">=", "learner",
              {"mean_jacobian_r": corr(Jm, gt.planted_linear),
               "median_r": corr(elementwise_median(src), gt.planted_linear),
               "note": "the planted linear component is E_test[grad g], i.e. the exact mean "
                       "Jacobian: the mean baseline scores 1 by construction",
               "learner": _learner_details(lb, warns)}),
        Check("1b", "exact", "Spearman(index, planted strength)", spearman(nf, strength), 0.9,
              ">=", "NF", {"jne_spearman": spearman(j, strength),
                           "tier_medians_nf": {int(t): float(np.median(nf[tier == t]))
                                               for t in (1, 2, 3)}}),
        Check("1c", "exact", "linear units: max index", float(nf[lin].max()), LINEAR_TOL, "<=",
              "NF", {"max_jne_relative": float((j[lin] / np.abs(Jm[lin]).sum(1)).max())}),
    ]
    checks += relu_half_checks(X_test, gt.planted_linear[0])
    return checks, {"source": src, "learner": lb, "learner_warnings": warns, "nf": nf}


def relu_half_checks(X: np.ndarray, w: np.ndarray) -> list[Check]:
    """y = relu(w.x) active exactly half the time: NF = 1/2 detects it, JNE = 0 misses it.

    The inputs are X together with -X, so w.x > 0 for exactly half of them. Also checks
    JNE's closed form ||w||_1 |1 - 2p| sqrt(p (1 - p)) on X alone (p = P(w.x > 0)).
    """
    X = np.asarray(X, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    D = X.shape[1]
    model = nn.Sequential(nn.Linear(D, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(w)[None])
        model[2].weight.fill_(1.0)
    model = model.double().eval()
    Xs = np.concatenate([X, -X])
    nf, j, _ = indices(ModelJacobianSource(model, Xs, method="analytic", dtype=torch.float64))
    w1 = np.abs(w).sum()
    p = float(np.mean(X @ w > 0))
    _, j1, _ = indices(ModelJacobianSource(model, X, method="analytic", dtype=torch.float64))
    closed = w1 * abs(1 - 2 * p) * np.sqrt(p * (1 - p))
    return [
        Check("1d", "exact", "relu(w.x) active half the time: index detects it (analytic 0.5)",
              float(nf[0]), 0.25, ">=", "NF", {"active_fraction": 0.5}),
        Check("1e", "exact", "relu(w.x) active half the time: JNE / ||w||_1 (its blind spot)",
              float(j[0] / w1), LINEAR_TOL, "<=", "JNE", {}),
        Check("1f", "exact", "JNE of relu(w.x) vs its closed form (relative error)",
              float(abs(j1[0] - closed) / closed) if closed > 0 else float(j1[0]), LINEAR_TOL,
              "<=", "JNE", {"active_fraction": p, "jne": float(j1[0]), "closed_form": closed}),
    ]


def _ordered_gap(values: np.ndarray, planted: np.ndarray, tier: np.ndarray) -> tuple[float, dict]:
    """Smallest step between consecutive tier medians, tiers sorted by planted strength."""
    tiers = np.unique(tier)
    pm = {int(t): float(np.median(planted[tier == t])) for t in tiers}
    vm = {int(t): float(np.median(values[tier == t])) for t in tiers}
    order = sorted(pm, key=pm.get)
    gaps = [vm[b] - vm[a] for a, b in zip(order, order[1:])]
    return float(min(gaps)), {"planted_order": order, "index_medians": vm, "planted_medians": pm}


def null_responses(ds: Dataset, ridge_coef: np.ndarray, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A linear null for every unit: X b_ridge + noise with the unit's residual sd.

    Each null unit is linear, with the real unit's linear prediction and the real unit's
    residual sd (on the training samples), so whatever NF a net trained on it shows is the
    floor of the net's own spurious nonlinearity at that unit's signal-to-noise ratio.
    Returns (training, validation) null responses.
    """
    rng = np.random.default_rng(seed + 7919)
    Xtr, Ytr = ds.part("train")
    Xv, _ = ds.part("val")
    res_sd = (Ytr - Xtr @ ridge_coef).std(0)

    def null(X):
        return (X @ ridge_coef + res_sd * rng.standard_normal((len(X), len(res_sd)))
                ).astype(np.float32)

    return null(Xtr), null(Xv)


def _trained_jacobians(ds: Dataset, Y_train, Y_val, mlp: dict[str, Any], seed: int
                       ) -> tuple[JacobianSource, Any]:
    from ..encoders import MLPEncoder

    enc = MLPEncoder(activation="relu", seed=seed, progress=False, **mlp)
    enc.fit(ds.part("train")[0], Y_train, ds.part("val")[0], Y_val)
    return ModelJacobianSource(enc.module_, ds.X[ds.split.test]).materialize(), enc


def trained_level(ds: Dataset, learner: dict[str, Any], mlp: dict[str, Any], seed: int,
                  exact_nf: np.ndarray | None = None, ensemble: int = 3) -> list[Check]:
    """Checks 2a-2e: ReLU MLPs trained on the noisy responses, and on a linear null.

    2a-2d use one net (seed ``seed``), as the pipeline does. 2e averages the Jacobians of
    ``ensemble`` nets trained from different seeds (the Jacobian of the ensemble mean),
    for the data and for the null: spurious nonlinearity that differs between seeds
    partly averages out.
    """
    from ..encoders import RidgeEncoder

    gt = ds.ground_truth
    Xtr, Ytr = ds.part("train")
    Xv, Yv = ds.part("val")
    ridge = RidgeEncoder().fit(Xtr, Ytr, Xv, Yv)
    Yn_tr, Yn_v = null_responses(ds, ridge.coef_, seed)
    srcs, nulls = [], []
    for k in range(max(1, ensemble)):
        srcs.append(_trained_jacobians(ds, Ytr, Yv, mlp, seed + k))
        nulls.append(_trained_jacobians(ds, Yn_tr, Yn_v, mlp, seed + k)[0])
    src, enc = srcs[0]
    nf, j, Jm = indices(src)
    nf_null, j_null, _ = indices(nulls[0])
    lb, warns = fit_learner(src, learner)
    strength = np.asarray(gt.planted_strength, dtype=np.float64)
    tier = _tiers(ds)
    gap, tier_info = _ordered_gap(nf, strength, tier)
    X_test = ds.X[ds.split.test]

    def ens(sources):  # the Jacobians of the ensemble mean
        return ArrayJacobianSource(torch.stack([s.J.double() for s in sources]).mean(0), X_test)

    nf_e, j_e, _ = indices(ens([s for s, _ in srcs]))
    nf_en, j_en, _ = indices(ens(nulls))
    sp = {"nf": spearman(nf, strength), "nf_minus_null": spearman(nf - nf_null, strength),
          "jne": spearman(j, strength), "jne_minus_null": spearman(j - j_null, strength),
          f"nf_ensemble{len(srcs)}": spearman(nf_e, strength),
          f"nf_ensemble{len(srcs)}_minus_null": spearman(nf_e - nf_en, strength),
          f"jne_ensemble{len(srcs)}_minus_null": spearman(j_e - j_en, strength)}
    if exact_nf is not None:
        sp["exact_level_nf_ceiling"] = spearman(exact_nf, strength)
    null_text = ("the same MLP trained on X b_ridge + noise with each unit's residual sd; its "
                 "NF per unit is the floor of the net's own nonlinearity")
    return [
        Check("2a", "trained", "learned inherent vs planted linear component (Pearson r)",
              corr(lb.inherent_, gt.planted_linear), 0.95, ">=", "learner",
              {"mean_jacobian_r": corr(Jm, gt.planted_linear),
               "median_r": corr(elementwise_median(src), gt.planted_linear),
               "ridge_r": corr(ridge.coef_.T, gt.planted_linear),
               "encoder_best_epoch": enc.best_epoch_, "learner": _learner_details(lb, warns)}),
        Check("2b", "trained", "tiers ordered by the index (smallest step between tier medians)",
              gap, 0.0, ">", "NF", tier_info),
        Check("2c", "trained", "Spearman(index, planted strength), one net", sp["nf"], None,
              ">=", "NF", {**sp, "null_floor_median": {
                  int(t): float(np.median(nf_null[tier == t])) for t in (1, 2, 3)}}),
        Check("2d", "trained", "Spearman(index minus linear-null floor, planted strength)",
              sp["nf_minus_null"], None, ">=", "NF - NF_null", {"null": null_text}),
        Check("2e", "trained", f"Spearman(index minus null floor), ensemble of {len(srcs)} "
              "nets", sp[f"nf_ensemble{len(srcs)}_minus_null"], None, ">=", "NF - NF_null",
              {"null": null_text, "ensemble": len(srcs)}),
    ]


def collapse_checks(source: JacobianSource, default: LinBridge, default_warnings: list[str],
                    learner: dict[str, Any]) -> list[Check]:
    """Checks 5a-5c on the exact-level Jacobians."""
    conc = {**learner, "min_ess_fraction": 0.0, "l1_weight": 0.0, "lr": 1e-2}
    flat = {**learner, "temperature": 100.0}
    lb_c, w_c = fit_learner(source, conc)
    lb_f, w_f = fit_learner(source, flat)
    return [
        Check("5a", "collapse", "default configuration: collapse warnings", len(default_warnings),
              0, "<=", "learner", _learner_details(default, default_warnings)),
        Check("5b", "collapse", "unguarded concentrating configuration warns (warnings)",
              len(w_c), 1, ">=", "learner", {"params": {k: conc[k] for k in (
                  "min_ess_fraction", "l1_weight", "lr")}, **_learner_details(lb_c, w_c)}),
        Check("5c", "collapse", "uninformative-loss configuration (tau = 100) warns (warnings)",
              len(w_f), 1, ">=", "learner", {"params": {"temperature": 100.0},
                                            **_learner_details(lb_f, w_f)}),
    ]
