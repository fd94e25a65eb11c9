"""Analyses over units and stimuli: tiers, orderings, clusters."""
from .ordering import tsne_order
from .run import analyze_run
from .tiers import label_order, tier_medians

__all__ = ["analyze_run", "tsne_order", "label_order", "tier_medians"]
