"""Known-answer validation of the decomposition and the nonlinearity indices.

``run_suite(out, quick=False)`` runs every check and writes validation.json (one entry per
check: value, threshold, passed) and validation.md (the table); ``linbridge validate``
calls it. See docs/validation.md.
"""
from ._core import Check, auc, table, write_results
from .suite import SuiteConfig, gabor_checks, jne_simulation_checks, run_suite

__all__ = ["Check", "auc", "table", "write_results", "SuiteConfig", "gabor_checks",
           "jne_simulation_checks", "run_suite"]
