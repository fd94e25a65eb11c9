"""A self-contained report.html: figures embedded as base64, no network assets."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..rundir import load_json, load_npz, save_bytes
from . import figures as F

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.2em 0}figcaption{font-size:13px;color:#444}img{max-width:100%}
.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em}pre{font-size:12px;
background:#f7f7f7;padding:.6em;overflow:auto}"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[list], header: list[str]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _units(run: Path) -> dict[str, np.ndarray]:
    units: dict[str, np.ndarray] = dict(load_npz(run / "units.npz"))
    lines = (run / "units.csv").read_text().splitlines()
    header = lines[0].split(",")
    cols = list(zip(*[ln.split(",") for ln in lines[1:]]))
    for name in ("unit_id", "label"):
        units[name] = np.array(cols[header.index(name)])
    return units


def build_report(run_dir: Path, ds=None, encoders=None) -> Path:
    """Draw every figure and write report.html from the files of a finished run."""
    run = Path(run_dir)
    m = load_json(run / "metrics.json")
    units = _units(run)
    comps = load_npz(run / "decomposition.npz")
    learner = load_json(run / "learner.json")
    figdir = run / "figures"
    figs: list[tuple[Path, str]] = []

    enc = m["encoders"]
    inh = m["inherent"]
    figs.append((F.scores_figure(units, figdir / "scores_r.png"),
                 f"Median test r: ridge {enc['ridge']['median_r']:.3f}, linear control "
                 f"{enc['mlp_linear']['median_r']:.3f}, nonlinear {enc['mlp_relu']['median_r']:.3f}; "
                 f"learned inherent {inh['learned']['median_r']:.3f}, mean Jacobian "
                 f"{inh['mean_jacobian']['median_r']:.3f}."))
    figs.append((F.r2_agreement_figure(units, figdir / "r2_agreement.png"),
                 "R² maps of the inherent components against the nonlinear encoder's: "
                 f"r = {inh['learned']['r2_map_corr_with_nonlinear']:.3f} (learned), "
                 f"{inh['mean_jacobian']['r2_map_corr_with_nonlinear']:.3f} (mean Jacobian)."))
    tiers = m["tiers"]["nonlinearity"]
    figs.append((F.tier_figure(units, figdir / "indices_by_tier.png"),
                 "Median nonlinear fraction by label: " +
                 ", ".join(f"{k} {v:.3f}" for k, v in tiers.items()) + "."))
    hist = {}
    best = {}
    for name in ("mlp_linear", "mlp_relu"):
        p = run / "encoders" / f"{name}.json"
        if p.exists():
            info = load_json(p)
            hist[name], best[name] = info["history"], info["best_epoch"]
    if hist:
        figs.append((F.encoder_training_figure(hist, best, figdir / "encoder_training.png"),
                     "Validation loss per epoch; best epochs " +
                     ", ".join(f"{k} {v}" for k, v in best.items()) + "."))
    if learner.get("history"):
        fin = learner["history"][-1]
        figs.append((F.learner_figure(learner["history"], figdir / "learner.png"),
                     f"Learner: final ‖ΔJ‖₁ {fin['bias_l1']:.3g} vs mean-Jacobian split "
                     f"{fin['mean_split_l1']:.3g} (collapse below half); cos with mean "
                     f"{fin['cos_inherent_mean']:.3f}."))
    if "afd" in m["indices"]:
        figs.append((F.afd_seed_figure(units, figdir / "afd_seeds.png"),
                     "AFD depends on the t-SNE ordering: mean rank agreement between seeds "
                     f"{m['indices']['afd']['seed_rank_agreement']:.3f}."))
    if "ground_truth" in m:
        gt = m["ground_truth"]
        planted = None
        if ds is not None and ds.ground_truth is not None:
            planted = ds.ground_truth.planted_linear
        elif (run / "planted_linear.npy").exists():
            planted = np.load(run / "planted_linear.npy")
        if planted is not None and not (run / "planted_linear.npy").exists():
            np.save(run / "planted_linear.npy", planted)
        figs.append((F.ground_truth_figure(units, comps, planted, figdir / "ground_truth.png"),
                     f"Index vs planted strength: Spearman {gt['nonlinearity_vs_planted_spearman']:.3f}; "
                     f"inherent vs planted r: learned {gt['learned']['inherent_vs_planted_r']:.3f}, "
                     f"mean Jacobian {gt['mean_jacobian']['inherent_vs_planted_r']:.3f}."))

    warns = list(learner.get("warnings", []))
    const = [k for k in ("r_mlp_relu",) if k in units and np.any(units[k] == 0)]
    if const:
        warns.append("some units score exactly 0 (constant responses or predictions)")
    versions = load_json(run / "versions.json")
    dsinfo = load_json(run / "dataset.json")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>linbridge report: "
             f"{html.escape(dsinfo['name'])}</title><style>{CSS}</style></head><body>",
             f"<h1>LinBridge report — {html.escape(dsinfo['name'])}</h1>"]
    parts.append("<h2>Run</h2>" + _table(
        [["samples (train/val/test)", f"{dsinfo['n_train']}/{dsinfo['n_val']}/{dsinfo['n_test']}"],
         ["units", dsinfo["n_units"]], ["features", dsinfo["n_features"]],
         ["unit labels", json.dumps(dsinfo["unit_labels"])], ["seed", dsinfo["seed"]],
         ["timing (s)", json.dumps({k: round(v, 1) for k, v in m.get("timing_seconds", {}).items()})]]
        + [[k, v] for k, v in versions.items()], ["", ""]))
    if warns:
        parts.append("<h2>Warnings</h2>" + "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in warns))
    rows = [[n, v["median_r"], v["median_r2"], v["fraction_significant"], v.get("best_epoch", "")]
            for n, v in enc.items()]
    parts.append("<h2>Encoders (test set)</h2>" + _table(
        rows, ["encoder", "median r", "median R²", "fraction significant (BH q<.05)", "best epoch"]))
    rows = [[n, v["median_r"], v["median_r2"], v["r2_map_corr_with_nonlinear"],
             m.get("ground_truth", {}).get(n, {}).get("inherent_vs_planted_r", "")]
            for n, v in inh.items()]
    parts.append("<h2>Inherent components as linear encoders</h2>" + _table(
        rows, ["component", "median r", "median R²", "R²-map r vs nonlinear", "r vs planted"]))
    idx = m["indices"]
    rows = [[k, v["median"], v["p10"], v["p90"]] for k, v in idx.items()
            if isinstance(v, dict) and "median" in v]
    parts.append("<h2>Nonlinearity indices</h2>" + _table(rows, ["index", "median", "p10", "p90"]))
    parts.append("<p>Default index: Jacobian nonlinear fraction Σ_k‖J_k[v]−J̄[v]‖² / Σ_k‖J_k[v]‖² "
                 "(0 for linear units, ≤ 1; unlike JNE it is not blind to units whose Jacobian "
                 "switches symmetrically).</p>")
    parts.append("<h2>By label</h2>" + _table(
        [[k, v, m["tiers"]["jne"].get(k, "")] for k, v in tiers.items()],
        ["label", "median nonlinear fraction", "median JNE"]))
    parts.append("<h2>Figures</h2>")
    for path, caption in figs:
        parts.append(f"<figure>{_img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    cfg_text = (run / "config.yaml").read_text()
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(cfg_text)}</pre></body></html>")
    return save_bytes(run / "report.html", "\n".join(parts).encode())
