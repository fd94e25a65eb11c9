"""The known-answer suite behind ``linbridge validate``."""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ._core import Check, Timer, auc, write_results


@dataclass
class SuiteConfig:
    """Sizes of every part of the suite; ``quick()`` is the small one the tests run."""

    quick: bool = False
    seed: int = 0
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig overrides
    mlp: dict[str, Any] = field(default_factory=dict)  # MLPEncoder overrides (trained level)
    learner: dict[str, Any] = field(default_factory=dict)  # LinBridge overrides (default: none)
    sweep_grid: int = 2001
    sweep_window: int = 101
    residual_reps: int = 200
    residual_samples: int = 1000
    residual_width: int = 768
    sample_sizes: tuple[int, ...] = (10, 30, 100, 300, 1000)
    sample_reps: int = 50
    trained_ensemble: int = 3
    gabor: dict[str, Any] = field(default_factory=dict)  # make_gabor_data overrides
    gabor_mlp: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def full(cls, seed: int = 0) -> "SuiteConfig":
        return cls(seed=seed)

    @classmethod
    def quick_config(cls, seed: int = 0) -> "SuiteConfig":
        return cls(quick=True, seed=seed,
                   synthetic={"n_features": 24, "units_per_tier": 15, "n_train": 800,
                              "n_val": 200, "n_test": 160},
                   mlp={"hidden": 128, "max_epochs": 60, "patience": 5}, trained_ensemble=2,
                   learner={"n_epochs": 10},
                   sweep_grid=1001, sweep_window=51,
                   residual_reps=8, residual_samples=300, residual_width=256,
                   sample_sizes=(10, 100, 300), sample_reps=10,
                   gabor={"n_per_class": 8, "patch": 8, "n_train": 800, "n_val": 200,
                          "n_test": 200},
                   gabor_mlp={"hidden": 128, "max_epochs": 60, "patience": 5})


def jne_simulation_checks(cfg: SuiteConfig, progress: bool = False) -> list[Check]:
    """Checks 3a-3g: the JNE authors' simulations."""
    from .jne_sims import (ACTIVATIONS, FIRST_LAYERS, activation_sweep, residual_nets,
                           sample_size)

    sw = activation_sweep(cfg.sweep_grid, cfg.sweep_window)
    strip = lambda d: {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}  # noqa: E731
    checks = [
        Check("3a", "JNE sims", "sliding-window index vs |phi''| (min Pearson r over "
              "ReLU, LeakyReLU, GELU, SiLU)", min(v["pearson_jne"] for v in sw.values()), 0.9,
              ">=", "JNE", {"per_activation": {k: strip(v) for k, v in sw.items()},
                            "nf_pearson": {k: v["pearson_nf"] for k, v in sw.items()}}),
        Check("3b", "JNE sims", "sliding-window index where phi'' = 0 (max over windows)",
              max(v["max_jne_where_flat"] for v in sw.values()), 0.0, "<=", "JNE",
              {"max_nf_where_flat": max(v["max_nf_where_flat"] for v in sw.values()),
               "n_flat_windows": {k: v["n_flat_windows"] for k, v in sw.items()}}),
    ]
    rn = {fl: residual_nets(cfg.residual_reps, cfg.residual_samples, cfg.residual_width,
                            cfg.seed, progress, first_layer=fl) for fl in FIRST_LAYERS}
    pa, pa_plain = rn["residual"]["per_activation"], rn["plain"]["per_activation"]
    frac = lambda p, ix, key: min(p[a][ix][key] for a in p)  # noqa: E731
    size = {k: rn["residual"][k] for k in ("n_reps", "n_samples", "width")}
    checks += [
        Check("3c", "JNE sims", "residual net, activation nowhere: index (max relative, both "
              "readings)",
              max(max(p[a][ix]["max_none_relative"] for a in p)
                  for p in (pa, pa_plain) for ix in ("jne", "nf")),
              1e-6, "<=", "JNE and NF", size),
        Check("3d", "JNE sims", "residual net h1 = x + phi1(W1 x), h2 = h1 + phi2(W2 h1): "
              "shallow < deep < both (min fraction of repetitions over activations)",
              frac(pa, "jne", "frac_shallow_lt_deep_lt_both"), 0.95, ">=", "JNE",
              {**size, "first_layer": "residual", "per_activation": pa,
               "nf_min_fraction": frac(pa, "nf", "frac_shallow_lt_deep_lt_both")}),
        Check("3e", "JNE sims", "plain first layer h1 = phi1(W1 x), h2 = h1 + phi2(W2 h1): "
              "shallow < deep < both (min fraction over activations)",
              frac(pa_plain, "jne", "frac_shallow_lt_deep_lt_both"), None, ">=", "JNE",
              {**size, "first_layer": "plain", "per_activation": pa_plain,
               "nf_min_fraction": frac(pa_plain, "nf", "frac_shallow_lt_deep_lt_both"),
               "jne_min_fraction_deep_lt_shallow_lt_both":
                   frac(pa_plain, "jne", "frac_deep_lt_shallow_lt_both"),
               "nf_min_fraction_deep_lt_shallow_lt_both":
                   frac(pa_plain, "nf", "frac_deep_lt_shallow_lt_both"),
               "why": "the deep deviation reaches the output through W2 W1, the shallow one "
                      "through (I + W2) W1: with default init it is smaller by "
                      "g / sqrt(1 + g^2) = 1/2 in expected size (g^2 = 1/3)"}),
    ]
    ss = sample_size(cfg.sample_sizes, cfg.sample_reps, seed=cfg.seed)
    big = [n for n in cfg.sample_sizes if n >= 100]
    per = {a: {"nf": v["nf"], "jne": v["jne"]} for a, v in ss["per_activation"].items()}
    checks += [
        Check("3f", "JNE sims", "sample size: agreement with the planted curve for N >= 100 "
              "(min mean r over N and activations)",
              min(per[a]["nf"][n] for a in per for n in big), 0.99, ">=", "NF",
              {"per_activation": per, "n_reps": ss["n_reps"],
               "jne_min_r_n_ge_100": min(per[a]["jne"][n] for a in per for n in big),
               "protocol": "index of y = phi(x - b), x ~ U[-10, 10], as a function of b in "
                           "[-8, 8]; planted curve from 200,001 grid inputs (our "
                           "reconstruction; the JNE paper's protocol is not public)"}),
        Check("3g", "JNE sims", "sample size: JNE agreement for N >= 100 (min mean r)",
              min(per[a]["jne"][n] for a in per for n in big), None, ">=", "JNE", {}),
    ]
    assert set(ACTIVATIONS) == set(sw)
    return checks


def gabor_checks(cfg: SuiteConfig) -> list[Check]:
    """Checks 4a-4b: simple vs complex cells by the index, exact and trained."""
    from ..encoders import MLPEncoder
    from ..jacobian import ModelJacobianSource
    from .gabor import make_gabor_data
    from .synthetic_checks import indices

    gd = make_gabor_data(seed=cfg.seed, **cfg.gabor)
    Xt = gd.X[gd.test]
    nf_e, j_e, _ = indices(ModelJacobianSource(gd.cells, Xt, method="autodiff",
                                               dtype=torch.float64))
    enc = MLPEncoder(activation="relu", seed=cfg.seed, progress=False, **cfg.gabor_mlp)
    enc.fit(gd.X[gd.train], gd.Y[gd.train], gd.X[gd.val], gd.Y[gd.val])
    nf_t, j_t, _ = indices(ModelJacobianSource(enc.module_, Xt))
    lab = gd.is_complex
    info = {"images": gd.source, "n_simple": int((~lab).sum()), "n_complex": int(lab.sum()),
            "patch_pixels": int(gd.X.shape[1])}
    return [
        Check("4a", "Gabor", "simple vs complex cells, exact functions: AUC of the index",
              auc(nf_e, lab), 0.95, ">=", "NF", {**info, "jne_auc": auc(j_e, lab),
                                                 "nf_simple_max": float(nf_e[~lab].max()),
                                                 "nf_complex_min": float(nf_e[lab].min())}),
        Check("4b", "Gabor", "simple vs complex cells, trained MLP: AUC of the index",
              auc(nf_t, lab), 0.95, ">=", "NF", {**info, "jne_auc": auc(j_t, lab),
                                                 "nf_median_simple": float(np.median(nf_t[~lab])),
                                                 "nf_median_complex": float(np.median(nf_t[lab])),
                                                 "encoder_best_epoch": enc.best_epoch_}),
    ]


def run_suite(out: str | Path, quick: bool = False, seed: int = 0, progress: bool = False,
              config: SuiteConfig | None = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every check, write ``out``/validation.json and ``out``/validation.md."""
    from ..data import make_synthetic
    from .synthetic_checks import collapse_checks, exact_level, trained_level

    cfg = config or (SuiteConfig.quick_config(seed) if quick else SuiteConfig.full(seed))
    say = log or (lambda s: None)
    timer = Timer()
    learner = {"progress": progress, "seed": cfg.seed, **cfg.learner}
    checks: list[Check] = []

    say("1 exact level (planted functions, exact Jacobians)")
    ds = make_synthetic(seed=cfg.seed, **cfg.synthetic)
    c1, art = exact_level(ds, learner)
    checks += c1
    timer.mark("exact")
    say("5 collapse monitors")
    checks += collapse_checks(art["source"], art["learner"], art["learner_warnings"], learner)
    timer.mark("collapse")
    say("2 trained level (MLPs on the noisy responses and on a linear null)")
    checks += trained_level(ds, learner, cfg.mlp, cfg.seed, exact_nf=art["nf"],
                            ensemble=cfg.trained_ensemble)
    timer.mark("trained")
    say("3 the JNE authors' simulations")
    checks += jne_simulation_checks(cfg, progress)
    timer.mark("jne_sims")
    say("4 simple vs complex cells")
    checks += gabor_checks(cfg)
    timer.mark("gabor")
    order = {"1": 0, "2": 1, "3": 2, "4": 3, "5": 4}
    checks.sort(key=lambda c: (order[c.id[0]], c.id))
    meta = {"quick": cfg.quick, "seed": cfg.seed, "config": asdict(cfg),
            "wall_seconds": time.perf_counter() - timer.t0, "seconds": timer.parts,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    return write_results(Path(out), checks, meta)
