"""Integration tests of every CLI path on small data."""
import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from linbridge.cli import app
from linbridge.config import config_from_dict, load_config

runner = CliRunner()

SMALL = {
    "dataset": {"name": "synthetic", "params": {"n_features": 16, "n_train": 600, "n_val": 150,
                                                "n_test": 120, "units_per_tier": 8}},
    "encoders": {"mlp_relu": {"hidden": 64, "max_epochs": 40, "lr": 3e-3},
                 "mlp_linear": {"hidden": 64, "max_epochs": 40, "lr": 3e-3},
                 "ridge": {"cv": 3}},
    "bridge": {"learner": {"n_epochs": 3, "batch_size": 32}},
    "metrics": {"n_boot": 30, "afd_tsne_seeds": [0, 1]},
    "seed": 1,
}

REQUIRED = [
    "encoders.ridge.median_r", "encoders.mlp_linear.median_r", "encoders.mlp_relu.median_r",
    "encoders.mlp_linear.best_epoch", "encoders.mlp_relu.best_epoch",
    "inherent.learned.median_r", "inherent.mean_jacobian.median_r",
    "inherent.learned.r2_map_corr_with_nonlinear", "inherent.mean_jacobian.r2_map_corr_with_nonlinear",
    "indices.jne.median", "indices.nonlinearity.median",
    "ground_truth.learned.inherent_vs_planted_r", "ground_truth.mean_jacobian.inherent_vs_planted_r",
    "ground_truth.nonlinearity_vs_planted_spearman",
]


def _get(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = tmp / "out"
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return cfg, out, res


def test_run_writes_complete_run_directory(small_run):
    _, out, res = small_run
    for name in ("config.yaml", "versions.json", "dataset.json", "metrics.json", "units.csv",
                 "report.html", "decomposition.npz", "jacobian_stats.npz", "learner.json",
                 "encoders/ridge.npz", "encoders/mlp_relu.pt", "encoders/mlp_linear.pt"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED:
        v = _get(m, key)
        assert np.isfinite(v), key
    tiers = m["ground_truth"]["tier_medians"]
    assert set(tiers) == {"tier1_linear", "tier2_relu", "tier3_quadratic"}
    assert "report:" in res.output
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_report_is_self_contained(small_run):
    _, out, _ = small_run
    html = (out / "report.html").read_text()
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(imgs) >= 6 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "http://" not in html and "https://" not in html


def test_rerun_resumes_from_finished_stages(small_run):
    cfg, out, _ = small_run
    before = {p: p.stat().st_mtime_ns for p in [out / "encoders" / "mlp_relu.pt",
                                                 out / "decomposition.npz"]}
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    for p, t in before.items():
        assert p.stat().st_mtime_ns == t, f"{p.name} was recomputed"
    m1 = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m1["encoders"]["mlp_relu"]["median_r"])


def test_report_command_rebuilds(small_run):
    _, out, _ = small_run
    (out / "report.html").unlink()
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").exists()


def test_report_command_on_unfinished_dir(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a finished run" in res.output


def test_config_yaml_spells_out_what_ran(small_run):
    """config.yaml in the run directory lists the defaults too, and reads back."""
    _, out, _ = small_run
    d = yaml.safe_load((out / "config.yaml").read_text())
    learner = d["bridge"]["learner"]
    assert learner["n_epochs"] == 3 and learner["temperature"] == 0.1 and learner["seed"] == 1
    mlp = d["encoders"]["mlp_relu"]
    assert mlp["patience"] == 8 and mlp["seed"] == 1 and mlp["activation"] == "relu"
    assert d["encoders"]["ridge"]["cv"] == 3 and len(d["encoders"]["ridge"]["alphas"]) == 19
    assert load_config(out / "config.yaml").bridge.learner["min_ess_fraction"] == 0.5


def test_changed_config_invalidates_stage(small_run):
    """A changed encoder setting retrains the encoders and redoes the decomposition."""
    cfg, out, _ = small_run
    before = {p: p.stat().st_mtime_ns for p in [out / "encoders" / "mlp_relu.pt",
                                                 out / "decomposition.npz"]}
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "--quiet",
                              "--set", "encoders.mlp_relu.hidden=48"])
    assert res.exit_code == 0, res.output
    for p, t in before.items():
        assert p.stat().st_mtime_ns != t, f"{p.name} was reused under a changed config"
    cfg_text = (out / "config.yaml").read_text()
    assert "hidden: 48" in cfg_text


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoders:\n  mlp_relu: {hidden: 8}\n  typo_section: 1\n")
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "typo_section" in res.output
    res = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    with pytest.raises(ValueError, match="unknown top-level"):
        config_from_dict({"encoder": {}})
    res = runner.invoke(app, ["demo", "--dataset", "nope", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "unknown dataset" in res.output
    # learner settings are checked before anything trains
    good = tmp_path / "good.yaml"
    good.write_text("encoders:\n  mlp_relu: {hidden: 8}\n")
    res = runner.invoke(app, ["run", str(good), "--out", str(tmp_path / "o3"),
                              "--set", "bridge.learner.temperature=0"])
    assert res.exit_code == 2 and "bridge.learner: LinBridge temperature must be > 0" in res.output
    assert not (tmp_path / "o3" / "encoders").exists()
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['temprature'\\] in bridge.learner"):
        config_from_dict({"bridge": {"learner": {"temprature": 0.1}}})
    # so are encoder and dataset keys (they used to fail as a TypeError after earlier stages)
    for d, where in [({"encoders": {"mlp_relu": {"hiden": 64}}}, "encoders.mlp_relu"),
                     ({"dataset": {"params": {"n_unit": 30}}}, "dataset.params"),
                     ({"dataset": {"name": "nsd", "params": {"subjet": 2}}}, "dataset.params")]:
        with pytest.raises(ValueError, match=f"unknown key.* in {where}; valid: "):
            config_from_dict(d)


def test_dataset_defaults_apply_under_user_values():
    cfg = config_from_dict({"dataset": {"name": "cowley2023-v4"}})
    assert cfg.encoders.mlp_relu["lr"] == 1e-4 and cfg.encoders.mlp_relu["activation"] == "relu"
    cfg = config_from_dict({"dataset": {"name": "cowley2023-v4"}, "encoders": {"mlp_relu": {"lr": 5e-4}}})
    assert cfg.encoders.mlp_relu["lr"] == 5e-4


def test_fetch_from_local_mirror(tmp_path):
    from tests.conftest import SHARED_DATA

    src = SHARED_DATA / "cowley2023_v4"
    if not src.exists():
        pytest.skip("../shared/data not present")
    res = runner.invoke(app, ["fetch", "cowley2023-v4", "--data-home", str(tmp_path),
                              "--base-url", str(src)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cowley2023_v4" / "responses_repeat_averaged" / "responses_201025.npy").exists()


def test_nsd_fixture_and_paper_config_run(tmp_path):
    """`linbridge nsd-fixture DIR && linbridge run configs/nsd_paper.yaml --data-home DIR`."""
    pytest.importorskip("transformers")
    from tests.conftest import REPO

    fx = tmp_path / "nsd"
    res = runner.invoke(app, ["nsd-fixture", str(fx), "--subjects", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(REPO / "configs" / "nsd_paper.yaml"), "--data-home", str(fx),
                              "--out", str(out), "--quiet",
                              "--set", "bridge.learner.n_epochs=2", "--set", "metrics.n_boot=20"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    m = json.loads((out / "metrics.json").read_text())
    assert {"PVC", "IVC", "HVC"} <= set(m["tiers"]["nonlinearity"])
    labels = (out / "units.csv").read_text().splitlines()[1:]
    assert any(",PVC," in ln for ln in labels)
    an = json.loads((out / "analysis.json").read_text())
    assert an["tier_order"] == ["PVC", "IVC", "HVC"]
    assert "noise_ceiling" in an["tier_tests"]["stratified"]


def test_set_override_parses_yaml_values(tmp_path):
    from linbridge.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("dataset: {name: synthetic}\n")
    cfg = load_config(p, overrides=["dataset.params.n_test=50", "bridge.learner.scorer=mean"])
    assert cfg.dataset.params["n_test"] == 50 and cfg.bridge.learner["scorer"] == "mean"
    with pytest.raises(ValueError, match="key.path=value"):
        load_config(p, overrides=["oops"])
