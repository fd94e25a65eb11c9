"""Analyses of a finished decomposition, written to the run directory.

``analyze_run`` is called by the pipeline after the metrics. It writes

* ``analysis.json``: tier tests (unstratified and within noise-ceiling / test-R^2 strata),
  per-unit distributions of the indices, AFD robustness over orderings, stimulus clusters,
  the samples with extreme mapping bias, and warnings;
* ``analysis.npz``: the per-unit and per-sample arrays the report draws (AFD under every
  ordering, its random-order null, controls, 2-D t-SNE map, clusters, per-tier sample
  bias, image statistics);
* ``analysis_images.npz`` (only when the dataset has images): small thumbnails of the
  extreme and cluster-exemplar images,

so that ``linbridge report RUN_DIR`` redraws everything without the data or the models.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..metrics import fdr_bh, jne_ss
from ..rundir import RunDir, save_json, save_npz
from .ordering import afd_robustness, image_statistics, pc1_order
from .stimuli import (cluster_tier_means, extremes, kmeans_by_silhouette, sample_bias_by_tier,
                      thumbnails, tsne_2d)
from .tiers import _summary, resolve_tiers, tier_analysis, tier_medians

# index name -> (units key, description); "afd" is the mean over the t-SNE seeds
INDICES: dict[str, str] = {
    "nonlinearity": "Jacobian nonlinear fraction sum_k||J_k-Jbar||^2 / sum_k||J_k||^2 (default)",
    "jne": "JNE: population std over samples of ||J_k - Jbar||_1",
    "afd": "AFD: |slope| of the learned projected mapping bias along a 1-D t-SNE order "
           "(mean over t-SNE seeds)",
    "bias_l1": "learned mapping-bias norm: mean_k ||dJ_k||_1 (dJ = J_k - J_inh, learned)",
    "bias_rel_l2": "relative learned mapping bias sum_k||dJ_k||^2 / sum_k||J_k||^2",
    "euler_bias_share": "Euler nonlinear share var_k(dJ_k x_k) / var_k(f(x_k))",
}
N_EXTREMES = 8


def _option(cfg, name: str):
    """An option of the config's (optional) `analysis` section, else AnalysisConfig's default."""
    from ..config import AnalysisConfig

    default = getattr(AnalysisConfig(), name)
    sec = getattr(cfg, "analysis", None)
    if isinstance(sec, Mapping):
        return sec.get(name, default)
    return getattr(sec, name, default) if sec is not None else default


def per_unit_indices(units: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The indices compared between tiers, from the pipeline's per-unit arrays."""
    out: dict[str, np.ndarray] = {}
    if "nonlinearity" in units:
        out["nonlinearity"] = np.asarray(units["nonlinearity"], dtype=np.float64)
    if "jne" in units:
        out["jne"] = np.asarray(units["jne"], dtype=np.float64)
    afds = [np.asarray(units[k], dtype=np.float64) for k in sorted(units)
            if k.startswith("afd_tsne")]
    if afds:
        out["afd"] = np.mean(afds, axis=0)
    if "bias_l1_learned" in units:
        out["bias_l1"] = np.asarray(units["bias_l1_learned"], dtype=np.float64)
    if "nonlinearity_learned" in units:
        out["bias_rel_l2"] = np.asarray(units["nonlinearity_learned"], dtype=np.float64)
    if "euler_bias_share" in units:
        out["euler_bias_share"] = np.asarray(units["euler_bias_share"], dtype=np.float64)
    return out


def snr_controls(ds, units: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """Per-unit signal-to-noise controls: the noise ceiling when known, and test R^2."""
    n = len(units["label"])
    ctrl: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    nc = ds.meta.get("noise_ceiling") if ds is not None else None
    if nc is not None and np.asarray(nc).shape == (n,) and np.isfinite(nc).any():
        ctrl["noise_ceiling"] = np.asarray(nc, dtype=np.float64)
        notes["noise_ceiling"] = "noise ceiling from the data (NSD: ncsnr, as a fraction)"
    elif ds is not None and np.asarray(ds.meta.get("noise_sigma", [])).shape == (n,):
        sigma = np.asarray(ds.meta["noise_sigma"], dtype=np.float64)
        ctrl["noise_ceiling"] = 1.0 / (1.0 + sigma ** 2)
        notes["noise_ceiling"] = ("planted noise ceiling 1 / (1 + sigma^2) of the synthetic "
                                  "responses (fraction of response variance that is signal)")
    if "r2_mlp_relu" in units:
        ctrl["test_r2_nonlinear"] = np.asarray(units["r2_mlp_relu"], dtype=np.float64)
        notes["test_r2_nonlinear"] = "test R^2 of the nonlinear encoder"
    return ctrl, notes


def _json_safe(d):
    if isinstance(d, dict):
        return {str(k): _json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_json_safe(v) for v in d]
    if isinstance(d, np.ndarray):
        return d.tolist()
    if isinstance(d, np.generic):
        return d.item()
    return d


def analyze_run(ds, dec: dict[str, Any], units: dict[str, np.ndarray], rd: RunDir, cfg,
                tier_map: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Run every analysis, write analysis.json / analysis.npz (/ analysis_images.npz).

    tier_map : optional {tier: [labels]} user mapping (order = hypothesised order of rising
        nonlinearity); default: ``cfg.analysis.tier_map`` when such a section exists, else
        the dataset's tiers (``ds.meta["tiers"]`` order, else the labels' first-seen order).
    Returns the dictionary written to analysis.json.
    """
    from threadpoolctl import threadpool_limits

    # one BLAS/OpenMP thread: with torch's and scikit-learn's OpenMP runtimes both loaded,
    # small SVDs, k-means and t-SNE run several times slower with more threads
    with threadpool_limits(limits=int(_option(cfg, "n_threads"))):
        return _analyze(ds, dec, units, rd, cfg, tier_map)


def _analyze(ds, dec, units, rd, cfg, tier_map) -> dict:
    t0 = time.perf_counter()
    seed = int(getattr(cfg, "seed", 0))
    n_boot = int(_option(cfg, "n_boot"))
    n_random = int(_option(cfg, "afd_n_random"))
    tier_map = tier_map if tier_map is not None else _option(cfg, "tier_map")
    labels_raw = np.asarray(units["label"]).astype(str)
    meta_tiers = ds.meta.get("tiers") if ds is not None else None
    preferred = list(meta_tiers) if isinstance(meta_tiers, Mapping) else None
    labels, order = resolve_tiers(labels_raw, tier_map, preferred)
    st = dec["stats"]
    idx = per_unit_indices(units)
    arrays: dict[str, np.ndarray] = {"tier_label": labels.astype("U")}
    warnings: list[str] = []
    out: dict[str, Any] = {
        "tier_order": order, "tier_mapping": tier_map, "labels_present":
            {t: int((labels == t).sum()) for t in sorted(set(labels.tolist()))},
        "index_definitions": {k: INDICES[k] for k in idx},
        "tiers": {k: tier_medians(v, labels) for k, v in idx.items()},
    }

    # -- per-unit distributions (all units; one area such as V4 stops here) ----------------
    ctrl, ctrl_notes = snr_controls(ds, units)
    dist = {}
    for k, v in idx.items():
        d = _summary(v)
        d["p10"], d["p90"] = (float(np.nanpercentile(v, 10)), float(np.nanpercentile(v, 90))) \
            if np.isfinite(v).any() else (float("nan"),) * 2
        from scipy.stats import spearmanr

        for cname, c in ctrl.items():
            ok = np.isfinite(c) & np.isfinite(v)
            d[f"spearman_with_{cname}"] = float(spearmanr(c[ok], v[ok])[0]) if ok.sum() > 3 \
                else float("nan")
        dist[k] = d
    out["distributions"] = dist
    for cname, c in ctrl.items():
        arrays[f"control_{cname}"] = c
    out["controls"] = ctrl_notes
    if "p_mlp_relu" in units:
        _, sig = fdr_bh(units["p_mlp_relu"], getattr(getattr(cfg, "metrics", None), "fdr_q", 0.05))
        arrays["significant_nonlinear"] = sig
        out["n_significant_nonlinear"] = int(sig.sum())
        if sig.mean() < 0.5:
            warnings.append(f"only {int(sig.sum())} of {sig.size} units have a significant test "
                            "R² for the nonlinear encoder (BH q<.05); the indices of the others "
                            "describe a model that does not predict them")
    if "r_mlp_relu" in units:
        deg = int(np.sum(np.asarray(units["r_mlp_relu"]) == 0))
        if deg:
            warnings.append(f"{deg} units score r = 0 exactly (constant responses or "
                            "predictions): degenerate units")
    for k, v in idx.items():
        bad = int((~np.isfinite(v)).sum())
        if bad:
            warnings.append(f"{bad} units have a non-finite {k}")

    # -- tier tests ---------------------------------------------------------------------
    if len(order) >= 2:
        n_strata = _option(cfg, "n_strata")
        out["tier_tests"] = tier_analysis(idx, labels, order, controls=ctrl,
                                          n_strata=None if n_strata is None else int(n_strata),
                                          n_boot=n_boot, seed=seed)
    else:
        out["tier_tests"] = None
        out["tier_tests_note"] = (f"one area ({', '.join(order) or 'no label'}): no tier "
                                  "comparison; see the per-unit distributions")

    # -- AFD robustness -----------------------------------------------------------------
    test = np.asarray(ds.split.test)
    X_test = np.asarray(ds.X[test], dtype=np.float64)
    orderings = {"feature PC1": pc1_order(X_test)}
    imgs = None
    if ds.images is not None:
        try:
            imgs = np.asarray(ds.images(test))
        except Exception as e:  # noqa: BLE001 - images are optional; say why they are missing
            warnings.append(f"images could not be read ({type(e).__name__}: {e})")
    if imgs is not None:
        stats = image_statistics(imgs)
        orderings["luminance"], orderings["contrast"] = stats["luminance"], stats["contrast"]
        arrays["luminance"], arrays["contrast"] = stats["luminance"], stats["contrast"]
        out["afd_orderings_note"] = "image orderings: mean luminance and RMS contrast"
    else:
        out["afd_orderings_note"] = ("no images: luminance and contrast orderings skipped "
                                     "(the feature PC1 ordering is used instead)")
    tsne_afd = {f"t-SNE seed {k[len('afd_tsne'):]}": units[k] for k in sorted(units)
                if k.startswith("afd_tsne")}
    rob = afd_robustness(st["down_learned"], orderings, n_random=n_random, seed=seed,
                         extra=tsne_afd)
    names = rob["rank_agreement"]["names"]
    out["afd_robustness"] = {
        "orderings": names, "n_random": rob["n_random"], "summary": rob["summary"],
        "rank_agreement": rob["rank_agreement"]["spearman"].tolist(),
        "per_tier_median": {n: tier_medians(rob["afd"][n], labels) for n in names},
        "jne_per_tier_median": tier_medians(idx["jne"], labels) if "jne" in idx else {},
        "note": ("AFD under each ordering; 'random (null mean)' is the mean AFD over "
                 f"{n_random} random orders, and a unit's AFD is 'above random' when it "
                 "exceeds the 95th percentile of its own random-order AFDs"),
    }
    for i, n in enumerate(names):
        arrays[f"afd_{i}"] = rob["afd"][n]
    if n_random:
        arrays["afd_null_mean"], arrays["afd_null_q95"] = rob["null_mean"], rob["null_q95"]
        tsne_keys = [n for n in names if n.startswith("t-SNE")]
        if tsne_keys:
            frac = np.mean([rob["summary"][n]["fraction_above_random_q95"] for n in tsne_keys])
            if frac < 0.5:
                warnings.append(f"AFD along the t-SNE orders exceeds the random-order 95th "
                                f"percentile for only {100 * frac:.0f}% of units: for most "
                                "units AFD does not measure a trend along the ordering")
    if len(tsne_afd) >= 2:
        M = rob["rank_agreement"]["spearman"]
        ii = [names.index(n) for n in tsne_afd]
        agree = float(np.nanmean([M[i, j] for a, i in enumerate(ii) for j in ii[a + 1:]]))
        out["afd_robustness"]["tsne_seed_rank_agreement"] = agree
        if agree < 0.5:
            warnings.append(f"AFD depends on the t-SNE seed: mean rank agreement between "
                            f"seeds {agree:.2f}")

    # -- stimulus clusters --------------------------------------------------------------
    Z = tsne_2d(X_test, seed=seed)
    km = kmeans_by_silhouette(Z, seed=seed)
    jss = jne_ss(st["l1_mean"])
    ct = cluster_tier_means(jss, km["labels"], labels, order or sorted(set(labels.tolist())))
    tiers_for_stimuli = order or sorted(set(labels.tolist()))
    arrays.update(tsne2d=Z, clusters=km["labels"], cluster_tier_jness=ct,
                  test_index=test)
    sizes = np.bincount(km["labels"], minlength=km["k"])
    out["clusters"] = {"k": km["k"], "k_values": km["k_values"], "silhouette": km["silhouette"],
                       "sizes": sizes.tolist(), "tiers": tiers_for_stimuli,
                       "mean_jne_ss": ct.tolist(),
                       "method": "2-D t-SNE of the test features, k-means with k by silhouette"}
    # -- extreme mapping bias per tier ----------------------------------------------------
    sb = sample_bias_by_tier(st["l1_learned"], labels, tiers_for_stimuli)
    arrays["sample_bias"] = sb
    ext: dict[str, Any] = {}
    thumbs: dict[str, np.ndarray] = {}
    for j, t in enumerate(tiers_for_stimuli):
        e = extremes(sb[:, j], N_EXTREMES)
        ext[t] = {"highest": e["highest"].tolist(), "lowest": e["lowest"].tolist(),
                  "highest_bias": sb[e["highest"], j].tolist(),
                  "lowest_bias": sb[e["lowest"], j].tolist(),
                  "highest_sample_ids": np.asarray(ds.sample_ids)[test[e["highest"]]].tolist(),
                  "lowest_sample_ids": np.asarray(ds.sample_ids)[test[e["lowest"]]].tolist()}
        if imgs is not None:
            thumbs[f"{j}_highest"] = thumbnails(imgs[e["highest"]])
            thumbs[f"{j}_lowest"] = thumbnails(imgs[e["lowest"]])
    out["extreme_bias"] = {"tiers": tiers_for_stimuli, "per_tier": ext, "definition": (
        "per-sample learned mapping-bias size ||dJ_k[v]||_1, divided by the unit's mean "
        "over samples, averaged over the tier's units (1 = typical)")}
    if imgs is not None:
        # exemplars of the clusters with the highest and lowest mean JNE-SS
        cm = np.nanmean(ct, axis=1)
        okc = np.flatnonzero(np.isfinite(cm))
        rank = okc[np.argsort(cm[okc])]
        show = list(dict.fromkeys(list(rank[::-1][:3]) + list(rank[:3])))
        ex = {}
        for c in show:
            members = np.flatnonzero(km["labels"] == c)
            dist = np.linalg.norm(Z[members] - km["centers"][c], axis=1)
            pick = members[np.argsort(dist)[:4]]
            thumbs[f"cluster_{c}"] = thumbnails(imgs[pick])
            ex[int(c)] = {"samples": pick.tolist(), "mean_jne_ss": float(cm[c])}
        out["clusters"]["exemplars"] = ex
        save_npz(rd.path("analysis_images.npz"), **thumbs)
    else:
        out["images_note"] = "the dataset has no images: no thumbnails"
        if rd.path("analysis_images.npz").exists():
            rd.path("analysis_images.npz").unlink()

    # -- surface coordinates for brain maps ----------------------------------------------
    if ds.meta.get("space") == "fsaverage" and "vertex" in ds.meta and "hemi" in ds.meta:
        arrays["surface_vertex"] = np.asarray(ds.meta["vertex"], dtype=np.int64)
        arrays["surface_hemi"] = np.asarray(ds.meta["hemi"]).astype("U")
        out["surface"] = {"space": "fsaverage", "n_units": int(len(ds.meta["vertex"]))}

    out["warnings"] = warnings
    out["seconds"] = time.perf_counter() - t0
    out = _json_safe(out)
    save_npz(rd.path("analysis.npz"), **arrays)
    save_json(rd.path("analysis.json"), out)
    return out
