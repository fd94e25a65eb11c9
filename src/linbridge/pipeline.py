"""The main job: data -> encoders -> Jacobians -> decomposition -> metrics -> report.

Each expensive stage writes its outputs atomically into the run directory with a
fingerprint of its inputs; a rerun into the same directory skips stages whose
fingerprints match (so an interrupted run resumes).
"""
from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .analysis import tier_medians, tsne_order
from .bridge import LinBridge, elementwise_median, least_squares_distillation, mean_jacobian
from .config import RunConfig, dump_config
from .data import Dataset
from .data.registry import load_dataset
from .encoders import MLPEncoder, RidgeEncoder
from .jacobian import ModelJacobianSource, deviation_statistics
from .metrics import (afd, bootstrap_r2_pvalues, correlate_maps, fdr_bh, jne, jne_ss,
                      nonlinear_fraction, pearson_r, r2_score)
from .rundir import RunDir, fingerprint, load_json, load_npz, save_bytes, save_json, save_npz

log = logging.getLogger("linbridge")

ENCODERS = ("ridge", "mlp_linear", "mlp_relu")


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "linbridge": __version__}
    for pkg in ("numpy", "scipy", "torch", "scikit-learn", "himalaya", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _stage(msg: str, progress: bool) -> float:
    if progress:
        print(f"[linbridge] {msg}", file=sys.stderr, flush=True)
    return time.perf_counter()


# -- stages -----------------------------------------------------------------------------

def fit_encoders(cfg: RunConfig, ds: Dataset, rd: RunDir, data_key: str, progress: bool = True
                 ) -> tuple[dict[str, Any], str]:
    """Fit (or reload) ridge, the linear control and the nonlinear MLP."""
    key = fingerprint(data_key, asdict(cfg.encoders), cfg.seed)
    Xtr, Ytr = ds.part("train")
    Xv, Yv = ds.part("val")
    encs: dict[str, Any] = {}
    done = rd.stage_done("encoders", key)
    for name in ENCODERS:
        params = dict(getattr(cfg.encoders, name))
        if name == "ridge":
            enc = RidgeEncoder(**params)
            path = rd.path("encoders", "ridge.npz")
            if done and path.exists():
                arr = load_npz(path)
                enc.coef_, enc.best_alphas_ = arr["coef"], arr["best_alphas"]
            else:
                _stage("fitting ridge (himalaya, one alpha per unit)", progress)
                enc.fit(Xtr, Ytr, Xv, Yv)
                save_npz(path, coef=enc.coef_, best_alphas=enc.best_alphas_)
        else:
            params.setdefault("seed", cfg.seed)
            enc = MLPEncoder(progress=progress, **params)
            path = rd.path("encoders", f"{name}.pt")
            info_path = rd.path("encoders", f"{name}.json")
            if done and path.exists() and info_path.exists():
                enc.load_module(ds.n_features, ds.n_units, torch.load(path, weights_only=True))
                info = load_json(info_path)
                enc.best_epoch_, enc.history_ = info["best_epoch"], info["history"]
                enc.best_val_loss_ = info["best_val_loss"]
            else:
                _stage(f"training {name} ({params.get('activation')})", progress)
                ckpt = rd.path("encoders", f"{name}.checkpoint.pt")
                if ckpt.exists() and not done and load_json_or_none(info_path.with_suffix(".key")) != key:
                    ckpt.unlink()  # a checkpoint of another configuration
                save_json(info_path.with_suffix(".key"), key)
                enc.fit(Xtr, Ytr, Xv, Yv, checkpoint=ckpt)
                save_bytes(path, _torch_bytes(enc.module_.state_dict()))
                ckpt.unlink(missing_ok=True)
                save_json(info_path, {"best_epoch": enc.best_epoch_, "history": enc.history_,
                                      "best_val_loss": enc.best_val_loss_,
                                      "params": {**params, "progress": None}})
        encs[name] = enc
    rd.mark_done("encoders", key)
    return encs, key


def load_json_or_none(path: Path):
    return load_json(path) if path.exists() else None


def _torch_bytes(obj) -> bytes:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _test_source(cfg: RunConfig, encs: dict[str, Any], X_test: np.ndarray) -> ModelJacobianSource:
    """The nonlinear encoder's Jacobians on the test samples, as the config asks."""
    jc = cfg.jacobian
    return ModelJacobianSource(encs["mlp_relu"].module_, X_test, method=jc.method,
                               memory_budget_mb=jc.memory_budget_mb, device=jc.device)


def decompose(cfg: RunConfig, ds: Dataset, encs: dict[str, Any], rd: RunDir, enc_key: str,
              progress: bool = True) -> dict[str, Any]:
    """Jacobians of the nonlinear encoder on the test set; learned and closed-form splits."""
    key = fingerprint(enc_key, asdict(cfg.jacobian), asdict(cfg.bridge))
    out_path, stats_path = rd.path("decomposition.npz"), rd.path("jacobian_stats.npz")
    if rd.stage_done("decomposition", key) and out_path.exists() and stats_path.exists():
        return {"components": load_npz(out_path), "stats": load_npz(stats_path),
                "learner": load_json(rd.path("learner.json"))}
    X_test = ds.X[ds.split.test]
    jc = cfg.jacobian
    source = _test_source(cfg, encs, X_test)
    t0 = _stage(f"Jacobians of mlp_relu on {ds.split.test.size} test samples "
                f"({source.method}, tensor {source.n_samples}x{source.n_units}x{source.n_features})",
                progress)
    comps: dict[str, np.ndarray] = {"mean_jacobian": mean_jacobian(source, progress)}

    lp = {"seed": cfg.seed, **cfg.bridge.learner}
    ckpt, ckpt_key = rd.path("learner_checkpoint.pt"), rd.path("learner_checkpoint.key")
    if ckpt.exists() and load_json_or_none(ckpt_key) != key:
        ckpt.unlink()  # a checkpoint of another configuration
    save_json(ckpt_key, key)
    learner = LinBridge(progress=progress, checkpoint_path=ckpt, **lp)
    _stage("learning the LinBridge split", progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learner.fit(source)
    collapse = [str(w.message) for w in caught]
    comps["learned"] = learner.inherent_
    for name in cfg.bridge.baselines:
        if name == "mean_jacobian":
            continue
        if name == "median":
            comps["median"] = elementwise_median(source, progress)
        elif name == "ls_distillation":
            comps["ls_distillation"] = least_squares_distillation(X_test, source.outputs())
        elif name == "ridge":
            comps["ridge"] = encs["ridge"].jacobian_matrix()
        elif name == "mlp_linear":
            lin = ModelJacobianSource(encs["mlp_linear"].module_, X_test[:1], device=jc.device)
            comps["mlp_linear"] = lin.block(slice(None))[0].double().cpu().numpy()
        else:
            raise ValueError(f"unknown baseline {name!r} in bridge.baselines")

    _stage("streaming statistics of the mapping biases", progress)
    st = deviation_statistics(source, {"mean": comps["mean_jacobian"], "learned": comps["learned"]},
                              projection=learner.projection_, progress=progress)
    stats = {"jac_l2sq": st.jac_l2sq, "jx": st.jx, "outputs": source.outputs().double().cpu().numpy()}
    for ref in ("mean", "learned"):
        stats[f"l1_{ref}"], stats[f"l2sq_{ref}"] = st.l1[ref], st.l2sq[ref]
        stats[f"down_{ref}"] = st.down[ref]
    learner_info = {**learner.summary(), "history": learner.history_, "warnings": collapse,
                    "seconds": time.perf_counter() - t0}
    save_npz(out_path, **comps, sample_weights=learner.sample_weights_,
             projection=learner.projection_)
    save_npz(stats_path, **stats)
    save_json(rd.path("learner.json"), learner_info)
    rd.mark_done("decomposition", key)
    ckpt.unlink(missing_ok=True)
    comps["sample_weights"] = learner.sample_weights_
    return {"components": comps, "stats": stats, "learner": learner_info}


def evaluate_decomposition(cfg: RunConfig, ds: Dataset, encs: dict[str, Any], rd: RunDir,
                           enc_key: str, progress: bool = True) -> dict[str, Any]:
    """Held-out-half scores and stability of the split (each optional, resumable)."""
    from .bridge.evaluation import heldout_split_scores, stability

    bc = cfg.bridge
    out: dict[str, Any] = {}
    if not (bc.heldout or bc.stability):
        return out
    key = fingerprint(enc_key, asdict(cfg.jacobian), asdict(bc))
    X_test, Y_test = ds.part("test")
    source = None

    def get_source():  # built only when a stage has to run
        nonlocal source
        if source is None:
            source = _test_source(cfg, encs, X_test)
        return source

    lp = dict(bc.learner)
    if bc.heldout:
        path = rd.path("heldout.json")
        if rd.stage_done("heldout", key) and path.exists():
            out["heldout"] = load_json(path)
        else:
            _stage("held-out evaluation (fit on one half of the test set, score the other)",
                   progress)
            X_val, Y_val = ds.part("val")
            fixed = {"ridge": encs["ridge"].jacobian_matrix()}
            res = heldout_split_scores(
                get_source(), X_test, Y_test, learner_params=lp, fixed=fixed,
                X_val=X_val if len(X_val) else None, Y_val=Y_val if len(Y_val) else None,
                F_val=encs["mlp_relu"].predict(X_val) if len(X_val) else None,
                seed=cfg.seed, progress=False)
            res.pop("per_unit", None)
            save_json(path, res)
            rd.mark_done("heldout", key)
            out["heldout"] = load_json(path)
    if bc.stability:
        path = rd.path("stability.json")
        if rd.stage_done("stability", key) and path.exists():
            out["stability"] = load_json(path)
        else:
            _stage("stability of the learned split across batch sizes and seeds", progress)
            res = stability(get_source(), learner_params={**lp},
                            batch_sizes=tuple(bc.stability_batch_sizes),
                            seeds=tuple(bc.stability_seeds), progress=False)
            save_json(path, res)
            rd.mark_done("stability", key)
            out["stability"] = load_json(path)
    return out


def _summ(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    return {"median": float(np.nanmedian(x)), "mean": float(np.nanmean(x)),
            "p10": float(np.nanpercentile(x, 10)), "p90": float(np.nanpercentile(x, 90))}


def compute_metrics(cfg: RunConfig, ds: Dataset, encs: dict[str, Any], dec: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-unit metrics (returned as arrays) and their summary (metrics.json)."""
    X_test, Y_test = ds.part("test")
    mc = cfg.metrics
    units: dict[str, np.ndarray] = {"unit_id": ds.unit_ids, "label": ds.unit_labels}
    m: dict[str, Any] = {"dataset": ds.summary(), "encoders": {}, "inherent": {}, "indices": {}}

    def score(name: str, pred: np.ndarray, group: str) -> np.ndarray:
        r, r2 = pearson_r(Y_test, pred), r2_score(Y_test, pred)
        p = bootstrap_r2_pvalues(Y_test, pred, mc.n_boot, seed=cfg.seed)
        _, sig = fdr_bh(p, mc.fdr_q)
        units[f"r_{name}"], units[f"r2_{name}"], units[f"p_{name}"] = r, r2, p
        m[group][name] = {"median_r": float(np.median(r)), "median_r2": float(np.median(r2)),
                          "fraction_significant": float(sig.mean())}
        return r2

    for name in ENCODERS:
        r2 = score(name, encs[name].predict(X_test), "encoders")
        if name != "ridge":
            m["encoders"][name]["best_epoch"] = int(encs[name].best_epoch_)
    r2_nl = units["r2_mlp_relu"]
    comps = dec["components"]
    for name, J in comps.items():
        if name in ("sample_weights", "projection"):
            continue
        r2 = score(f"inherent_{name}", X_test @ np.asarray(J).T, "inherent")
        m["inherent"][name] = m["inherent"].pop(f"inherent_{name}")
        m["inherent"][name]["r2_map_corr_with_nonlinear"] = correlate_maps(r2, r2_nl)

    st = dec["stats"]
    j = jne(st["l1_mean"])
    nf = nonlinear_fraction(st["l2sq_mean"], st["jac_l2sq"])
    nf_learned = nonlinear_fraction(st["l2sq_learned"], st["jac_l2sq"])
    units.update(jne=j, nonlinearity=nf, nonlinearity_learned=nf_learned,
                 bias_l1_learned=st["l1_learned"].mean(0))
    m["indices"]["jne"] = _summ(j)
    m["indices"]["nonlinearity"] = {**_summ(nf), "definition": (
        "Jacobian nonlinear fraction sum_k ||J_k[v]-Jbar[v]||^2 / sum_k ||J_k[v]||^2")}
    m["indices"]["nonlinearity_learned_split"] = _summ(nf_learned)
    afds = []
    for seed in mc.afd_tsne_seeds:
        order = tsne_order(X_test, seed=seed)
        a = afd(st["down_learned"], order)
        units[f"afd_tsne{seed}"] = a
        afds.append(a)
    if afds:
        stack = np.stack(afds)
        m["indices"]["afd"] = {**_summ(stack.mean(0)), "tsne_seeds": list(mc.afd_tsne_seeds),
                               "per_seed_median": [float(np.median(a)) for a in afds],
                               "seed_rank_agreement": _mean_pairwise_spearman(stack)}
    jss = jne_ss(st["l1_mean"])
    m["indices"]["jne_ss"] = {"per_sample_mean_median": float(np.median(jss.mean(1)))}
    # Euler split of the nonlinear encoder's predictions against the learned inherent part
    lin = X_test.astype(np.float64) @ comps["learned"].T
    bias_part, rem = st["jx"] - lin, st["outputs"] - st["jx"]
    var_out = st["outputs"].var(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(var_out > 0, bias_part.var(0) / var_out, 0.0)
    units["euler_bias_share"] = share
    m["indices"]["euler"] = {"bias_share": _summ(share),
                             "max_abs_remainder": float(np.abs(rem).max())}
    m["tiers"] = {"nonlinearity": tier_medians(nf, ds.unit_labels),
                  "jne": tier_medians(j, ds.unit_labels)}
    m["learner"] = {k: dec["learner"][k] for k in ("params", "collapsed", "final", "warnings")}

    if ds.ground_truth is not None:
        from scipy.stats import spearmanr

        gt = ds.ground_truth
        m["ground_truth"] = {
            name: {"inherent_vs_planted_r": float(np.corrcoef(
                np.asarray(J).ravel(), gt.planted_linear.ravel())[0, 1])}
            for name, J in comps.items() if name not in ("sample_weights", "projection")}
        m["ground_truth"]["nonlinearity_vs_planted_spearman"] = float(
            spearmanr(nf, gt.planted_strength)[0])
        m["ground_truth"]["jne_vs_planted_spearman"] = float(spearmanr(j, gt.planted_strength)[0])
        m["ground_truth"]["tier_medians"] = tier_medians(nf, ds.unit_labels)
        units["planted_strength"] = gt.planted_strength
    return m, units


def _mean_pairwise_spearman(rows: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if rows.shape[0] < 2:
        return float("nan")
    vals = [spearmanr(rows[i], rows[j])[0] for i in range(len(rows)) for j in range(i + 1, len(rows))]
    return float(np.mean(vals))


def write_units_table(path: Path, units: dict[str, np.ndarray]) -> None:
    cols = list(units)
    lines = [",".join(cols)]
    for i in range(len(units["unit_id"])):
        row = []
        for c in cols:
            v = units[c][i]
            row.append(f"{v:.6g}" if isinstance(v, (float, np.floating)) else str(v))
        lines.append(",".join(row))
    save_bytes(path, ("\n".join(lines) + "\n").encode())


def run(cfg: RunConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run the whole job into ``out``; returns the metrics dictionary."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    rd = RunDir(out)
    save_bytes(rd.path("config.yaml"), dump_config(cfg, effective=True).encode())
    save_json(rd.path("versions.json"), {**_versions(), "device": cfg.jacobian.device,
                                         "torch_threads": torch.get_num_threads()})
    t = _stage(f"loading dataset '{cfg.dataset.name}'", progress)
    params = dict(cfg.dataset.params)
    if cfg.dataset.name == "synthetic":
        params.setdefault("seed", cfg.seed)
    with warnings.catch_warnings(record=True) as caught:  # shown now and kept for the report
        warnings.simplefilter("default")
        ds = load_dataset(cfg.dataset.name, cfg.data_home, cfg.cache_dir, progress, **params)
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    data_warnings = [str(w.message) for w in caught]
    times = {"data": time.perf_counter() - t}
    data_key = fingerprint(cfg.dataset.name, params, ds.meta.get("files", {}),
                           ds.summary())
    save_json(rd.path("dataset.json"), {**ds.summary(), "params": params, "data_home": cfg.data_home,
                                        "files": ds.meta.get("files", {}), "seed": cfg.seed,
                                        "warnings": data_warnings})

    t = time.perf_counter()
    encs, enc_key = fit_encoders(cfg, ds, rd, data_key, progress)
    times["encoders"] = time.perf_counter() - t
    t = time.perf_counter()
    dec = decompose(cfg, ds, encs, rd, enc_key, progress)
    times["decomposition"] = time.perf_counter() - t
    t = time.perf_counter()
    evals = evaluate_decomposition(cfg, ds, encs, rd, enc_key, progress)
    times["evaluation"] = time.perf_counter() - t
    t = _stage("metrics (bootstrap, indices, AFD over t-SNE seeds)", progress)
    metrics, units = compute_metrics(cfg, ds, encs, dec)
    if "heldout" in evals:
        metrics["heldout"] = {name: v["heldout"] for name, v in evals["heldout"]["methods"].items()}
    if "stability" in evals:
        st = evals["stability"]
        metrics["stability"] = {"min_r_batch_size": st["min_r_batch_size"],
                                "min_r_seed": st["min_r_seed"],
                                "seed_pairwise_mean_r": st.get("seed_pairwise_mean_r")}
    times["metrics"] = time.perf_counter() - t
    write_units_table(rd.path("units.csv"), units)
    save_npz(rd.path("units.npz"), **{k: np.asarray(v) for k, v in units.items()
                                      if np.asarray(v).dtype.kind in "fiub"})
    save_npz(rd.path("test_samples.npz"), index=ds.split.test,
             jne_ss=jne_ss(dec["stats"]["l1_mean"]).astype(np.float32),
             sample_weights=np.asarray(dec["components"]["sample_weights"]))
    # -- analyses (ROI tiers, orderings, stimulus clusters) ---------------------------
    t = _stage("analyses (tiers, AFD robustness, stimulus clusters)", progress)
    from .analysis import analyze_run

    analyze_run(ds, dec, units, rd, cfg)
    times["analysis"] = time.perf_counter() - t
    # -- end analyses -----------------------------------------------------------------
    t = _stage("report (figures, report.html)", progress)
    from .report import build_report

    metrics["timing_seconds"] = {**times, "total_before_report": time.perf_counter() - t_start}
    save_json(rd.path("metrics.json"), metrics)
    build_report(rd.root, ds=ds, encoders=encs)
    metrics["timing_seconds"]["report"] = time.perf_counter() - t
    metrics["timing_seconds"]["total"] = time.perf_counter() - t_start
    save_json(rd.path("metrics.json"), metrics)
    _stage(f"done in {metrics['timing_seconds']['total']:.1f} s -> {rd.root}", progress)
    return metrics
