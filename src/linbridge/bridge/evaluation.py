"""Non-circular evaluation and stability of inherent components.

``heldout_split_scores``: every decomposition is fitted on one half of the test samples'
Jacobians and its inherent component is scored, as a linear encoder y_hat = J_inh x, on
the other half (and on validation images); both halves take each role once.

``stability``: the learned inherent component across batch sizes and seeds, as its
correlation with the full-batch result.

Both stream through a ``JacobianSource``; a half is a ``SubsetSource`` view of it, so
nothing needs the whole Jacobian tensor in memory.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

from ..jacobian import JacobianSource
from ..metrics import correlate_maps, pearson_r, r2_score
from ._baselines import elementwise_median, least_squares_distillation, mean_jacobian
from ._learner import CollapseWarning, LinBridge

#: batch sizes of the paper's stability analysis
PAPER_BATCH_SIZES = (16, 32, 64, 128, 256, 512)


class SubsetSource(JacobianSource):
    """The samples ``index`` of another source (a view; blocks come from the parent)."""

    def __init__(self, parent: JacobianSource, index):
        self.parent = parent
        self.index = np.asarray(index, dtype=np.int64)
        if self.index.ndim != 1 or self.index.size == 0:
            raise ValueError("index must be a non-empty 1-D array of sample positions")
        if self.index.min() < 0 or self.index.max() >= parent.n_samples:
            raise ValueError(f"index outside [0, {parent.n_samples})")
        x = parent.X[torch.as_tensor(self.index, device=parent.X.device)]
        super().__init__(x.cpu().numpy(), parent.memory_budget_mb, parent.dtype, parent.device)
        self.n_units = parent.n_units

    def _bytes_per_entry(self) -> int:
        return self.parent._bytes_per_entry()

    def block(self, samples=slice(None), units=slice(None)) -> torch.Tensor:
        sel = self.index[samples] if isinstance(samples, slice) else self.index[np.asarray(samples)]
        return self.parent.block(sel, units)

    def outputs(self) -> torch.Tensor:
        return self.parent.outputs()[torch.as_tensor(self.index, device=self.parent.X.device)]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _fit_learner(source: JacobianSource, params: dict, progress: bool
                 ) -> tuple[LinBridge, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CollapseWarning)
        lb = LinBridge(**{"progress": progress, **params}).fit(source)
    return lb, [str(w.message) for w in caught if issubclass(w.category, CollapseWarning)]


def fit_components(source: JacobianSource, methods=("learned", "mean_jacobian", "median",
                                                    "ls_distillation"),
                   learner_params: dict | None = None, progress: bool = False
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit every named decomposition on ``source``: name -> (n_units, n_features)."""
    comps: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    for name in methods:
        if name == "learned":
            lb, warns = _fit_learner(source, dict(learner_params or {}), progress)
            comps[name] = lb.inherent_
            info["learner"] = {"collapse_warnings": warns, "ess_fraction": lb.ess_fraction_}
        elif name == "mean_jacobian":
            comps[name] = mean_jacobian(source)
        elif name == "median":
            comps[name] = elementwise_median(source)
        elif name == "ls_distillation":
            comps[name] = least_squares_distillation(source.X.double().cpu().numpy(),
                                                     source.outputs())
        else:
            raise ValueError(f"unknown decomposition {name!r}; choose from learned, "
                             "mean_jacobian, median, ls_distillation")
    return comps, info


def _scores(J: np.ndarray, X: np.ndarray, Y: np.ndarray, F: np.ndarray | None) -> dict[str, Any]:
    pred = np.asarray(X, dtype=np.float64) @ np.asarray(J, dtype=np.float64).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r, r2 = pearson_r(Y, pred), r2_score(Y, pred)
        out = {"r": r, "r2": r2}
        if F is not None:
            out["r2_map_corr"] = correlate_maps(r2, r2_score(Y, F))
            out["r_vs_model"] = pearson_r(F, pred)  # how well J_inh x reproduces f(x)
    return out


def _summ(d: dict[str, Any]) -> dict[str, float]:
    out = {"median_r": float(np.median(d["r"])), "mean_r": float(np.mean(d["r"])),
           "median_r2": float(np.median(d["r2"]))}
    if "r2_map_corr" in d:
        out["r2_map_corr_with_nonlinear"] = float(d["r2_map_corr"])
        out["median_r_vs_model"] = float(np.median(d["r_vs_model"]))
    return out


def heldout_split_scores(source: JacobianSource, X_test, Y_test, *,
                         learner_params: dict | None = None,
                         methods=("learned", "mean_jacobian", "median", "ls_distillation"),
                         fixed: dict[str, np.ndarray] | None = None,
                         X_val=None, Y_val=None, F_val=None,
                         seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Fit decompositions on one half of the test samples, score them on the other half.

    source : Jacobians of the nonlinear encoder on the test samples (X_test's rows, in order)
    X_test, Y_test : (n_test, n_features), (n_test, n_units) features and responses
    learner_params : LinBridge keyword arguments for the 'learned' method
    methods : decompositions fitted on the fit half (see ``fit_components``)
    fixed : name -> (n_units, n_features) components that were not fitted on test samples
        (the ridge encoder's weights, the linear control's), scored on the same halves
    X_val, Y_val : validation images, scored too (with F_val, the nonlinear model's
        predictions there, for the R^2-map agreement)

    Both halves serve once as fit half (two folds). Per method: median r and R^2 over
    units, the correlation of its R^2 map with the nonlinear model's R^2 map on the same
    samples, how well J_inh x reproduces f(x) there, averaged over the folds; and the
    split-half reliability (correlation between the components fitted on the two halves).
    Per-unit r and R^2 (fold means) are returned under 'per_unit'.
    """
    N = source.n_samples
    X_test = np.asarray(X_test, dtype=np.float64)
    Y_test = np.asarray(Y_test, dtype=np.float64)
    if X_test.shape[0] != N or Y_test.shape[0] != N:
        raise ValueError(f"the source has {N} samples; X_test {X_test.shape[0]}, "
                         f"Y_test {Y_test.shape[0]}")
    X_src = source.X.double().cpu().numpy()
    if np.abs(X_src - X_test).max() > 1e-4 * max(1.0, np.abs(X_test).max()):
        raise ValueError("X_test differs from the source's inputs: pass the test features "
                         "the Jacobians were computed at, in the same order")
    if N < 4:
        raise ValueError(f"need at least 4 test samples to split, got {N}")
    F_test = source.outputs().double().cpu().numpy()
    perm = np.random.default_rng(seed).permutation(N)
    halves = [np.sort(perm[: N // 2]), np.sort(perm[N // 2:])]
    fixed = {k: np.asarray(v, dtype=np.float64) for k, v in (fixed or {}).items()}
    have_val = X_val is not None and Y_val is not None
    acc: dict[str, dict[str, list]] = {}
    fitted: dict[str, list[np.ndarray]] = {}
    learner_info = []
    for fold in range(2):
        fit_idx, ev_idx = halves[fold], halves[1 - fold]
        comps, info = fit_components(SubsetSource(source, fit_idx), methods, learner_params,
                                     progress)
        if "learner" in info:
            learner_info.append(info["learner"])
        for name, J in comps.items():
            fitted.setdefault(name, []).append(J)
        for name, J in {**comps, **fixed}.items():
            a = acc.setdefault(name, {"heldout": [], "val": []})
            a["heldout"].append(_scores(J, X_test[ev_idx], Y_test[ev_idx], F_test[ev_idx]))
            if have_val:
                a["val"].append(_scores(J, X_val, Y_val, F_val))
    model_ho = [_scores_model(F_test[halves[1 - f]], Y_test[halves[1 - f]]) for f in range(2)]
    out: dict[str, Any] = {"n_test": N, "n_fit": [int(h.size) for h in halves], "seed": seed,
                           "methods": {}, "per_unit": {}, "learner": learner_info,
                           "nonlinear_model": {"heldout": _mean_dicts(model_ho)}}
    if have_val and F_val is not None:
        out["nonlinear_model"]["val"] = _scores_model(np.asarray(F_val), np.asarray(Y_val))
    for name, a in acc.items():
        m: dict[str, Any] = {"heldout": _mean_dicts([_summ(s) for s in a["heldout"]])}
        if a["val"]:
            m["val"] = _mean_dicts([_summ(s) for s in a["val"]])
        if name in fitted:
            m["split_half_r"] = _corr(fitted[name][0], fitted[name][1])
        out["methods"][name] = m
        out["per_unit"][name] = {k: np.mean([s[k] for s in a["heldout"]], axis=0)
                                 for k in ("r", "r2")}
    return out


def _scores_model(F: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"median_r": float(np.median(pearson_r(Y, F))),
                "median_r2": float(np.median(r2_score(Y, F)))}


def _mean_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([d[k] for d in ds])) for k in ds[0]}


def stability(source: JacobianSource, *, learner_params: dict | None = None,
              batch_sizes=PAPER_BATCH_SIZES, seeds=(0, 1, 2),
              progress: bool = False, on_fit: Callable[[str, LinBridge], None] | None = None
              ) -> dict[str, Any]:
    """The learned inherent component across batch sizes and seeds.

    The reference is the full-batch fit (batch_size = n_samples, seed = seeds[0]). Batch
    sizes above half the samples are skipped (as in the paper, which went up to 512 of
    1000). Each fit is summarised by its correlation with the reference, with the
    sample-mean Jacobian, its effective sample size and its collapse warnings. The mean
    Jacobian itself does not depend on batch size or seed: its stability is 1 by
    construction. ``on_fit(label, learner)`` is called after every fit.
    """
    params = dict(learner_params or {})
    default_bs = int(params.pop("batch_size", LinBridge().batch_size))
    params.pop("seed", None)
    N = source.n_samples
    if params.get("cache_mb", 1024.0) * 2 ** 20 >= N * source.n_units * source.n_features * 4:
        if not hasattr(source, "J"):  # compute the Jacobians once for all the fits
            source = source.materialize()
    J_bar = mean_jacobian(source)

    def one(label: str, bs: int, seed: int) -> tuple[np.ndarray, dict]:
        lb, warns = _fit_learner(source, {**params, "batch_size": bs, "seed": seed}, progress)
        if on_fit is not None:
            on_fit(label, lb)
        return lb.inherent_, {"batch_size": bs, "seed": seed, "ess_fraction": lb.ess_fraction_,
                              "r_with_mean_jacobian": _corr(lb.inherent_, J_bar),
                              "collapse_warnings": warns}

    ref, ref_info = one("full", N, seeds[0])
    out: dict[str, Any] = {"n_samples": N, "full_batch": ref_info, "batch_size": {}, "seed": {},
                           "mean_jacobian": "1 by construction (independent of batch size "
                                            "and seed)"}
    for bs in batch_sizes:
        if bs > N // 2:
            continue
        J, info = one(f"bs{bs}", bs, seeds[0])
        out["batch_size"][int(bs)] = {"r_with_full_batch": _corr(J, ref), **info}
    default_bs = min(default_bs, max(2, N // 2))
    seed_J = []
    for s in seeds:
        J, info = one(f"seed{s}", default_bs, s)
        seed_J.append(J)
        out["seed"][int(s)] = {"r_with_full_batch": _corr(J, ref), **info}
    if len(seed_J) > 1:
        pairs = [_corr(seed_J[i], seed_J[j]) for i in range(len(seed_J))
                 for j in range(i + 1, len(seed_J))]
        out["seed_pairwise_mean_r"] = float(np.mean(pairs))
    rs = [v["r_with_full_batch"] for v in out["batch_size"].values()]
    out["min_r_batch_size"] = float(min(rs)) if rs else float("nan")
    out["min_r_seed"] = float(min(v["r_with_full_batch"] for v in out["seed"].values()))
    return out
