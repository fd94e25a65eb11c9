"""Scores, nonlinearity indices and significance, per unit."""
from ._indices import afd, euler_split, jne, jne_ss, nonlinear_fraction
from ._scores import correlate_maps, pearson_r, r2_score, valid_units
from ._significance import bootstrap_r2_pvalues, fdr_bh

__all__ = ["afd", "euler_split", "jne", "jne_ss", "nonlinear_fraction", "correlate_maps",
           "pearson_r", "r2_score", "valid_units", "bootstrap_r2_pvalues", "fdr_bh"]
