"""Analyses over units and stimuli: tiers, orderings, clusters."""
from .ordering import tsne_order
from .tiers import label_order, tier_medians

__all__ = ["tsne_order", "label_order", "tier_medians"]
