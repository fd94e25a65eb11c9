"""The LinBridge learner against the sample-mean Jacobian, side by side.

For each dataset (the planted synthetic one and the Cowley 2023 V4 session): the
pipeline's encoders (ReLU MLP, its linear control, ridge) are trained, the ReLU MLP's
Jacobians on the test images are the source, and the learned inherent component is set
beside the mean Jacobian (and the median, the least-squares distillation, ridge and the
linear control) on

* prediction on the test set when fitted on the same test set (circular: the paper's way),
* the R^2-map agreement with the nonlinear model,
* the held-out half: fit on one half of the test images, score on the other half and on
  the validation images (``bridge.evaluation.heldout_split_scores``),
* split-half reliability, and stability across batch sizes and seeds
  (``bridge.evaluation.stability``),
* on the synthetic data, the correlation with the planted linear component.

Usage:
    python benchmarks/learner_vs_mean.py --out runs/bench [--datasets synthetic cowley2023-v4]
        [--data-home /work/shared/data] [--quick]
Writes OUT/<dataset>.json and OUT/summary.md, and prints the summary.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from linbridge.bridge import (CollapseWarning, LinBridge, elementwise_median,
                              heldout_split_scores, least_squares_distillation, mean_jacobian,
                              stability)
from linbridge.config import DATASET_DEFAULTS
from linbridge.data import load_dataset
from linbridge.encoders import MLPEncoder, RidgeEncoder
from linbridge.jacobian import ModelJacobianSource
from linbridge.metrics import correlate_maps, pearson_r, r2_score
from linbridge.validation._core import jsonable


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def encoders(ds, out: Path, seed: int, quick: bool) -> dict:
    """Train (or reload from OUT) the pipeline's three encoders."""
    Xtr, Ytr = ds.part("train")
    Xv, Yv = ds.part("val")
    defaults = DATASET_DEFAULTS.get(ds.meta.get("registry_name", ""), {}).get("encoders", {})
    encs = {}
    for name, act in (("mlp_relu", "relu"), ("mlp_linear", "identity")):
        params = {"activation": act, "seed": seed, "progress": False,
                  **defaults.get(name, {}), **({"hidden": 128} if quick else {})}
        enc = MLPEncoder(**params)
        path = out / f"{ds.name}_{name}.pt"
        if path.exists():
            enc.load_module(ds.n_features, ds.n_units, torch.load(path, weights_only=True))
        else:
            log(f"training {name} on {ds.name}")
            enc.fit(Xtr, Ytr, Xv, Yv)
            torch.save(enc.module_.state_dict(), path)
        encs[name] = enc
    path = out / f"{ds.name}_ridge.npy"
    ridge = RidgeEncoder()
    if path.exists():
        ridge.coef_ = np.load(path)
    else:
        log(f"fitting ridge on {ds.name}")
        ridge.fit(Xtr, Ytr, Xv, Yv)
        np.save(path, ridge.coef_)
    encs["ridge"] = ridge
    return encs


#: learner configurations compared (the default, the guard off, and pushed further)
VARIANTS = {"learned": {}, "learned_unguarded": {"min_ess_fraction": 0.0},
            "learned_long": {"n_epochs": 100, "lr": 1e-3}}


def corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def run_dataset(name: str, args) -> dict:
    params = {"seed": args.seed} if name == "synthetic" else {}
    ds = load_dataset(name, args.data_home, args.cache_dir, progress=False, **params)
    ds.meta["registry_name"] = name
    out = Path(args.out)
    encs = encoders(ds, out, args.seed, args.quick)
    X_test, Y_test = ds.part("test")
    X_val, Y_val = ds.part("val")
    model = encs["mlp_relu"].module_
    source = ModelJacobianSource(model, X_test).materialize()
    F_test = source.outputs().double().numpy()
    F_val = encs["mlp_relu"].predict(X_val).astype(np.float64)
    lin = ModelJacobianSource(encs["mlp_linear"].module_, X_test[:1]).block(slice(None))[0]
    fixed = {"ridge": encs["ridge"].coef_.T, "mlp_linear": lin.double().numpy()}
    learner = {"seed": args.seed, **({"n_epochs": 5} if args.quick else {})}
    res: dict = {"dataset": ds.summary(),
                 "learner_params": LinBridge(**learner).summary()["params"]}

    log(f"{name}: full-test fits (circular, as in the paper)")
    comps = {"mean_jacobian": mean_jacobian(source), "median": elementwise_median(source),
             "ls_distillation": least_squares_distillation(X_test, source.outputs()), **fixed}
    res["learner_fit"] = {}
    for vname, extra in VARIANTS.items():
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CollapseWarning)
            lb = LinBridge(**{"progress": False, **learner, **extra}).fit(source)
        comps[vname] = lb.inherent_
        res["learner_fit"][vname] = {
            "params": extra, "seconds": time.perf_counter() - t, "ess_fraction": lb.ess_fraction_,
            "warnings": [str(w.message) for w in caught], "final_epoch": lb.history_[-1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r2_nl = r2_score(Y_test, F_test)
        res["nonlinear_model_test"] = {"median_r": float(np.median(pearson_r(Y_test, F_test))),
                                       "median_r2": float(np.median(r2_nl))}
        circ = {}
        for k, J in comps.items():
            pred = X_test.astype(np.float64) @ J.T
            r2 = r2_score(Y_test, pred)
            circ[k] = {"median_r": float(np.median(pearson_r(Y_test, pred))),
                       "median_r2": float(np.median(r2)),
                       "r2_map_corr_with_nonlinear": correlate_maps(r2, r2_nl),
                       "r_with_mean_jacobian": corr(J, comps["mean_jacobian"])}
            if ds.ground_truth is not None:
                circ[k]["r_with_planted"] = corr(J, ds.ground_truth.planted_linear)
    res["circular"] = circ

    log(f"{name}: held-out halves")
    ho = heldout_split_scores(source, X_test, Y_test, learner_params=learner, fixed=fixed,
                              X_val=X_val, Y_val=Y_val, F_val=F_val, seed=args.seed)
    for vname, extra in VARIANTS.items():
        if vname == "learned":
            continue
        hv = heldout_split_scores(source, X_test, Y_test, learner_params={**learner, **extra},
                                  methods=("learned",), seed=args.seed, X_val=X_val,
                                  Y_val=Y_val, F_val=F_val)
        ho["methods"][vname] = hv["methods"]["learned"]
        ho["per_unit"][vname] = hv["per_unit"]["learned"]
    # ridge is fitted on training + validation images (RidgeEncoder): its val score is in-sample
    ho["methods"]["ridge"]["val"] = {k: None for k in ho["methods"]["ridge"]["val"]}
    res["heldout"] = {k: v for k, v in ho.items() if k != "per_unit"}
    pu = ho["per_unit"]
    res["heldout"]["paired_vs_mean"] = {
        v: {"median_delta_r": float(np.median(pu[v]["r"] - pu["mean_jacobian"]["r"])),
            "fraction_units_better_r": float(np.mean(pu[v]["r"] > pu["mean_jacobian"]["r"]))}
        for v in VARIANTS}
    log(f"{name}: stability across batch sizes and seeds")
    res["stability"] = stability(source, learner_params=learner,
                                 seeds=(args.seed, args.seed + 1, args.seed + 2))
    return jsonable(res)


def summary(results: dict) -> str:
    lines = []
    for name, r in results.items():
        c, ho, st = r["circular"], r["heldout"]["methods"], r["stability"]
        lines.append(f"### {name} ({r['dataset']['n_test']} test images, "
                     f"{r['dataset']['n_units']} units, {r['dataset']['n_features']} features)\n")
        nl = r["nonlinear_model_test"]
        fits = "; ".join(f"{v} {f['params'] or 'defaults'}: ESS {f['ess_fraction']:.2f} of the "
                         f"samples, {len(f['warnings'])} warning(s)"
                         for v, f in r["learner_fit"].items())
        lines.append(f"Nonlinear model on test: median r {nl['median_r']:.3f}, "
                     f"median R² {nl['median_r2']:.3f}. Learner fits on all test images: "
                     f"{fits}.\n")
        planted = "r_with_planted" in c["learned"]
        hdr = ("| component | test r (circ.) | R²-map agr. (circ.) | held-out r | held-out R² "
               "| held-out R²-map agr. | val r | split-half r |"
               + (" planted r |" if planted else ""))
        lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
        for k in sorted(c, key=lambda k: (k not in VARIANTS, k not in ("mean_jacobian",))):
            h = ho.get(k, {})
            hh, vv = h.get("heldout", {}), h.get("val", {})
            f = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
            row = (f"| {k} | {f(c[k]['median_r'])} | {f(c[k]['r2_map_corr_with_nonlinear'])} | "
                   f"{f(hh.get('median_r'))} | {f(hh.get('median_r2'))} | "
                   f"{f(hh.get('r2_map_corr_with_nonlinear'))} | {f(vv.get('median_r'))} | "
                   f"{f(h.get('split_half_r'))} |")
            if planted:
                row += f" {f(c[k].get('r_with_planted'))} |"
            lines.append(row)
        for v, d in r["heldout"]["paired_vs_mean"].items():
            lines.append(f"Held-out, per unit: median r({v}) − r(mean) = "
                         f"{d['median_delta_r']:+.5f}; {v} better on "
                         f"{100 * d['fraction_units_better_r']:.0f}% of units.")
        lines.append("(ridge's val r is omitted: RidgeEncoder fits training + validation "
                     "images.)")
        bs = ", ".join(f"{k}: {v['r_with_full_batch']:.4f}" for k, v in st["batch_size"].items())
        sd = ", ".join(f"{k}: {v['r_with_full_batch']:.4f}" for k, v in st["seed"].items())
        lines.append(f"\nStability of the default learner (r with the full-batch fit, "
                     f"N = {st['n_samples']}): batch size {bs}; seeds {sd}; "
                     f"mean pairwise r between seeds "
                     f"{st.get('seed_pairwise_mean_r', float('nan')):.4f}. Mean Jacobian: "
                     f"{st['mean_jacobian']}.\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--datasets", nargs="+", default=["synthetic", "cowley2023-v4"])
    ap.add_argument("--data-home", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny encoders and few epochs (smoke)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.datasets:
        t = time.perf_counter()
        results[name] = run_dataset(name, args)
        results[name]["seconds"] = time.perf_counter() - t
        (out / f"{name}.json").write_text(json.dumps(results[name], indent=2) + "\n")
    text = summary(results)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
