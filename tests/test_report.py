"""report.html: rebuilt from a finished run's files alone, self-contained, every figure
decodes; the one-area and older-run variants; headless Chromium renders it (skipped when
/usr/bin/chromium is absent)."""
from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from linbridge.config import config_from_dict
from linbridge.report import build_report
from linbridge.report import figures as F

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "dataset": {"name": "synthetic", "params": {"n_features": 12, "n_train": 400, "n_val": 100,
                                                "n_test": 100, "units_per_tier": 8}},
    "encoders": {"mlp_relu": {"hidden": 32, "max_epochs": 15, "lr": 3e-3},
                 "mlp_linear": {"hidden": 32, "max_epochs": 15, "lr": 3e-3},
                 "ridge": {"cv": 3}},
    "bridge": {"learner": {"n_epochs": 2, "batch_size": 32}},
    "metrics": {"n_boot": 20, "afd_tsne_seeds": [0, 1]},
    "seed": 2,
}


def _render_script():
    spec = importlib.util.spec_from_file_location("render_report",
                                                  REPO / "scripts" / "render_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from linbridge.pipeline import run

    out = tmp_path_factory.mktemp("report") / "run"
    run(config_from_dict(TINY), out, progress=False)
    return out


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(s) for s in
            re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)]


def test_report_rebuilt_from_files_alone(run_dir):
    (run_dir / "report.html").unlink()
    shutil.rmtree(run_dir / "figures")
    build_report(run_dir)  # no dataset, no encoders
    html = (run_dir / "report.html").read_text()
    n, problems = _render_script().check_embedded(html)
    assert not problems
    assert n >= 9 and len(_images(html)) == n
    assert len(list((run_dir / "figures").glob("*.png"))) == n
    for section in ("Run", "Encoders and inherent components", "Indices by tier",
                    "Signal-to-noise control", "AFD robustness", "Stimuli",
                    "Training, collapse monitors and stability", "Ground truth"):
        assert f"<h2>{section}" in html or f"<h3>{section}" in html, section
    assert "no stability.json" in html and "no images" in html
    assert "http://" not in html and "https://" not in html
    assert "data-images-broken" in html  # the in-page image check
    # every figure has a one-line reading
    assert html.count("<figcaption>") == n


def test_report_tier_tables_match_analysis(run_dir):
    a = json.loads((run_dir / "analysis.json").read_text())
    html = (run_dir / "report.html").read_text()
    assert a["tier_order"] == ["tier1_linear", "tier2_relu", "tier3_quadratic"]
    tt = a["tier_tests"]
    assert set(tt["stratified"]) == {"noise_ceiling", "test_r2_nonlinear"}
    for pair in ("tier1_linear &lt; tier2_relu", "tier2_relu &lt; tier3_quadratic"):
        assert pair in html
    p = tt["indices"]["nonlinearity"]["trend"]["p"]
    assert 0 <= p <= 1


def test_one_area_and_older_runs(run_dir, tmp_path):
    """A run whose units are one area (as V4) shows per-unit distributions instead of tier
    tests; a run directory without analysis files (older version) still gets a report."""
    from linbridge.analysis import analyze_run
    from linbridge.data import make_synthetic
    from linbridge.report.html import _units
    from linbridge.rundir import RunDir, load_json, load_npz

    one = tmp_path / "one"
    shutil.copytree(run_dir, one)
    cfg = config_from_dict(TINY)
    ds = make_synthetic(seed=cfg.seed, **TINY["dataset"]["params"])
    ds.unit_labels = np.full(ds.n_units, "V4")
    units = _units(one)
    units["label"] = ds.unit_labels
    dec = {"stats": load_npz(one / "jacobian_stats.npz"),
           "components": load_npz(one / "decomposition.npz"),
           "learner": load_json(one / "learner.json")}
    analyze_run(ds, dec, units, RunDir(one), cfg)
    build_report(one)
    html = (one / "report.html").read_text()
    assert "Indices per unit (one area)" in html and "Per-unit distributions" in html
    assert "Signal-to-noise control" not in html
    assert (one / "figures" / "indices_vs_r2.png").exists()
    for f in ("analysis.json", "analysis.npz"):
        (one / f).unlink()
    build_report(one)
    html = (one / "report.html").read_text()
    assert "no analysis.json" in html and "<h2>Indices by label</h2>" in html


def test_stability_curves_layouts(tmp_path):
    good = {"batch_size": {"x": [16, 32, 64, 128], "r_with_reference": [0.9, 0.95, 0.98, 0.99]},
            "seed": [{"seed": 0, "r": 0.97}, {"seed": 1, "r": 0.96}, {"seed": 2, "r": 0.98}]}
    curves = F._curves(good)
    assert [c[0] for c in curves] == ["batch_size", "seed"]
    assert curves[1][1] == "seed" and curves[1][3] == {"r": [0.97, 0.96, 0.98]}
    assert F.stability_figure(good, tmp_path / "s.png").exists()
    assert F.stability_figure({"note": "nothing to draw"}, tmp_path / "t.png") is None
    # the layout of bridge.evaluation.stability, after a JSON round trip
    ev = {"n_samples": 100, "batch_size": {"16": {"r_with_full_batch": 0.9, "batch_size": 16,
                                                  "seed": 0, "collapse_warnings": []},
                                           "32": {"r_with_full_batch": 0.95, "batch_size": 32,
                                                  "seed": 0, "collapse_warnings": []}},
          "seed": {"0": {"r_with_full_batch": 1.0, "seed": 0, "batch_size": 32},
                   "1": {"r_with_full_batch": 0.97, "seed": 1, "batch_size": 32}},
          "min_r_seed": 0.97}
    curves = {c[0]: c for c in F._curves(json.loads(json.dumps(ev)))}
    assert curves["batch_size"][2] == [16.0, 32.0]
    assert curves["batch_size"][3]["r_with_full_batch"] == [0.9, 0.95]
    assert "r_with_full_batch" in curves["seed"][3]


def test_figures_keep_nan_transparent_and_count_outliers(tmp_path):
    from PIL import Image

    v = np.r_[np.random.default_rng(0).normal(size=50), np.nan, 40.0]
    labels = np.array(["a"] * 26 + ["b"] * 26)
    p = F.tier_index_figure({"nonlinearity": v}, labels, ["a", "b"], None, tmp_path / "f.png")
    im = Image.open(p)
    assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 1


@pytest.mark.skipif(_render_script().find_chromium() is None,
                    reason="no Chromium (apt-get install -y chromium)")
def test_headless_chromium_renders_every_figure(run_dir, tmp_path):
    mod = _render_script()
    res = mod.render(run_dir / "report.html", mod.find_chromium(), tmp_path)
    assert res["ok"], res["problems"]
    assert res["broken_images"] == 0 and res["browser_images"] == res["embedded_images"] >= 9
    assert Path(res["screenshot"]).exists() and res["screenshot_nonwhite_fraction"] > 0.02
