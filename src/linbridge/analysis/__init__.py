"""Analyses over units and stimuli: tiers, orderings, clusters."""
from .ordering import afd_robustness, image_statistics, pc1_order, random_order, tsne_order
from .run import analyze_run, per_unit_indices
from .stats import (bootstrap_effect, holm, jonckheere_terpstra, quantile_strata,
                    stratified_mann_whitney)
from .stimuli import cluster_tier_means, extremes, kmeans_by_silhouette, sample_bias_by_tier
from .tiers import (apply_mapping, compare_tiers, label_order, resolve_tiers, tier_analysis,
                    tier_medians)

__all__ = ["analyze_run", "per_unit_indices", "tsne_order", "random_order", "pc1_order",
           "image_statistics", "afd_robustness", "label_order", "tier_medians", "apply_mapping",
           "resolve_tiers", "compare_tiers", "tier_analysis", "stratified_mann_whitney",
           "jonckheere_terpstra", "bootstrap_effect", "holm", "quantile_strata",
           "cluster_tier_means", "extremes", "kmeans_by_silhouette", "sample_bias_by_tier"]
