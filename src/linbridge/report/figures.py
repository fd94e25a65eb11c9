"""Figures of a finished run, drawn from the files in its run directory only."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis.tiers import label_order  # noqa: E402


def _save(fig, path: Path) -> Path:
    from ..rundir import save_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    save_bytes(path, buf.getvalue())
    return path


def scores_figure(units: dict, path: Path, metric: str = "r") -> Path:
    """Test scores of every encoder and inherent component, one violin each."""
    names = [k[len(metric) + 1:] for k in units if k.startswith(f"{metric}_")
             and not k.startswith(f"{metric}2_")] if metric == "r" else \
        [k[len(metric) + 1:] for k in units if k.startswith(f"{metric}_")]
    data = [np.asarray(units[f"{metric}_{n}"], dtype=float) for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    ax.violinplot([d[np.isfinite(d)] for d in data], showmedians=True)
    ax.set_xticks(range(1, len(names) + 1), [n.replace("inherent_", "inh: ") for n in names],
                  rotation=35, ha="right")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylabel(f"test {'Pearson r' if metric == 'r' else 'R²'} per unit")
    ax.set_title("Encoders and inherent components as linear encoders")
    return _save(fig, path)


def r2_agreement_figure(units: dict, path: Path) -> Path:
    """R² of each inherent component against the nonlinear encoder's, unit by unit."""
    nl = np.asarray(units["r2_mlp_relu"], dtype=float)
    names = [n for n in ("learned", "mean_jacobian") if f"r2_inherent_{n}" in units]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), squeeze=False)
    for ax, n in zip(axes[0], names):
        y = np.asarray(units[f"r2_inherent_{n}"], dtype=float)
        ok = np.isfinite(nl) & np.isfinite(y)
        ax.scatter(nl[ok], y[ok], s=6, alpha=0.6)
        lo = np.nanpercentile(np.r_[nl[ok], y[ok]], 1)
        hi = np.nanpercentile(np.r_[nl[ok], y[ok]], 99)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        r = np.corrcoef(nl[ok], y[ok])[0, 1] if ok.sum() > 2 else np.nan
        ax.set_title(f"{n}: map r = {r:.3f}")
        ax.set_xlabel("R² nonlinear encoder")
        ax.set_ylabel("R² inherent component (ŷ = J_inh x)")
    return _save(fig, path)


def tier_figure(units: dict, path: Path) -> Path:
    """Nonlinearity index and JNE per ROI / tier."""
    labels = np.asarray(units["label"]).astype(str)
    order = label_order(labels)
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(order) + 3), 3.6))
    for ax, key, title in zip(axes, ("nonlinearity", "jne"),
                              ("Jacobian nonlinear fraction", "JNE")):
        vals = np.asarray(units[key], dtype=float)
        groups = [vals[(labels == lab) & np.isfinite(vals)] for lab in order]
        ax.violinplot([g if g.size else np.array([np.nan]) for g in groups], showmedians=True)
        ax.set_xticks(range(1, len(order) + 1), order, rotation=25, ha="right")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    return _save(fig, path)


def learner_figure(history: list[dict], path: Path) -> Path:
    """Learner training curves with the collapse monitors."""
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(ep, [h["loss"] for h in history], label="total")
    axes[0].plot(ep, [h["info_nce"] for h in history], label="InfoNCE")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(ep, [h["bias_l1"] for h in history], label="learned ‖ΔJ‖₁")
    axes[1].plot(ep, [h["mean_split_l1"] for h in history], "--", label="‖J − J̄‖₁")
    axes[1].plot(ep, [0.5 * h["mean_split_l1"] for h in history], ":", color="r",
                 label="collapse line")
    axes[1].set_title("mapping-bias size (mean |.|)")
    axes[1].legend(fontsize=7)
    axes[2].plot(ep, [h["cos_inherent_mean"] for h in history])
    axes[2].set_title("cos(J_inh, batch mean J)")
    for ax in axes:
        ax.set_xlabel("epoch")
    return _save(fig, path)


def encoder_training_figure(histories: dict[str, list[dict]], best: dict[str, int], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        line, = ax.plot(ep, [h["val_loss"] for h in hist], label=f"{name} (val)")
        ax.plot(ep[1:], [h["train_loss"] for h in hist][1:], "--", color=line.get_color(), alpha=0.6)
        ax.axvline(best[name], color=line.get_color(), lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (z-scored)")
    ax.set_title("Encoder training (dashed: train; dotted: best epoch)")
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
    return _save(fig, path)


def afd_seed_figure(units: dict, path: Path) -> Path:
    keys = [k for k in units if k.startswith("afd_tsne")]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    if len(keys) >= 2:
        a, b = np.asarray(units[keys[0]], float), np.asarray(units[keys[1]], float)
        ax.scatter(a, b, s=6)
        ax.set_xlabel(f"AFD ({keys[0]})")
        ax.set_ylabel(f"AFD ({keys[1]})")
    ax.set_title("AFD under two t-SNE orderings")
    return _save(fig, path)
