"""A self-contained report.html: figures embedded as base64 PNG, no network assets.

``build_report`` reads only the files of a finished run (metrics.json, units.npz/csv,
learner.json, analysis.json/.npz, ...), so ``linbridge report RUN_DIR`` rebuilds the
report without the data, the models or any recomputation. A tiny inline script records,
after the page has loaded, how many images the browser failed to decode
(``<body data-images-broken=...>``), which scripts/render_report.py reads back from a
headless browser.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path

import numpy as np

from ..rundir import load_json, load_npz, save_bytes
from . import figures as F

CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;
padding:0 1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}figure{margin:1.2em 0}
figcaption{font-size:13px;color:#333}img{max-width:100%}h2{border-bottom:1px solid #ddd;
margin-top:1.6em}.warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em}
.note{color:#555;font-size:13px}pre{font-size:12px;background:#f7f7f7;padding:.6em;
overflow:auto}.ok{color:#1a7f37}.bad{color:#b42318}"""

IMAGE_CHECK = """<script>
window.addEventListener('load', function () {
  var im = document.images, broken = 0;
  for (var i = 0; i < im.length; i++) {
    if (!im[i].complete || im[i].naturalWidth === 0) broken++;
  }
  var b = document.body;
  b.setAttribute('data-images-total', im.length);
  b.setAttribute('data-images-broken', broken);
  b.setAttribute('data-page-height', document.documentElement.scrollHeight);
  var el = document.getElementById('image-check');
  if (el) {
    el.textContent = (im.length - broken) + ' of ' + im.length + ' figures rendered';
    el.className = broken ? 'bad' : 'ok';
  }
});
</script>"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v):
        return f"[{_fmt(float(v[0]))}, {_fmt(float(v[1]))}]"
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


class _Report:
    def __init__(self):
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, s: str) -> None:
        self.parts.append(s)

    def figure(self, path: Path | None, caption: str) -> None:
        if path is None:
            return
        self.n_figures += 1
        self.add(f"<figure>{_img(path)}<figcaption><b>Figure {self.n_figures}.</b> "
                 f"{html.escape(caption)}</figcaption></figure>")

    def note(self, text: str) -> None:
        self.add(f"<p class='note'>{html.escape(text)}</p>")


def _pair_rows(res: dict) -> list[list]:
    rows = []
    for p in res.get("pairs", []):
        rows.append([f"{p['lower']} < {p['higher']}", p["p"], p["p_holm"], p["delta"],
                     p["delta_ci"], p.get("median_diff", float("nan")),
                     p.get("median_diff_ci", [float("nan")] * 2), p["n_lo"], p["n_hi"]])
    return rows


def _tier_section(R: _Report, a: dict, units: dict, arr: dict, figdir: Path) -> None:
    idx = {k: v for k, v in _indices_from(units).items() if k in a["index_definitions"]}
    labels = arr.get("tier_label", units["label"])
    order = a["tier_order"]
    tt = a.get("tier_tests")
    R.add("<h2>Indices by tier</h2>" if tt else "<h2>Indices per unit (one area)</h2>")
    R.add(_table([[k, v] for k, v in a["index_definitions"].items()], ["index", "definition"]))
    if tt:
        res = tt["indices"]
        R.figure(F.tier_index_figure(idx, labels, order, res, figdir / "indices_by_tier.png"),
                 _tier_reading(res, order))
        R.add("<h3>One-sided tests (later tier larger), all units of each tier</h3>")
        R.note("Mann–Whitney U per pair (Holm over the pairs of one index), Jonckheere–"
               "Terpstra trend over the tiers in order; effect size Cliff's δ = 2·AUC − 1 with "
               f"95% percentile bootstrap CI ({_nboot(res)} resamples of units within tiers); "
               "median difference (higher − lower) with its CI.")
        rows = []
        for name, r in res.items():
            med = ", ".join(f"{t} {_fmt(v['median'])}" for t, v in r["per_tier"].items())
            rows.append([name, med, (r["trend"] or {}).get("p", float("nan")),
                         (r["trend"] or {}).get("auc", float("nan"))])
        R.add(_table(rows, ["index", "median per tier", "trend p (JT)", "trend AUC"]))
        rows = []
        for name, r in res.items():
            rows += [[name] + row for row in _pair_rows(r)]
        R.add(_table(rows, ["index", "pair", "p", "p (Holm)", "Cliff's δ", "δ 95% CI",
                            "median diff", "diff 95% CI", "n lower", "n higher"]))
        # signal-to-noise control
        R.add("<h3>Signal-to-noise control: the same tests within strata, and adjusted</h3>")
        R.note(f"Stratified: units split into {tt.get('n_strata', '?')} quantile strata of each "
               "control (over the units of the tested tiers); U and JT statistics summed over "
               "strata, δ pooled within strata, CIs by resampling within (tier, stratum). Coarse "
               "strata leave some confounding inside each stratum. Adjusted: the same tests on "
               "the residuals of one cubic fit of the index on the control's rank, pooled over "
               "tiers (removes a shared dependence on the control; conservative when the tier "
               "effect is collinear with it).")
        ctrl_arr = {c: arr[f"control_{c}"] for c in tt["controls"] if f"control_{c}" in arr}
        if ctrl_arr and "nonlinearity" in idx:
            R.figure(F.snr_figure(idx["nonlinearity"], "nonlinearity", labels, order, ctrl_arr,
                                  {c: tt["controls"][c]["edges"] for c in ctrl_arr},
                                  figdir / "snr_control.png"), _snr_reading(tt))
        for cname, by_index in tt["stratified"].items():
            c = tt["controls"][cname]
            R.add(f"<h4>within strata of {html.escape(cname)} — "
                  f"{html.escape(a['controls'].get(cname, ''))}</h4>")
            R.add(_table([[t, c["per_tier_median"].get(t, float("nan")),
                           " / ".join(str(x) for x in c["counts"].get(t, [])),
                           ] for t in order],
                         ["tier", f"median {cname}", "units per stratum"]))
            adj = tt.get("adjusted", {}).get(cname, {})
            rows = []
            for name, r in by_index.items():
                tr = r.get("trend") or {}
                ra = adj.get(name, {})
                apairs = {(p["lower"], p["higher"]): p for p in ra.get("pairs", [])}
                for row, p in zip(_pair_rows(r), r.get("pairs", [])):
                    q = apairs.get((p["lower"], p["higher"]), {})
                    rows.append([name, tr.get("p", float("nan"))] + row[:5] +
                                [(ra.get("trend") or {}).get("p", float("nan")),
                                 q.get("p_holm", float("nan")), q.get("delta", float("nan"))])
            R.add(_table(rows, ["index", "stratified trend p", "pair", "p", "p (Holm)",
                                "Cliff's δ", "δ 95% CI", "adjusted trend p",
                                "adjusted p (Holm)", "adjusted δ"]))
    else:
        R.note(a.get("tier_tests_note", "no tier tests"))
        R.figure(F.tier_index_figure(idx, labels, order or sorted(set(labels.tolist())), None,
                                     figdir / "indices_by_tier.png"),
                 _one_area_reading(a, labels))
    # per-unit distributions (always)
    R.add("<h3>Per-unit distributions</h3>")
    ctrls = list(a.get("controls", {}))
    rows = [[k, d["n_finite"], d["median"], [d["q25"], d["q75"]], [d["p10"], d["p90"]]] +
            [d.get(f"spearman_with_{c}", float("nan")) for c in ctrls]
            for k, d in a["distributions"].items()]
    R.add(_table(rows, ["index", "units", "median", "IQR", "p10–p90"] +
                 [f"Spearman with {c}" for c in ctrls]))
    if not tt and "r2_mlp_relu" in units:
        R.figure(F.index_vs_score_figure(idx, units["r2_mlp_relu"],
                                         figdir / "indices_vs_r2.png"),
                 "Each index against the unit's test R² (nonlinear encoder): "
                 + "; ".join(f"{k} ρ = {_fmt(d.get('spearman_with_test_r2_nonlinear'))}"
                             for k, d in a["distributions"].items())
                 + " (an index that tracks R² partly measures signal-to-noise).")


def _nboot(res: dict) -> int:
    for r in res.values():
        for p in r.get("pairs", []):
            return int(p.get("n_boot", 0))
    return 0


def _indices_from(units: dict) -> dict[str, np.ndarray]:
    from ..analysis.run import per_unit_indices

    return per_unit_indices(units)


def _tier_reading(res: dict, order: list[str]) -> str:
    r = res.get("nonlinearity") or next(iter(res.values()))
    name = "nonlinear fraction" if "nonlinearity" in res else next(iter(res))
    meds = " < ".join(f"{t} {_fmt(r['per_tier'][t]['median'])}" for t in order
                      if t in r["per_tier"])
    tr = r.get("trend") or {}
    adj = [p for p in r.get("pairs", []) if order.index(p["higher"]) - order.index(p["lower"]) == 1]
    worst = max((p["p_holm"] for p in adj), default=float("nan"))
    held = [k for k, v in res.items() if (v.get("trend") or {}).get("p", 1) < 0.01]
    return (f"Median {name} by tier (hypothesised order {' < '.join(order)}): {meds}; trend "
            f"p = {_fmt(tr.get('p', float('nan')))}, largest Holm p of adjacent pairs "
            f"{_fmt(worst)}. Trend p < 0.01 for {len(held)} of {len(res)} indices "
            f"({', '.join(held) or 'none'}).")


def _snr_reading(tt: dict) -> str:
    bits = []
    for cname, by_index in tt["stratified"].items():
        r = by_index.get("nonlinearity") or next(iter(by_index.values()))
        tr = r.get("trend") or {}
        d = min((p["delta"] for p in r.get("pairs", [])), default=float("nan"))
        adj = tt.get("adjusted", {}).get(cname, {})
        ra = adj.get("nonlinearity") or next(iter(adj.values()), {})
        bits.append(f"within {cname} strata trend p = {_fmt(tr.get('p', float('nan')))}, "
                    f"smallest pairwise δ {_fmt(d)}; adjusted for {cname} trend p = "
                    f"{_fmt((ra.get('trend') or {}).get('p', float('nan')))}")
    return ("Nonlinear fraction against the signal-to-noise controls (dashed: strata "
            "edges); " + "; ".join(bits) + ".")


def _one_area_reading(a: dict, labels) -> str:
    d = a["distributions"]
    lab = sorted(set(np.asarray(labels).astype(str).tolist()))
    nl = d.get("nonlinearity", {})
    return (f"One area ({', '.join(lab)}, {nl.get('n_finite', '?')} units): per-unit "
            f"distributions. Median nonlinear fraction {_fmt(nl.get('median', float('nan')))} "
            f"(IQR {_fmt(nl.get('q25', float('nan')))}–{_fmt(nl.get('q75', float('nan')))}), "
            f"median JNE {_fmt(d.get('jne', {}).get('median', float('nan')))}, median Euler "
            f"share {_fmt(d.get('euler_bias_share', {}).get('median', float('nan')))}.")


def _afd_section(R: _Report, a: dict, arr: dict, figdir: Path) -> None:
    rob = a.get("afd_robustness")
    if not rob:
        return
    R.add("<h2>AFD robustness</h2>")
    R.note(rob["note"] + ". " + a.get("afd_orderings_note", ""))
    names = rob["orderings"]
    afds = {n: arr[f"afd_{i}"] for i, n in enumerate(names) if f"afd_{i}" in arr}
    M = np.asarray(rob["rank_agreement"], dtype=float)
    summ = rob["summary"]
    tsne = [n for n in names if n.startswith("t-SNE")]
    other = [n for n in names if not n.startswith("t-SNE")]
    reading = "Median AFD: " + ", ".join(f"{n} {_fmt(summ[n]['median'])}" for n in names)
    if "random (null mean)" in summ:
        reading += f"; random-order null {_fmt(summ['random (null mean)']['median'])}"
    if tsne:
        frac = np.mean([summ[n].get("fraction_above_random_q95", np.nan) for n in tsne])
        reading += (f". {100 * frac:.0f}% of units exceed their random-order 95th percentile "
                    "along t-SNE")
    if "tsne_seed_rank_agreement" in rob:
        reading += f"; t-SNE seeds agree at mean Spearman {_fmt(rob['tsne_seed_rank_agreement'])}"
    if tsne and other:
        i0 = names.index(tsne[0])
        reading += ("; t-SNE vs " + ", ".join(f"{o} {_fmt(M[i0, names.index(o)])}"
                                               for o in other))
    R.figure(F.afd_robustness_figure(afds, arr.get("afd_null_mean"), M,
                                     figdir / "afd_robustness.png"), reading + ".")
    tiers = list(next(iter(rob["per_tier_median"].values()), {}).keys())
    rows = []
    for n in list(names) + (["random (null mean)"] if "random (null mean)" in summ else []):
        s = summ[n]
        per = rob["per_tier_median"].get(n, {})
        rows.append([n, s["median"], s.get("fraction_above_random_q95", float("nan")),
                     s.get("median_ratio_to_random", float("nan"))] +
                    [per.get(t, float("nan")) for t in tiers])
    if rob.get("jne_per_tier_median"):
        rows.append(["JNE (ordering-free)", a["distributions"]["jne"]["median"], "", ""] +
                    [rob["jne_per_tier_median"].get(t, float("nan")) for t in tiers])
    R.add(_table(rows, ["ordering", "median AFD", "fraction > random q95",
                        "median AFD / random"] + [f"median {t}" for t in tiers]))


def _stimulus_section(R: _Report, a: dict, arr: dict, thumbs: dict, figdir: Path) -> None:
    cl = a.get("clusters")
    if not cl:
        return
    R.add("<h2>Stimuli</h2>")
    J = np.asarray(cl["mean_jne_ss"], dtype=float)
    cm = np.nanmean(J, axis=1) if J.size else J
    sil = dict(zip(cl["k_values"], cl["silhouette"]))
    reading = (f"k = {cl['k']} clusters by silhouette ({_fmt(sil.get(cl['k'], float('nan')))}; "
               f"sizes {min(cl['sizes'])}–{max(cl['sizes'])})")
    if np.isfinite(cm).any():
        hi, lo = int(np.nanargmax(cm)), int(np.nanargmin(cm))
        reading += (f"; mean JNE-SS highest in cluster {hi} ({_fmt(cm[hi])}), lowest in "
                    f"cluster {lo} ({_fmt(cm[lo])}), a ratio of {_fmt(cm[hi] / cm[lo])}"
                    if cm[lo] > 0 else "")
    R.figure(F.clusters_figure(arr["tsne2d"], arr["clusters"], cl["k_values"], cl["silhouette"],
                               cl["k"], J, cl["tiers"], figdir / "stimulus_clusters.png"),
             reading + ".")
    order = np.argsort(-np.nan_to_num(cm, nan=-np.inf))
    rows = [[int(c), cl["sizes"][c]] + list(J[c]) for c in order]
    R.add("<details><summary>mean JNE-SS per cluster and tier (sorted)</summary>" +
          _table(rows, ["cluster", "images"] + [f"{t}" for t in cl["tiers"]]) + "</details>")
    ext = a.get("extreme_bias", {})
    R.note("Mapping bias per image: " + ext.get("definition", ""))
    rows = []
    for t, e in ext.get("per_tier", {}).items():
        rows.append([t, " ".join(e["highest_sample_ids"][:5]), e["highest_bias"][:1] and
                     e["highest_bias"][0], " ".join(e["lowest_sample_ids"][:5]),
                     e["lowest_bias"][:1] and e["lowest_bias"][0]])
    R.add(_table(rows, ["tier", "highest-bias images", "max", "lowest-bias images", "min"]))
    if thumbs:
        rws = []
        for j, t in enumerate(ext.get("tiers", [])):
            e = ext["per_tier"][t]
            for which in ("highest", "lowest"):
                key = f"{j}_{which}"
                if key in thumbs:
                    rws.append((f"{t}\n{which}", thumbs[key],
                                [f"{b:.2f}" for b in e[f"{which}_bias"]]))
        if rws:
            t0 = ext["tiers"][0]
            e0 = ext["per_tier"][t0]
            stat = ""
            if "luminance" in arr:
                from scipy.stats import spearmanr

                sb = arr["sample_bias"][:, 0]
                rl = spearmanr(arr["luminance"], sb, nan_policy="omit")[0]
                rc = spearmanr(arr["contrast"], sb, nan_policy="omit")[0]
                stat = (f"; over all test images the {t0} bias has Spearman {_fmt(float(rl))} "
                        f"with luminance and {_fmt(float(rc))} with RMS contrast")
            R.figure(F.thumbnails_figure(rws, figdir / "extreme_bias_images.png",
                                         "images with the highest and lowest mapping bias "
                                         "(relative to the unit's mean)"),
                     f"Highest vs lowest mapping bias: {t0} {_fmt(e0['highest_bias'][0])}× vs "
                     f"{_fmt(e0['lowest_bias'][0])}× the typical image{stat}.")
        ex = cl.get("exemplars", {})
        rws = [(f"cluster {c}\nJNE-SS {v['mean_jne_ss']:.3g}", thumbs[f"cluster_{c}"], [])
               for c, v in ex.items() if f"cluster_{c}" in thumbs]
        if rws:
            which = ("every cluster, by mean JNE-SS" if len(rws) >= cl["k"] else
                     "the three clusters with the highest and the three with the lowest mean "
                     "JNE-SS")
            R.figure(F.thumbnails_figure(rws, figdir / "cluster_exemplars.png",
                                         "images nearest the centre of each cluster shown, "
                                         "highest mean JNE-SS first"),
                     f"Cluster exemplars ({which}; up to four images nearest the centre).")
    else:
        R.note(a.get("images_note", "no images in the analysis: no thumbnails"))


def build_report(run_dir: Path, ds=None, encoders=None) -> Path:
    """Draw every figure and write report.html from the files of a finished run.

    ``ds`` is used only for what a run directory of an older version lacks (the planted
    linear component of synthetic data, saved here on first use); ``encoders`` is unused
    (kept for the pipeline's call).
    """
    run = Path(run_dir)
    m = load_json(run / "metrics.json")
    units = _units(run)
    comps = load_npz(run / "decomposition.npz")
    learner = load_json(run / "learner.json")
    versions = load_json(run / "versions.json")
    dsinfo = load_json(run / "dataset.json")
    a = load_json(run / "analysis.json") if (run / "analysis.json").exists() else None
    arr = load_npz(run / "analysis.npz") if (run / "analysis.npz").exists() else {}
    thumbs = load_npz(run / "analysis_images.npz") if (run / "analysis_images.npz").exists() \
        else {}
    figdir = run / "figures"
    for old in figdir.glob("*.png") if figdir.exists() else []:
        old.unlink()  # figures of an earlier build must not linger
    R = _Report()
    enc, inh, idx = m["encoders"], m["inherent"], m["indices"]
    cfg_text = (run / "config.yaml").read_text()

    # -- summary ----------------------------------------------------------------------
    R.add("<!doctype html><html><head><meta charset='utf-8'>"
          f"<title>linbridge report: {html.escape(dsinfo['name'])}</title>"
          f"<style>{CSS}</style></head><body>")
    R.add(f"<h1>LinBridge report — {html.escape(dsinfo['name'])}</h1>")
    R.add("<p>Image check: <span id='image-check'>not run (it runs when the page is opened in "
          "a browser with scripts on; scripts/render_report.py does it headless)</span></p>")
    seeds = {"run seed": dsinfo.get("seed")}
    afd_seeds = idx.get("afd", {}).get("tsne_seeds")
    if afd_seeds is not None:
        seeds["AFD t-SNE seeds"] = afd_seeds
    summary = [
        ["dataset", dsinfo["name"]],
        ["samples (train/val/test)", f"{dsinfo['n_train']}/{dsinfo['n_val']}/{dsinfo['n_test']}"],
        ["units", dsinfo["n_units"]], ["features", dsinfo["n_features"]],
        ["unit labels", json.dumps(dsinfo["unit_labels"])],
        ["seeds", json.dumps(seeds)],
        ["config (sha256 of config.yaml)", hashlib.sha256(cfg_text.encode()).hexdigest()[:16]],
        ["learner collapsed", str(learner.get("collapsed"))],
        ["timing (s)", json.dumps({k: round(v, 1)
                                   for k, v in m.get("timing_seconds", {}).items()})],
    ]
    if a is not None:
        summary.append(["analysis (s)", round(a.get("seconds", float("nan")), 1)])
    R.add("<h2>Run</h2>" + _table(summary + [[k, v] for k, v in versions.items()], ["", ""]))

    # -- warnings ---------------------------------------------------------------------
    warns = [f"data: {w}" for w in dsinfo.get("warnings", [])]
    warns += [f"learner: {w}" for w in learner.get("warnings", [])]
    if learner.get("collapsed"):
        warns.append("the LinBridge learner collapsed (its mapping bias fell below half of the "
                     "mean-Jacobian split): read the learned split with care")
    if a is not None:
        warns += list(a.get("warnings", []))
    else:
        warns.append("no analysis.json in the run directory (a run of an older version): tier "
                     "tests, AFD robustness and stimulus analyses are missing")
        const = int(np.sum(np.asarray(units.get("r_mlp_relu", [])) == 0))
        if const:
            warns.append(f"{const} units score r = 0 exactly (constant responses or predictions)")
    if warns:
        R.add("<h2>Warnings</h2>" + "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in warns))

    # -- predictions --------------------------------------------------------------------
    R.add("<h2>Encoders and inherent components (test set)</h2>")
    R.figure(F.scores_figure(units, figdir / "scores.png"),
             f"Median test r: ridge {enc['ridge']['median_r']:.3f}, linear control "
             f"{enc['mlp_linear']['median_r']:.3f}, nonlinear {enc['mlp_relu']['median_r']:.3f}; "
             f"inherent components as linear encoders: learned {inh['learned']['median_r']:.3f}, "
             f"mean Jacobian {inh['mean_jacobian']['median_r']:.3f} (R² axis starts at −1 at "
             "most; counts outside the axis in red).")
    R.figure(F.r2_agreement_figure(units, figdir / "r2_agreement.png"),
             "R² maps of the inherent components against the nonlinear encoder's: "
             f"r = {inh['learned']['r2_map_corr_with_nonlinear']:.3f} (learned), "
             f"{inh['mean_jacobian']['r2_map_corr_with_nonlinear']:.3f} (mean Jacobian).")
    rows = [[F.ENCODER_NAMES.get(n, n), v["median_r"], v["median_r2"], v["fraction_significant"],
             v.get("best_epoch", "")] for n, v in enc.items()]
    R.add(_table(rows, ["encoder", "median r", "median R²", "fraction significant (BH q<.05)",
                        "best epoch"]))
    rows = [[n, v["median_r"], v["median_r2"], v["r2_map_corr_with_nonlinear"],
             m.get("ground_truth", {}).get(n, {}).get("inherent_vs_planted_r", "")]
            for n, v in inh.items()]
    R.add(_table(rows, ["inherent component", "median r", "median R²", "R²-map r vs nonlinear",
                        "r vs planted"]))
    rows = [[k, v["median"], v["p10"], v["p90"]] for k, v in idx.items()
            if isinstance(v, dict) and "median" in v]
    R.add("<h3>Nonlinearity indices (all units)</h3>" +
          _table(rows, ["index", "median", "p10", "p90"]))
    R.note("Default index: Jacobian nonlinear fraction Σ_k‖J_k[v]−J̄[v]‖² / Σ_k‖J_k[v]‖² "
           "(0 for linear units, ≤ 1; unlike JNE it is not blind to units whose Jacobian "
           "switches symmetrically).")

    # -- analyses -------------------------------------------------------------------------
    if a is not None:
        _tier_section(R, a, units, arr, figdir)
        _afd_section(R, a, arr, figdir)
        _stimulus_section(R, a, arr, thumbs, figdir)
    else:
        R.add("<h2>Indices by label</h2>")
        tiers = m.get("tiers", {}).get("nonlinearity", {})
        R.add(_table([[k, v, m["tiers"]["jne"].get(k, "")] for k, v in tiers.items()],
                     ["label", "median nonlinear fraction", "median JNE"]))

    # -- brain maps -------------------------------------------------------------------------
    if "surface_vertex" in arr:
        R.add("<h2>Maps on fsaverage5</h2>")
        vals = {"nonlinear fraction": units["nonlinearity"], "test R² (nonlinear)":
                units.get("r2_mlp_relu", np.full(len(units["nonlinearity"]), np.nan))}
        path = F.surface_maps_figure(vals, arr["surface_hemi"], arr["surface_vertex"],
                                     figdir / "surface_maps.png")
        if path is None:
            R.note("nilearn is not installed: no surface maps (install the optional nilearn "
                   "package and run `linbridge report` again).")
        else:
            R.figure(path, "Nonlinear fraction and test R² on fsaverage5 (posterior views; "
                     "grey: no unit at that vertex).")

    # -- training and stability -------------------------------------------------------------
    R.add("<h2>Training, collapse monitors and stability</h2>")
    hist, best = {}, {}
    for name in ("mlp_linear", "mlp_relu"):
        p = run / "encoders" / f"{name}.json"
        if p.exists():
            info = load_json(p)
            hist[name], best[name] = info["history"], info["best_epoch"]
    if hist:
        R.figure(F.encoder_training_figure(hist, best, figdir / "encoder_training.png"),
                 "Validation loss per epoch; best epochs " +
                 ", ".join(f"{k} {v}" for k, v in best.items()) + ".")
    if learner.get("history"):
        fin = learner["history"][-1]
        state = "collapsed" if learner.get("collapsed") else "no collapse"
        R.figure(F.learner_figure(learner["history"], figdir / "learner.png"),
                 f"Learner ({state}): final ‖ΔJ‖₁ {fin['bias_l1']:.3g} vs mean-Jacobian split "
                 f"{fin['mean_split_l1']:.3g} (collapse below half); cos with the batch mean "
                 f"{fin['cos_inherent_mean']:.3f}.")
    stab = run / "stability.json"
    if stab.exists():
        path = F.stability_figure(load_json(stab), figdir / "stability.png")
        if path is None:
            R.note("stability.json is present but holds no curves in a recognised layout "
                   "({panel: {x: [...], metric: [...]}} or {panel: [{x: .., metric: ..}]}).")
        else:
            R.figure(path, "Stability of the inherent component over batch size and seed "
                     "(from stability.json).")
    else:
        R.note("no stability.json in the run directory: stability curves (batch size, seed) "
               "not drawn; set bridge.stability: true in the config (or --set "
               "bridge.stability=true) to compute them (about 10 extra learner fits).")

    # -- ground truth ---------------------------------------------------------------------
    if "ground_truth" in m and "planted_strength" in units:
        gt = m["ground_truth"]
        planted = None
        if (run / "planted_linear.npy").exists():
            planted = np.load(run / "planted_linear.npy")
        elif ds is not None and ds.ground_truth is not None:
            planted = ds.ground_truth.planted_linear
            np.save(run / "planted_linear.npy", planted)
        R.add("<h2>Ground truth (synthetic data)</h2>")
        R.figure(F.ground_truth_figure(units, comps, planted, figdir / "ground_truth.png"),
                 "Index vs planted strength: Spearman "
                 f"{gt['nonlinearity_vs_planted_spearman']:.3f}; "
                 f"inherent vs planted r: learned {gt['learned']['inherent_vs_planted_r']:.3f}, "
                 f"mean Jacobian {gt['mean_jacobian']['inherent_vs_planted_r']:.3f}.")

    R.add(f"<h2>Configuration</h2><pre>{html.escape(cfg_text)}</pre>")
    R.add(f"<p class='note'>{R.n_figures} figures.</p>")
    R.add(IMAGE_CHECK + "</body></html>")
    return save_bytes(run / "report.html", "\n".join(R.parts).encode())
