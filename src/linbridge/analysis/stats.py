"""Rank statistics for comparing groups of units (tiers), plain functions on arrays.

All tests are one-sided with the alternative "the later group is larger". Rank
statistics are used because the indices are bounded, skewed and differ in scale
between units; the effect size is Cliff's delta (2 * AUC - 1, in [-1, 1]: the
probability that a unit of the later group exceeds one of the earlier group, minus the
reverse), with percentile bootstrap confidence intervals that resample units within
each group (and within each stratum, when stratified).

Stratified versions (the signal-to-noise control) sum the Mann-Whitney U (two groups)
or Jonckheere-Terpstra (ordered groups) statistics over strata, with their null means
and variances, so that only units of equal noise ceiling / test R^2 are compared.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata


def _clean(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def mann_whitney_u(hi: np.ndarray, lo: np.ndarray) -> float:
    """U = #{(i, j): hi_i > lo_j} + 0.5 #{ties}, from ranks (O(n log n))."""
    hi, lo = _clean(hi), _clean(lo)
    if hi.size == 0 or lo.size == 0:
        return float("nan")
    r = rankdata(np.r_[hi, lo])
    return float(r[:hi.size].sum() - hi.size * (hi.size + 1) / 2)


def _tie_term(values: np.ndarray) -> float:
    _, c = np.unique(values, return_counts=True)
    return float((c ** 3 - c).sum())


def _u_null(n1: int, n2: int, tie: float = 0.0) -> tuple[float, float]:
    n = n1 + n2
    mean = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    return mean, var


def stratified_mann_whitney(hi: np.ndarray, lo: np.ndarray, strata_hi=None, strata_lo=None
                            ) -> dict:
    """One-sided test that ``hi`` > ``lo``; with strata, the U statistics of the strata summed.

    Returns {"U", "n_pairs", "auc", "delta", "z", "p", "n_hi", "n_lo", "n_strata_used"}. The
    p-value is the normal approximation with tie correction and continuity correction (for
    small samples without strata, scipy's exact test is used instead).
    """
    hi, lo = np.asarray(hi, dtype=np.float64), np.asarray(lo, dtype=np.float64)
    sh = np.zeros(hi.size, int) if strata_hi is None else np.asarray(strata_hi)
    sl = np.zeros(lo.size, int) if strata_lo is None else np.asarray(strata_lo)
    okh, okl = np.isfinite(hi), np.isfinite(lo)
    hi, sh, lo, sl = hi[okh], sh[okh], lo[okl], sl[okl]
    U = pairs = mean = var = 0.0
    used = 0
    for s in np.unique(np.r_[sh, sl]):
        a, b = hi[sh == s], lo[sl == s]
        if a.size == 0 or b.size == 0:
            continue
        used += 1
        U += mann_whitney_u(a, b)
        pairs += a.size * b.size
        m, v = _u_null(a.size, b.size, _tie_term(np.r_[a, b]))
        mean, var = mean + m, var + v
    out = {"n_hi": int(hi.size), "n_lo": int(lo.size), "n_strata_used": used}
    if pairs == 0:
        return {**out, "U": float("nan"), "n_pairs": 0, "auc": float("nan"),
                "delta": float("nan"), "z": float("nan"), "p": float("nan")}
    auc = U / pairs
    z = (U - mean - 0.5) / np.sqrt(var) if var > 0 else float("nan")
    p = float(norm.sf(z)) if np.isfinite(z) else float("nan")
    if strata_hi is None and strata_lo is None and hi.size * lo.size <= 2500:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(hi, lo, alternative="greater", method="auto").pvalue)
    return {**out, "U": float(U), "n_pairs": int(pairs), "auc": float(auc),
            "delta": float(2 * auc - 1), "z": float(z), "p": p}


def jonckheere_terpstra(groups: list[np.ndarray], strata: list[np.ndarray] | None = None
                        ) -> dict:
    """One-sided Jonckheere-Terpstra trend test: groups[0] < groups[1] < ... .

    JT = sum over ordered pairs (i < j) of U(groups[j] > groups[i]); normal approximation
    (no tie correction; the indices are continuous). With ``strata`` (one label array per
    group), JT, its null mean and variance are summed over strata.
    """
    g = [np.asarray(x, dtype=np.float64) for x in groups]
    st = [np.zeros(x.size, int) for x in g] if strata is None else [np.asarray(s) for s in strata]
    keep = [np.isfinite(x) for x in g]
    g, st = [x[k] for x, k in zip(g, keep)], [s[k] for s, k in zip(st, keep)]
    JT = mean = var = 0.0
    pairs = 0
    levels = np.unique(np.concatenate(st)) if st else []
    for s in levels:
        parts = [x[ss == s] for x, ss in zip(g, st)]
        parts = [x for x in parts if x.size]
        if len(parts) < 2:
            continue
        ns = np.array([x.size for x in parts], dtype=np.float64)
        N = ns.sum()
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                JT += mann_whitney_u(parts[j], parts[i])
                pairs += int(ns[i] * ns[j])
        mean += (N ** 2 - (ns ** 2).sum()) / 4.0
        var += (N ** 2 * (2 * N + 3) - (ns ** 2 * (2 * ns + 3)).sum()) / 72.0
    if pairs == 0 or var <= 0:
        return {"JT": float("nan"), "z": float("nan"), "p": float("nan"), "n_pairs": 0,
                "auc": float("nan")}
    z = (JT - mean - 0.5) / np.sqrt(var)
    return {"JT": float(JT), "z": float(z), "p": float(norm.sf(z)), "n_pairs": pairs,
            "auc": float(JT / pairs)}


def _auc_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """AUC(a > b) for each row of (B, n_a), (B, n_b)."""
    r = rankdata(np.concatenate([a, b], axis=1), axis=1)
    na, nb = a.shape[1], b.shape[1]
    return (r[:, :na].sum(1) - na * (na + 1) / 2) / (na * nb)


def bootstrap_effect(hi: np.ndarray, lo: np.ndarray, strata_hi=None, strata_lo=None,
                     n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
                     chunk: int = 100) -> dict:
    """Percentile bootstrap CIs of Cliff's delta and of the median difference (hi - lo).

    Units are resampled with replacement within each group (and within each stratum when
    strata are given; the delta is then the pooled within-stratum delta, sum U / sum pairs).
    """
    hi, lo = np.asarray(hi, dtype=np.float64), np.asarray(lo, dtype=np.float64)
    sh = np.zeros(hi.size, int) if strata_hi is None else np.asarray(strata_hi)
    sl = np.zeros(lo.size, int) if strata_lo is None else np.asarray(strata_lo)
    okh, okl = np.isfinite(hi), np.isfinite(lo)
    hi, sh, lo, sl = hi[okh], sh[okh], lo[okl], sl[okl]
    cells = [(hi[sh == s], lo[sl == s]) for s in np.unique(np.r_[sh, sl])]
    cells = [(a, b) for a, b in cells if a.size and b.size]
    nan = {"delta_ci": [float("nan")] * 2, "median_diff": float("nan"),
           "median_diff_ci": [float("nan")] * 2, "n_boot": 0}
    if not cells or n_boot <= 0:
        return nan
    rng = np.random.default_rng(seed)
    deltas = np.zeros(n_boot)
    mdiff = np.full(n_boot, np.nan)
    stratified = len(cells) > 1
    for b0 in range(0, n_boot, chunk):
        B = min(chunk, n_boot - b0)
        U = np.zeros(B)
        P = 0.0
        for a, b in cells:
            ia = rng.integers(0, a.size, (B, a.size))
            ib = rng.integers(0, b.size, (B, b.size))
            U += _auc_rows(a[ia], b[ib]) * a.size * b.size
            P += a.size * b.size
            if not stratified:
                mdiff[b0:b0 + B] = np.median(a[ia], 1) - np.median(b[ib], 1)
        deltas[b0:b0 + B] = 2 * U / P - 1
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    out = {"delta_ci": [float(np.percentile(deltas, lo_q)), float(np.percentile(deltas, hi_q))],
           "n_boot": int(n_boot), "ci": ci}
    if stratified:
        # the median difference is not defined across strata: report the unstratified one
        out.update(median_diff=float(np.median(hi) - np.median(lo)),
                   median_diff_ci=[float("nan")] * 2)
    else:
        out.update(median_diff=float(np.median(hi) - np.median(lo)),
                   median_diff_ci=[float(np.percentile(mdiff, lo_q)),
                                   float(np.percentile(mdiff, hi_q))])
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok])]
    m = order.size
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def quantile_strata(values: np.ndarray, n_strata: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratum (0..n_strata-1) of each value by quantiles of the finite values; -1 for NaN.

    Returns (strata, edges). Ties at an edge go to the lower stratum.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, -1, dtype=np.int64)
    if not ok.any():
        return out, np.array([])
    edges = np.unique(np.nanpercentile(v[ok], np.linspace(0, 100, n_strata + 1)))
    if edges.size < 2:
        out[ok] = 0
        return out, edges
    out[ok] = np.clip(np.searchsorted(edges, v[ok], side="left") - 1, 0, edges.size - 2)
    return out, edges
