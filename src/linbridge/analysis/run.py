"""Analyses of a finished decomposition, written to analysis.json in the run directory."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..rundir import RunDir, save_json
from .tiers import tier_medians


def analyze_run(ds, dec: dict[str, Any], units: dict[str, np.ndarray], rd: RunDir, cfg) -> dict:
    """Per-label summaries of the per-unit indices; returns what it wrote."""
    out = {"tiers": {key: tier_medians(units[key], ds.unit_labels)
                     for key in ("nonlinearity", "jne", "euler_bias_share") if key in units}}
    save_json(rd.path("analysis.json"), out)
    return out
