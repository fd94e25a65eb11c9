"""Per-label (ROI / tier) summaries and ordered tier comparisons of per-unit values.

Tier labels come from the dataset (NSD tiers PVC/IVC/HVC, the synthetic tiers) or from
a user mapping {tier: [labels]} applied to them. The order of the tiers is the
hypothesis: every test asks whether a later tier has *larger* values than an earlier
one (e.g. nonlinearity rises PVC < IVC < HVC; tier1_linear < tier2_relu <
tier3_quadratic on the synthetic data).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .stats import (bootstrap_effect, holm, jonckheere_terpstra, quantile_strata,
                    stratified_mann_whitney)

OTHER = "other"


def label_order(labels: np.ndarray) -> list[str]:
    """Labels in first-seen order (dataset order is the tier order), 'other' last."""
    seen: list[str] = []
    for lab in np.asarray(labels).astype(str):
        if lab not in seen:
            seen.append(lab)
    return sorted(seen, key=lambda s: (s == "other", seen.index(s)))


def tier_medians(values: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Median of a per-unit value within each label, NaN ignored."""
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels).astype(str)
    if values.shape[0] != labels.shape[0]:
        raise ValueError(f"{values.shape[0]} values but {labels.shape[0]} labels")
    return {lab: float(np.nanmedian(values[labels == lab])) if (labels == lab).any() and
            np.isfinite(values[labels == lab]).any() else float("nan")
            for lab in label_order(labels)}


def apply_mapping(labels: np.ndarray, mapping: Mapping[str, Sequence[str]] | None
                  ) -> tuple[np.ndarray, list[str]]:
    """Relabel units with a user mapping {tier: [labels]}; unmapped units become 'other'.

    Returns (new labels, tier order = the mapping's key order). Without a mapping the
    labels are returned unchanged with their first-seen order (without 'other').
    """
    labels = np.asarray(labels).astype(str)
    if not mapping:
        return labels, [t for t in label_order(labels) if t != OTHER]
    out = np.full(labels.shape, OTHER, dtype=object)
    for tier, members in mapping.items():
        members = [members] if isinstance(members, str) else list(members)
        hit = np.isin(labels, members) & (out == OTHER)
        out[hit] = str(tier)
    return out.astype(str), [str(t) for t in mapping]


def resolve_tiers(labels: np.ndarray, mapping=None, preferred: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, list[str]]:
    """Tier labels and their hypothesised order.

    Order: the mapping's keys when a mapping is given; else ``preferred`` (e.g. the
    dataset's own tier list, ``ds.meta["tiers"]``), keeping the tiers that occur; else
    the labels' first-seen order. 'other' and the empty label never take part in tests.
    """
    labs, order = apply_mapping(labels, mapping)
    if not mapping and preferred:
        present = set(labs.tolist())
        pref = [str(t) for t in preferred if str(t) in present]
        order = pref + [t for t in order if t not in pref]
    order = [t for t in order if t not in (OTHER, "")]
    return labs, order


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    f = x[np.isfinite(x)]
    if f.size == 0:
        return {"n": int(x.size), "n_finite": 0, "median": float("nan"), "mean": float("nan"),
                "q25": float("nan"), "q75": float("nan")}
    return {"n": int(x.size), "n_finite": int(f.size), "median": float(np.median(f)),
            "mean": float(f.mean()), "q25": float(np.percentile(f, 25)),
            "q75": float(np.percentile(f, 75))}


def compare_tiers(values: np.ndarray, labels: np.ndarray, order: Sequence[str],
                  strata: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                  min_units: int = 3) -> dict:
    """Ordered comparison of one per-unit value between tiers.

    For every pair (earlier tier a, later tier b): a one-sided Mann-Whitney test of
    b > a, Cliff's delta with a bootstrap CI, the median difference (b - a) with a CI,
    Holm-adjusted p over the pairs; plus one Jonckheere-Terpstra trend test over all
    tiers in order. With ``strata`` (per-unit stratum labels, -1 = excluded) every
    statistic is computed within strata and pooled (see ``stats``).
    """
    v = np.asarray(values, dtype=np.float64)
    labs = np.asarray(labels).astype(str)
    if v.shape[0] != labs.shape[0]:
        raise ValueError(f"{v.shape[0]} values but {labs.shape[0]} labels")
    st = None if strata is None else np.asarray(strata)
    if st is not None and st.shape[0] != v.shape[0]:
        raise ValueError(f"{st.shape[0]} strata labels but {v.shape[0]} values")
    keep = np.ones(v.shape[0], bool) if st is None else st >= 0
    tiers = [t for t in order if np.sum((labs == t) & keep & np.isfinite(v)) >= min_units]
    out: dict = {"order": list(order), "tested_tiers": tiers,
                 "per_tier": {t: _summary(v[labs == t]) for t in order}, "pairs": [],
                 "trend": None}
    if len(tiers) < 2:
        out["note"] = (f"fewer than two tiers with at least {min_units} units: no tests "
                       f"(tiers present: {sorted(set(labs.tolist()))})")
        return out
    sel = {t: (labs == t) & keep for t in tiers}
    for i, a in enumerate(tiers):
        for b in tiers[i + 1:]:
            sa = None if st is None else st[sel[a]]
            sb = None if st is None else st[sel[b]]
            test = stratified_mann_whitney(v[sel[b]], v[sel[a]], sb, sa)
            eff = bootstrap_effect(v[sel[b]], v[sel[a]], sb, sa, n_boot=n_boot,
                                   seed=seed + 7 * i + len(out["pairs"]))
            out["pairs"].append({"lower": a, "higher": b, **test, **eff})
    adj = holm([p["p"] for p in out["pairs"]])
    for p, q in zip(out["pairs"], adj):
        p["p_holm"] = float(q)
    out["trend"] = jonckheere_terpstra([v[sel[t]] for t in tiers],
                                       None if st is None else [st[sel[t]] for t in tiers])
    return out


def residualize(values: np.ndarray, control: np.ndarray, mask: np.ndarray | None = None,
                degree: int = 3) -> np.ndarray:
    """Residual of each value after a cubic fit on the control's rank (pooled over units).

    The fit uses the units in ``mask`` with finite value and control; others get NaN. With
    a shared fit, an index that depends on signal-to-noise alone leaves residuals without
    a tier order; a real tier effect that is collinear with the control is partly removed
    too, so this adjustment is conservative.
    """
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(c) & (np.ones(v.shape, bool) if mask is None else mask)
    out = np.full(v.shape, np.nan)
    if ok.sum() <= degree + 1:
        return out
    from scipy.stats import rankdata

    q = (rankdata(c[ok]) - 0.5) / ok.sum()
    coef = np.polynomial.polynomial.polyfit(q, v[ok], degree)
    out[ok] = v[ok] - np.polynomial.polynomial.polyval(q, coef)
    return out


def default_n_strata(counts: Sequence[int]) -> int:
    """Strata for the SNR control: about 20 units of the smallest tier per stratum, 2..8."""
    return int(np.clip(min(counts) // 20 if len(counts) else 2, 2, 8))


def tier_analysis(indices: Mapping[str, np.ndarray], labels: np.ndarray, order: Sequence[str],
                  controls: Mapping[str, np.ndarray] | None = None,
                  n_strata: int | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Tier comparisons of several indices, unstratified and controlled for signal-to-noise.

    controls : {name: per-unit value} (noise ceiling, test R^2 ...). Two controls per name:
        ``stratified`` - units split into ``n_strata`` quantile strata of the control (over
        all units in the tested tiers; default ``default_n_strata``) and tiers compared only
        within a stratum; coarse strata leave some confounding inside each stratum;
        ``adjusted`` - the same tests on the residuals of a cubic fit of the index on the
        control's rank (``residualize``), which removes a shared dependence on the control.
    """
    labs = np.asarray(labels).astype(str)
    in_tiers = np.isin(labs, list(order))
    if n_strata is None:
        n_strata = default_n_strata([int((labs == t).sum()) for t in order])
    out: dict = {"order": list(order), "n_units": {t: int((labs == t).sum()) for t in order},
                 "n_strata": int(n_strata), "indices": {}, "stratified": {}, "adjusted": {},
                 "controls": {}}
    for name, v in indices.items():
        out["indices"][name] = compare_tiers(v, labs, order, n_boot=n_boot, seed=seed)
    for cname, c in (controls or {}).items():
        c = np.asarray(c, dtype=np.float64)
        if c.shape[0] != labs.shape[0]:
            raise ValueError(f"control {cname!r} has {c.shape[0]} values, {labs.shape[0]} units")
        cc = np.where(in_tiers, c, np.nan)
        strata, edges = quantile_strata(cc, n_strata)
        out["controls"][cname] = {
            "edges": edges.tolist(),
            "per_tier_median": {t: _summary(c[labs == t])["median"] for t in order},
            "counts": {t: [int(((labs == t) & (strata == s)).sum())
                           for s in range(max(0, edges.size - 1))] for t in order}}
        out["stratified"][cname] = {
            name: compare_tiers(v, labs, order, strata=strata, n_boot=n_boot, seed=seed)
            for name, v in indices.items()}
        out["adjusted"][cname] = {
            name: compare_tiers(residualize(v, c, in_tiers), labs, order, n_boot=n_boot,
                                seed=seed)
            for name, v in indices.items()}
        from scipy.stats import spearmanr

        corr = {}
        for name, v in indices.items():
            ok = in_tiers & np.isfinite(c) & np.isfinite(np.asarray(v, dtype=float))
            corr[name] = float(spearmanr(c[ok], np.asarray(v, float)[ok])[0]) \
                if ok.sum() > 3 else float("nan")
        out["controls"][cname]["spearman_with_index"] = corr
    return out
