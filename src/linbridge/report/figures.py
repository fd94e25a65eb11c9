"""Figures of a finished run, drawn from the files in its run directory only.

Conventions (docs/conventions.md, Outputs): NaN is transparent (never drawn as a value),
axes autoscale with ``nanpercentile`` and say how many points fall outside, scores use a
sequential map from 0, signed maps a symmetric diverging map. Every function takes plain
arrays / dictionaries read from the run directory and writes one PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis.tiers import label_order  # noqa: E402

ENCODER_NAMES = {"ridge": "ridge", "mlp_linear": "linear control", "mlp_relu": "nonlinear (ReLU)"}
INDEX_TITLES = {"nonlinearity": "Jacobian nonlinear fraction", "jne": "JNE",
                "afd": "AFD (mean over t-SNE seeds)", "bias_l1": "mapping bias ‖ΔJ‖₁",
                "bias_rel_l2": "relative mapping bias ‖ΔJ‖²/‖J‖²",
                "euler_bias_share": "Euler nonlinear share"}
CONTROL_TITLES = {"noise_ceiling": "noise ceiling (fraction)",
                  "test_r2_nonlinear": "test R² (nonlinear encoder)"}


def _save(fig, path: Path) -> Path:
    from ..rundir import save_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    save_bytes(path, buf.getvalue())
    return path


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _limits(arrays: Sequence[np.ndarray], lo_q: float = 0.5, hi_q: float = 99.5,
            floor: float | None = None) -> tuple[float, float]:
    """Axis limits from percentiles of the finite values (with 5% padding)."""
    allv = np.concatenate([_finite(a) for a in arrays] or [np.array([0.0])])
    if allv.size == 0:
        return (0.0, 1.0)
    lo, hi = np.nanpercentile(allv, [lo_q, hi_q])
    if allv.max() - allv.min() <= 1.5 * (hi - lo):  # no far outliers: show everything
        lo, hi = float(allv.min()), float(allv.max())
    if floor is not None:
        lo = max(lo, floor) if allv.min() >= floor else lo
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    return float(lo - pad), float(hi + pad)


def _violins(ax, groups: Sequence[np.ndarray], positions=None, color=None, points: bool = True,
             ylim: tuple[float, float] | None = None) -> None:
    """Violins of the finite values inside ylim; median of all values as a white dot;
    a count of the values outside the axis under/over each violin."""
    positions = list(range(1, len(groups) + 1)) if positions is None else list(positions)
    rng = np.random.default_rng(0)
    for pos, g in zip(positions, groups):
        g = _finite(g)
        if g.size == 0:
            ax.text(pos, 0.5, "no data", transform=ax.get_xaxis_transform(), ha="center",
                    fontsize=7, color="0.4")
            continue
        inside = g if ylim is None else g[(g >= ylim[0]) & (g <= ylim[1])]
        if inside.size >= 3 and np.ptp(inside) > 0:
            parts = ax.violinplot([inside], positions=[pos], showextrema=False, widths=0.8)
            for b in parts["bodies"]:
                b.set_alpha(0.45)
                if color is not None:
                    b.set_facecolor(color)
        if points and inside.size <= 400:
            ax.scatter(pos + rng.uniform(-0.12, 0.12, inside.size), inside, s=4, color="0.25",
                       alpha=0.5, linewidths=0, zorder=3)
        q1, med, q3 = np.percentile(g, [25, 50, 75])
        ax.vlines(pos, q1, q3, color="k", lw=3, zorder=4)
        ax.scatter([pos], [med], s=18, color="white", edgecolors="k", zorder=5)
        if ylim is not None:
            below, above = int((g < ylim[0]).sum()), int((g > ylim[1]).sum())
            if below:
                ax.annotate(f"{below} below", (pos, 0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6,
                            color="firebrick")
            if above:
                ax.annotate(f"{above} above", (pos, 1), xycoords=("data", "axes fraction"),
                            xytext=(0, -8), textcoords="offset points", ha="center", fontsize=6,
                            color="firebrick")
    if ylim is not None:
        ax.set_ylim(*ylim)


def _pfmt(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "p n/a"
    return f"p={p:.1e}" if p < 1e-3 else f"p={p:.3f}"


# -- encoders and inherent components ---------------------------------------------------

def score_names(units: Mapping[str, np.ndarray]) -> list[str]:
    enc = [n for n in ENCODER_NAMES if f"r_{n}" in units]
    inh = [k[len("r_"):] for k in units if k.startswith("r_inherent_")]
    first = [n for n in ("inherent_learned", "inherent_mean_jacobian") if n in inh]
    return enc + first + [n for n in inh if n not in first]


def _display(name: str) -> str:
    return ENCODER_NAMES.get(name, name.replace("inherent_", "inh: "))


def scores_figure(units: dict, path: Path) -> Path:
    """Test r and R² per unit of the encoders and of the inherent components (ŷ = J_inh x)."""
    names = score_names(units)
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.5 * len(names) + 3), 3.9))
    for ax, metric, label in zip(axes, ("r", "r2"), ("Pearson r", "R²")):
        data = [np.asarray(units[f"{metric}_{n}"], dtype=float) for n in names]
        lim = _limits(data, 1, 100)
        # from 0 (or below, down to -1 at most) to 1: scores keep their scale
        lim = (max(min(lim[0], 0.0), -1.0), 1.02)
        colors = ["tab:blue" if not n.startswith("inherent_") else "tab:orange" for n in names]
        for i, (d, c) in enumerate(zip(data, colors)):
            _violins(ax, [d], positions=[i + 1], color=c, points=False, ylim=lim)
        ax.set_xticks(range(1, len(names) + 1), [_display(n) for n in names], rotation=35,
                      ha="right")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_ylabel(f"test {label} per unit")
        ax.set_title(f"test {label}: encoders (blue), inherent components (orange)", fontsize=9)
    return _save(fig, path)


def r2_agreement_figure(units: dict, path: Path) -> Path:
    """R² of each inherent component against the nonlinear encoder's, unit by unit."""
    nl = np.asarray(units["r2_mlp_relu"], dtype=float)
    names = [n for n in ("learned", "mean_jacobian") if f"r2_inherent_{n}" in units]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), squeeze=False)
    for ax, n in zip(axes[0], names):
        y = np.asarray(units[f"r2_inherent_{n}"], dtype=float)
        ok = np.isfinite(nl) & np.isfinite(y)
        lo, hi = _limits([nl[ok], y[ok]], 1, 100)
        inside = ok & (nl >= lo) & (y >= lo)
        ax.scatter(nl[inside], y[inside], s=6, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        r = np.corrcoef(nl[ok], y[ok])[0, 1] if ok.sum() > 2 else np.nan
        out = int(ok.sum() - inside.sum())
        ax.set_title(f"{n}: map r = {r:.3f}" + (f" ({out} outside)" if out else ""), fontsize=9)
        ax.set_xlabel("R² nonlinear encoder")
        ax.set_ylabel("R² inherent component (ŷ = J_inh x)")
    return _save(fig, path)


# -- indices by tier / per unit ----------------------------------------------------------

def tier_index_figure(indices: Mapping[str, np.ndarray], labels: np.ndarray, order: Sequence[str],
                      tests: Mapping | None, path: Path) -> Path:
    """Per-tier violins of every index, with the trend test and adjacent-pair tests;
    with one area, the per-unit distribution of every index."""
    labels = np.asarray(labels).astype(str)
    order = list(order) or label_order(labels)
    names = list(indices)
    ncol = 3
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(10, 1.3 * len(order) * ncol + 2),
                                                  3.3 * nrow), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(1, len(order))))
    for ax, name in zip(axes.ravel(), names):
        v = np.asarray(indices[name], dtype=float)
        groups = [v[labels == t] for t in order]
        lim = _limits(groups, 0.5, 99.5)
        for i, g in enumerate(groups):
            _violins(ax, [g], positions=[i + 1], color=colors[i], points=len(order) == 1,
                     ylim=lim)
        ax.set_xticks(range(1, len(order) + 1),
                      [f"{t}\n(n={int((labels == t).sum())})" for t in order], fontsize=7)
        title = INDEX_TITLES.get(name, name)
        res = (tests or {}).get(name)
        if res and res.get("trend"):
            title += f"\ntrend {_pfmt(res['trend']['p'])}"
            ytop = lim[1]
            for pr in res.get("pairs", []):
                i, j = order.index(pr["lower"]) + 1, order.index(pr["higher"]) + 1
                if j - i != 1:
                    continue
                ax.annotate(f"{_pfmt(pr['p_holm'])}\nδ={pr['delta']:.2f}", ((i + j) / 2, ytop),
                            xytext=(0, -16), textcoords="offset points", ha="center",
                            fontsize=6)
        elif len(order) == 1:
            title += " (per unit)"
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def snr_figure(index: np.ndarray, index_name: str, labels: np.ndarray, order: Sequence[str],
               controls: Mapping[str, np.ndarray], edges: Mapping[str, Sequence[float]],
               path: Path) -> Path:
    """The default index against each signal-to-noise control, by tier; dashed lines are the
    strata of the stratified tests."""
    labels = np.asarray(labels).astype(str)
    order = list(order) or label_order(labels)
    names = list(controls)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(1, len(order))))
    v = np.asarray(index, dtype=float)
    for ax, cname in zip(axes[0], names):
        c = np.asarray(controls[cname], dtype=float)
        ylim = _limits([v], 0.5, 99.5)
        xlim = _limits([c], 0.5, 99.5)
        for t, col in zip(order, colors):
            sel = (labels == t) & np.isfinite(c) & np.isfinite(v)
            ax.scatter(c[sel], v[sel], s=7, alpha=0.6, color=col, label=t, linewidths=0)
        for e in list(edges.get(cname, []))[1:-1]:
            ax.axvline(e, color="0.5", ls="--", lw=0.8)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xlabel(CONTROL_TITLES.get(cname, cname))
        ax.set_ylabel(INDEX_TITLES.get(index_name, index_name))
        if len(order) > 1:
            ax.legend(fontsize=7, markerscale=2)
    return _save(fig, path)


def index_vs_score_figure(indices: Mapping[str, np.ndarray], score: np.ndarray, path: Path,
                          score_label: str = "test R² (nonlinear encoder)") -> Path:
    """One area: every index against the unit's test score (does the index track SNR?)."""
    from scipy.stats import spearmanr

    names = list(indices)
    ncol = 3
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(11, 3.1 * nrow), squeeze=False)
    s = np.asarray(score, dtype=float)
    for ax, name in zip(axes.ravel(), names):
        v = np.asarray(indices[name], dtype=float)
        ok = np.isfinite(v) & np.isfinite(s)
        ax.scatter(s[ok], v[ok], s=8, alpha=0.7)
        ax.set_xlim(*_limits([s[ok]], 0.5, 99.5))
        ax.set_ylim(*_limits([v[ok]], 0.5, 99.5))
        rho = spearmanr(s[ok], v[ok])[0] if ok.sum() > 3 else np.nan
        ax.set_title(f"{INDEX_TITLES.get(name, name)}\nSpearman with score {rho:.2f}", fontsize=8)
        ax.set_xlabel(score_label, fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


# -- AFD robustness --------------------------------------------------------------------------

def afd_robustness_figure(afds: Mapping[str, np.ndarray], null_mean: np.ndarray | None,
                          agreement: np.ndarray, path: Path) -> Path:
    """AFD per unit under every ordering beside the random-order null; rank agreement of the
    orderings (Spearman over units; diverging map, symmetric)."""
    names = list(afds)
    data = [np.asarray(afds[n], float) for n in names]
    labels = list(names)
    if null_mean is not None:
        data.append(np.asarray(null_mean, float))
        labels.append("random order\n(null mean)")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    lim = _limits(data, 0, 99.5)
    lim = (max(0.0, lim[0]), lim[1])
    for i, d in enumerate(data):
        col = "0.6" if i == len(names) else "tab:purple"
        _violins(axes[0], [d], positions=[i + 1], color=col, points=False, ylim=lim)
    axes[0].set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("AFD per unit")
    axes[0].set_title("AFD under each ordering", fontsize=9)
    M = np.asarray(agreement, float)
    im = axes[1].imshow(np.ma.masked_invalid(M), cmap="RdBu_r", vmin=-1, vmax=1)
    axes[1].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    axes[1].set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(M[i, j]):
                axes[1].text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                             color="white" if abs(M[i, j]) > 0.6 else "black")
    axes[1].set_title("rank agreement of AFD between orderings (Spearman)", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


# -- stimuli ------------------------------------------------------------------------------

def clusters_figure(Z: np.ndarray, clusters: np.ndarray, k_values: Sequence[int],
                    silhouette: Sequence[float], k: int, jness: np.ndarray,
                    tiers: Sequence[str], path: Path) -> Path:
    """2-D t-SNE map by cluster; silhouette against k; mean JNE-SS per cluster and tier."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    cmap = plt.get_cmap("tab20")
    axes[0].scatter(Z[:, 0], Z[:, 1], s=6, c=[cmap(c % 20) for c in clusters], linewidths=0)
    axes[0].set_title(f"2-D t-SNE of the test features, k-means k = {k}", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    if len(k_values):
        axes[1].plot(list(k_values), list(silhouette), "o-", ms=3)
        axes[1].axvline(k, color="firebrick", ls=":")
    axes[1].set_xlabel("k")
    axes[1].set_ylabel("silhouette score")
    axes[1].set_title("k chosen by silhouette", fontsize=9)
    J = np.asarray(jness, float)
    order = np.argsort(-np.nan_to_num(np.nanmean(J, axis=1) if J.size else J, nan=-np.inf))
    if J.ndim == 2 and J.shape[1] == 1:  # one area: a bar per cluster
        axes[2].bar(range(len(order)), J[order, 0], color=[cmap(c % 20) for c in order])
        step = max(1, len(order) // 15)
        axes[2].set_xticks(range(0, len(order), step), [str(c) for c in order[::step]],
                           fontsize=6)
        axes[2].set_xlabel("cluster (sorted)")
        axes[2].set_ylabel(f"mean JNE-SS ({tiers[0]})")
        axes[2].set_title("mean JNE-SS per cluster", fontsize=9)
        fig.tight_layout()
        return _save(fig, path)
    vmax = np.nanpercentile(J, 99) if np.isfinite(J).any() else 1.0
    im = axes[2].imshow(np.ma.masked_invalid(J[order]), aspect="auto", cmap="viridis", vmin=0,
                        vmax=vmax if vmax > 0 else 1.0, interpolation="nearest")
    axes[2].set_xticks(range(len(tiers)), list(tiers), rotation=30, ha="right", fontsize=7)
    step = max(1, len(order) // 15)
    axes[2].set_yticks(range(0, len(order), step), [str(c) for c in order[::step]], fontsize=6)
    axes[2].set_ylabel("cluster (sorted by mean JNE-SS)")
    axes[2].set_title("mean JNE-SS per cluster and tier", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def thumbnails_figure(rows: Sequence[tuple[str, np.ndarray, Sequence[str]]], path: Path,
                      title: str = "") -> Path:
    """Rows of thumbnails: [(row label, (n, h, w, 3) uint8, per-image captions)]."""
    ncol = max(1, max(len(r[1]) for r in rows))
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.25 * ncol + 1.6, 1.45 * len(rows)),
                             squeeze=False)
    for i, (lab, ims, caps) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(ims):
                ax.imshow(ims[j], interpolation="nearest")
                if j < len(caps):
                    ax.set_title(caps[j], fontsize=6, pad=2)
        axes[i, 0].set_ylabel(lab, fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# -- stability (from the bridge's evaluation, when the run directory holds it) ---------------

def _is_number(k) -> bool:
    try:
        float(k)
        return True
    except (TypeError, ValueError):
        return False


def _curves(obj) -> list[tuple[str, str, list, dict[str, list]]]:
    """Find drawable curves in stability.json: (panel, x name, x, {y name: y}).

    Layouts: {panel: {x: [...], metric: [...]}}; {panel: [{x: .., metric: ..}, ...]};
    {panel: {"16": {metric: ..}, "32": {...}}} (``bridge.evaluation.stability``: the keys
    are the x values).
    """
    num = lambda v: isinstance(v, list) and v and all(  # noqa: E731
        isinstance(a, (int, float)) and not isinstance(a, bool) or a is None for a in v)
    out = []
    if not isinstance(obj, dict):
        return out
    for panel, d in obj.items():
        if (isinstance(d, dict) and d and all(_is_number(k) for k in d)
                and all(isinstance(v, dict) for v in d.values())):
            keys = sorted(d, key=float)
            d = [{str(panel): float(k), **{m: v for m, v in d[k].items() if m != panel}}
                 for k in keys]
        if isinstance(d, list) and d and all(isinstance(r, dict) for r in d):
            cols = {k: [r.get(k) for r in d] for k in d[0]}
            cols = {k: v for k, v in cols.items() if num(v)}
            d = cols
        if not isinstance(d, dict):
            continue
        lists = {k: v for k, v in d.items() if num(v)}
        if len(lists) < 2:
            continue
        xkey = next((k for k in ("x", "values", "batch_sizes", "batch_size", "seeds", "seed",
                                 panel) if k in lists), next(iter(lists)))
        x = lists.pop(xkey)
        ys = {k: v for k, v in lists.items() if len(v) == len(x)
              and k not in ("batch_size", "seed", "n_samples", "epoch")}
        if ys:
            out.append((str(panel), str(xkey), x, ys))
    return out


def stability_figure(stability: dict, path: Path) -> Path | None:
    curves = _curves(stability)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
    for ax, (panel, xk, x, ys) in zip(axes[0], curves):
        xs = np.asarray(x, dtype=float)
        for name, y in ys.items():
            ax.plot(xs, np.asarray([np.nan if a is None else a for a in y], float), "o-", ms=3,
                    label=name)
        if np.all(xs > 0) and xs.max() / max(xs.min(), 1e-12) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xk)
        ax.set_title(f"stability over {panel}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# -- training curves -------------------------------------------------------------------------

def learner_figure(history: list[dict], path: Path) -> Path:
    """Learner training curves with the collapse monitors."""
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(ep, [h["loss"] for h in history], label="total")
    axes[0].plot(ep, [h["info_nce"] for h in history], label="InfoNCE")
    axes[0].set_title("loss", fontsize=9)
    axes[0].legend()
    axes[1].plot(ep, [h["bias_l1"] for h in history], label="learned ‖ΔJ‖₁")
    axes[1].plot(ep, [h["mean_split_l1"] for h in history], "--", label="‖J − J̄‖₁")
    axes[1].plot(ep, [0.5 * h["mean_split_l1"] for h in history], ":", color="r",
                 label="collapse line")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title("mapping-bias size (mean |.|)", fontsize=9)
    axes[1].legend(fontsize=7)
    axes[2].plot(ep, [h["cos_inherent_mean"] for h in history])
    axes[2].ticklabel_format(axis="y", useOffset=False)
    axes[2].set_title("cos(J_inh, batch mean J)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, path)


def encoder_training_figure(histories: dict[str, list[dict]], best: dict[str, int],
                            path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        line, = ax.plot(ep, [h["val_loss"] for h in hist], label=f"{name} (val)")
        ax.plot(ep[1:], [h["train_loss"] for h in hist][1:], "--", color=line.get_color(),
                alpha=0.6)
        ax.axvline(best[name], color=line.get_color(), lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (z-scored)")
    ax.set_title("Encoder training (dashed: train; dotted: best epoch)", fontsize=9)
    ax.legend()
    return _save(fig, path)


def ground_truth_figure(units: dict, comps: dict, planted: np.ndarray | None, path: Path) -> Path:
    """Synthetic data: the index against planted strength; inherent against planted."""
    labels = np.asarray(units["label"]).astype(str)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for lab in label_order(labels):
        sel = labels == lab
        axes[0].scatter(units["planted_strength"][sel], units["nonlinearity"][sel], s=8, label=lab)
    axes[0].set_xlabel("planted nonlinearity strength (1 − R² linear fit)")
    axes[0].set_ylabel("Jacobian nonlinear fraction")
    axes[0].legend(fontsize=7)
    if planted is not None:
        rng = np.random.default_rng(0)
        p = planted.ravel()
        idx = rng.choice(p.size, min(p.size, 5000), replace=False)
        for name in ("mean_jacobian", "learned"):
            if name in comps:
                axes[1].scatter(p[idx], np.asarray(comps[name]).ravel()[idx], s=3, alpha=0.4,
                                label=name)
        axes[1].set_xlabel("planted linear component entry")
        axes[1].set_ylabel("inherent component entry")
        axes[1].legend(fontsize=7)
    else:
        axes[1].axis("off")
    return _save(fig, path)


# -- brain maps (optional: nilearn, fsaverage data) ----------------------------------------------

def surface_maps_figure(values: Mapping[str, np.ndarray], hemi: np.ndarray, vertex: np.ndarray,
                        path: Path) -> Path | None:
    """Maps on fsaverage5 through nilearn (its wheel bundles the mesh). Units are fsaverage
    vertices; fsaverage5 holds the first 10242 vertices of each hemisphere (icosahedral
    nesting), so other vertices are not drawn; grey is no data. Posterior views (visual
    cortex). Returns None when nilearn is missing."""
    try:
        from nilearn import datasets, plotting
    except ImportError:
        return None
    fs5 = datasets.fetch_surf_fsaverage("fsaverage5")
    n5 = 10242
    hemi = np.asarray(hemi).astype(str)
    vertex = np.asarray(vertex, dtype=np.int64)
    names = list(values)
    fig, axes = plt.subplots(len(names), 2, figsize=(8, 3.2 * len(names)),
                             subplot_kw={"projection": "3d"}, squeeze=False)
    for i, name in enumerate(names):
        v = np.asarray(values[name], float)
        vmax = np.nanpercentile(v, 99) if np.isfinite(v).any() else 1.0
        for j, (h, mesh) in enumerate((("lh", fs5["infl_left"]), ("rh", fs5["infl_right"]))):
            m = np.full(n5, np.nan)
            sel = (np.char.startswith(hemi, h[0]) | (hemi == h)) & (vertex < n5)
            m[vertex[sel]] = v[sel]
            plotting.plot_surf_stat_map(mesh, m, hemi="left" if h == "lh" else "right",
                                        view="posterior", colorbar=j == 1, axes=axes[i, j],
                                        figure=fig, threshold=None, vmax=vmax, cmap="viridis",
                                        title=f"{name} ({h})")
    return _save(fig, path)
