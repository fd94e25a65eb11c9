"""Analyses: rank tests and their stratified versions, tiers, orderings, stimulus clusters,
and analyze_run on small inputs (known answers, no model training)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from linbridge.analysis import (afd_robustness, analyze_run, apply_mapping, bootstrap_effect,
                                cluster_tier_means, compare_tiers, extremes, holm,
                                image_statistics, jonckheere_terpstra, kmeans_by_silhouette,
                                pc1_order, quantile_strata, random_order, resolve_tiers,
                                sample_bias_by_tier, stratified_mann_whitney, tier_analysis,
                                tsne_order)
from linbridge.analysis.stimuli import thumbnails
from linbridge.rundir import RunDir


# ------------------------------------------------------------------------- rank statistics

def test_mann_whitney_matches_scipy_and_brute_force(rng):
    a, b = rng.normal(0, 1, 40), rng.normal(0.7, 1, 60)
    res = stratified_mann_whitney(b, a)
    brute = sum((y > x) + 0.5 * (y == x) for x in a for y in b)
    assert res["U"] == pytest.approx(brute)
    assert res["auc"] == pytest.approx(brute / (40 * 60))
    assert res["delta"] == pytest.approx(2 * brute / 2400 - 1)
    assert res["p"] == pytest.approx(mannwhitneyu(b, a, alternative="greater").pvalue, rel=1e-6)


def test_jonckheere_matches_brute_force_and_is_calibrated(rng):
    g = [rng.normal(m, 1, n) for m, n in ((0, 15), (0.5, 20), (1.0, 12))]
    brute = sum((y > x) + 0.5 * (y == x) for i in range(3) for j in range(i + 1, 3)
                for x in g[i] for y in g[j])
    res = jonckheere_terpstra(g)
    assert res["JT"] == pytest.approx(brute)
    assert res["p"] < 0.01
    # under the null the one-sided test rejects at about its level
    ps = np.array([jonckheere_terpstra([rng.normal(size=20) for _ in range(3)])["p"]
                   for _ in range(400)])
    assert 0.02 < np.mean(ps < 0.05) < 0.09


def test_stratified_statistics_sum_over_strata(rng):
    a, b = rng.normal(size=30), rng.normal(0.5, 1, 30)
    sa, sb = np.repeat([0, 1, 2], 10), np.repeat([0, 1, 2], 10)
    res = stratified_mann_whitney(b, a, sb, sa)
    parts = [stratified_mann_whitney(b[sb == s], a[sa == s]) for s in range(3)]
    assert res["U"] == pytest.approx(sum(p["U"] for p in parts))
    assert res["n_pairs"] == 300 and res["n_strata_used"] == 3
    # a stratum where one group is absent contributes nothing
    res2 = stratified_mann_whitney(b, a, sb, np.where(sa == 2, 5, sa))
    assert res2["n_strata_used"] == 2


def test_bootstrap_ci_covers_the_effect(rng):
    a, b = rng.normal(0, 1, 80), rng.normal(1, 1, 80)
    eff = bootstrap_effect(b, a, n_boot=400, seed=1)
    true_delta = 2 * 0.7602 - 1  # P(N(1,1) > N(0,1)) = Phi(1/sqrt 2)
    assert eff["delta_ci"][0] < true_delta < eff["delta_ci"][1]
    assert eff["median_diff_ci"][0] < 1.0 < eff["median_diff_ci"][1]


def test_holm_and_quantile_strata():
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, np.nan])[1])
    s, edges = quantile_strata(np.r_[np.arange(12.0), np.nan], 3)
    assert s[-1] == -1 and np.bincount(s[:-1]).tolist() == [4, 4, 4] and edges.size == 4


# ----------------------------------------------------------------------------------- tiers

def test_resolve_tiers_mapping_preferred_and_other():
    labels = np.array(["IVC", "PVC", "HVC", "other", "PVC"])
    labs, order = resolve_tiers(labels, preferred=["PVC", "IVC", "HVC"])
    assert order == ["PVC", "IVC", "HVC"] and labs.tolist() == labels.tolist()
    labs, order = resolve_tiers(labels)
    assert order == ["IVC", "PVC", "HVC"]  # first-seen, 'other' never tested
    rois = np.array(["V1v", "V2d", "FFA-1", "hV4", "OPA", "MT"])
    labs, order = apply_mapping(rois, {"early": ["V1v", "V1d"], "mid": ["V2d", "hV4"],
                                       "high": ["FFA-1", "OPA"]})
    assert order == ["early", "mid", "high"]
    assert labs.tolist() == ["early", "mid", "high", "mid", "high", "other"]


def _planted_tiers(rng, n=60, confound=False):
    """Three tiers with rising values; with ``confound`` the value depends on SNR only and
    the tiers differ in SNR."""
    labels = np.repeat(["t1", "t2", "t3"], n)
    if confound:
        snr = np.concatenate([rng.uniform(0, 0.6, n), rng.uniform(0.2, 0.8, n),
                              rng.uniform(0.4, 1.0, n)])
        return labels, snr + 0.05 * rng.normal(size=3 * n), snr
    snr = rng.uniform(0, 1, 3 * n)
    return labels, np.repeat([0.0, 0.5, 1.0], n) + rng.normal(0, 0.6, 3 * n), snr


def test_compare_tiers_recovers_planted_order(rng):
    labels, v, _ = _planted_tiers(rng)
    res = compare_tiers(v, labels, ["t1", "t2", "t3"], n_boot=200)
    assert res["trend"]["p"] < 1e-6
    assert all(p["p_holm"] < 0.01 and p["delta_ci"][0] > 0 for p in res["pairs"])
    # the reversed hypothesis is not supported
    rev = compare_tiers(v, labels, ["t3", "t2", "t1"], n_boot=50)
    assert rev["trend"]["p"] > 0.99


def test_snr_controls_remove_a_pure_snr_effect(rng):
    """An index that depends on SNR alone, in tiers that differ in SNR: the unstratified test
    finds a spurious order; the strata weaken it (coarse strata leave residual confounding);
    the adjusted test (residuals of a shared fit on the control) removes it."""
    labels, v, snr = _planted_tiers(rng, n=80, confound=True)
    res = tier_analysis({"idx": v}, labels, ["t1", "t2", "t3"], controls={"snr": snr},
                        n_strata=8, n_boot=100)
    unstrat = res["indices"]["idx"]["trend"]["p"]
    assert unstrat < 1e-10
    assert res["stratified"]["snr"]["idx"]["trend"]["p"] > 1e6 * unstrat
    adj = res["adjusted"]["snr"]["idx"]
    assert adj["trend"]["p"] > 0.05 and all(p["p"] > 0.01 for p in adj["pairs"])
    assert res["controls"]["snr"]["spearman_with_index"]["idx"] > 0.9


def test_snr_controls_keep_a_real_effect_collinear_with_snr(rng):
    labels, v, snr = _planted_tiers(rng, n=80, confound=True)
    v = v + np.repeat([0.0, 0.3, 0.6], 80)
    res = tier_analysis({"idx": v}, labels, ["t1", "t2", "t3"], controls={"snr": snr},
                        n_boot=50)
    assert res["stratified"]["snr"]["idx"]["trend"]["p"] < 1e-6
    assert res["adjusted"]["snr"]["idx"]["trend"]["p"] < 1e-6


def test_one_tier_gives_a_note_not_a_test(rng):
    res = compare_tiers(rng.normal(size=20), np.full(20, "V4"), ["V4"])
    assert res["trend"] is None and "fewer than two tiers" in res["note"]


# ------------------------------------------------------------------------------- orderings

def test_image_statistics_and_orders(rng):
    ims = np.zeros((3, 8, 8, 3), np.uint8)
    ims[1] = 255
    ims[2, :, :4] = 255  # half white: luminance 0.5, contrast 0.5
    st = image_statistics(ims)
    assert np.allclose(st["luminance"], [0, 1, 0.5]) and np.allclose(st["contrast"], [0, 0, 0.5])
    assert sorted(random_order(10, 3)) == list(range(10))
    X = rng.normal(size=(50, 5)) * [5, 1, 1, 1, 1]
    assert abs(np.corrcoef(pc1_order(X), X[:, 0])[0, 1]) > 0.95


def test_tsne_orders_differ_between_seeds(rng):
    X = rng.normal(size=(60, 6))
    a, b = tsne_order(X, seed=0), tsne_order(X, seed=1)
    assert a.shape == (60,) and not np.allclose(np.argsort(a), np.argsort(b))


def test_afd_robustness_separates_trend_from_noise(rng):
    n = 200
    t = rng.normal(size=n)                      # an ordering variable
    d = rng.normal(0, 1, (n, 4, 1))
    d[:, 0, 0] += 3 * t                          # unit 0 varies along t; others do not
    res = afd_robustness(d, {"t": t, "random": random_order(n, 0)}, n_random=99, seed=0)
    assert res["p"]["t"][0] == pytest.approx(0.01)
    assert res["afd"]["t"][0] > 5 * res["null_q95"][0]
    assert np.all(res["p"]["t"][1:] > 0.01)
    assert res["rank_agreement"]["names"] == ["t", "random"]


# --------------------------------------------------------------------------------- stimuli

def test_kmeans_by_silhouette_finds_blobs(rng):
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    Z = np.concatenate([c + rng.normal(0, 0.5, (40, 2)) for c in centers])
    km = kmeans_by_silhouette(Z, seed=0)
    assert km["k"] == 3 and len(set(km["labels"][:40])) == 1


def test_cluster_tier_means_and_sample_bias():
    A = np.arange(12.0).reshape(4, 3)
    cl = np.array([0, 0, 1, 1])
    labels = np.array(["a", "b", "b"])
    M = cluster_tier_means(A, cl, labels, ["a", "b", "c"])
    assert M[0, 0] == pytest.approx(1.5) and M[1, 1] == pytest.approx((7 + 8 + 10 + 11) / 4)
    assert np.isnan(M[0, 2])
    B = np.array([[1.0, 2.0], [3.0, 2.0]])
    sb = sample_bias_by_tier(B, np.array(["a", "a"]), ["a"])
    assert np.allclose(sb[:, 0], [(0.5 + 1) / 2, (1.5 + 1) / 2])
    e = extremes(np.array([0.3, np.nan, 0.9, 0.1, 0.5]), 2)
    assert e["highest"].tolist() == [2, 4] and e["lowest"].tolist() == [3, 0]
    assert thumbnails(np.zeros((2, 112, 112, 3), np.uint8)).shape == (2, 56, 56, 3)


# ----------------------------------------------------------------------------- analyze_run

def _fake_run(n=80, per=12, images=False, one_area=False, seed=0):
    """A dataset-like object, dec and units with planted tier differences (no training)."""
    rng = np.random.default_rng(seed)
    V = 3 * per
    labels = np.full(V, "V4") if one_area else np.repeat(["t1", "t2", "t3"], per)
    level = np.zeros(V) if one_area else np.repeat([0.1, 0.3, 0.6], per)
    X = rng.normal(size=(n + 20, 5)).astype(np.float32)
    split = SimpleNamespace(test=np.arange(20, 20 + n), train=np.arange(20))
    ims = rng.integers(0, 255, (n + 20, 16, 16, 3), dtype=np.uint8)
    ds = SimpleNamespace(X=X, split=split, unit_labels=labels,
                         sample_ids=np.array([f"s{i}" for i in range(n + 20)]),
                         images=(lambda idx: ims[np.asarray(idx)]) if images else None,
                         meta={"noise_sigma": rng.uniform(0.2, 0.8, V)})
    l1 = np.abs(rng.normal(1, 0.2, (n, V))) * (1 + level)
    dec = {"stats": {"l1_mean": l1, "l1_learned": l1 * 1.01,
                     "down_learned": rng.normal(size=(n, V, 1))}}
    units = {"label": labels, "nonlinearity": level + rng.normal(0, 0.05, V),
             "jne": level + rng.normal(0, 0.05, V), "afd_tsne0": rng.uniform(0, 1, V),
             "afd_tsne1": rng.uniform(0, 1, V), "bias_l1_learned": l1.mean(0),
             "nonlinearity_learned": level + rng.normal(0, 0.05, V),
             "euler_bias_share": level + rng.normal(0, 0.05, V),
             "r2_mlp_relu": rng.uniform(0.1, 0.6, V), "r_mlp_relu": rng.uniform(0.3, 0.8, V),
             "p_mlp_relu": np.full(V, 0.001)}
    cfg = SimpleNamespace(seed=0, metrics=SimpleNamespace(fdr_q=0.05))
    return ds, dec, units, cfg


def test_analyze_run_writes_tier_tests_and_stimulus_analyses(tmp_path):
    ds, dec, units, cfg = _fake_run()
    out = analyze_run(ds, dec, units, RunDir(tmp_path), cfg)
    a = json.loads((tmp_path / "analysis.json").read_text())
    assert a["tier_order"] == ["t1", "t2", "t3"]
    tt = a["tier_tests"]
    assert set(tt["indices"]) == {"nonlinearity", "jne", "afd", "bias_l1", "bias_rel_l2",
                                  "euler_bias_share"}
    assert tt["indices"]["nonlinearity"]["trend"]["p"] < 1e-6
    assert tt["indices"]["afd"]["trend"]["p"] > 1e-3           # planted: no order in AFD
    assert set(tt["stratified"]) == {"noise_ceiling", "test_r2_nonlinear"}
    assert tt["stratified"]["noise_ceiling"]["nonlinearity"]["trend"]["p"] < 1e-4
    assert "no images" in a["afd_orderings_note"] and "images_note" in a
    assert not (tmp_path / "analysis_images.npz").exists()
    arr = np.load(tmp_path / "analysis.npz")
    assert arr["tsne2d"].shape == (80, 2) and arr["sample_bias"].shape == (80, 3)
    assert len(a["afd_robustness"]["orderings"]) == 3            # 2 t-SNE seeds + PC1
    assert out["clusters"]["k"] >= 2


def test_analyze_run_one_area_with_images_and_user_mapping(tmp_path):
    ds, dec, units, cfg = _fake_run(images=True, one_area=True)
    a = analyze_run(ds, dec, units, RunDir(tmp_path), cfg)
    assert a["tier_tests"] is None and "one area" in a["tier_tests_note"]
    assert set(a["distributions"]) >= {"nonlinearity", "jne", "afd"}
    assert {"luminance", "contrast"} <= set(a["afd_robustness"]["orderings"])
    th = np.load(tmp_path / "analysis_images.npz")
    assert th["0_highest"].shape[0] == 8 and th["0_highest"].dtype == np.uint8
    # a user mapping turns one-area labels into tiers
    ds, dec, units, cfg = _fake_run()
    a = analyze_run(ds, dec, units, RunDir(tmp_path / "m"), cfg,
                    tier_map={"low": ["t1"], "high": ["t2", "t3"]})
    assert a["tier_order"] == ["low", "high"]
    assert a["tier_tests"]["indices"]["nonlinearity"]["pairs"][0]["p"] < 1e-4
