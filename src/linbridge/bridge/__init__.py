"""The LinBridge decomposition J_k = J_inh + dJ_k: learned, closed-form baselines, evaluation."""
from ._baselines import elementwise_median, least_squares_distillation, mean_jacobian
from ._learner import (COLLAPSE_RULES, CollapseWarning, LinBridge, effective_sample_size,
                       info_nce, jacobian_sketches, make_scorer, tempering)
from .evaluation import (PAPER_BATCH_SIZES, SubsetSource, fit_components, heldout_split_scores,
                         stability)

__all__ = ["elementwise_median", "least_squares_distillation", "mean_jacobian", "COLLAPSE_RULES",
           "CollapseWarning", "LinBridge", "effective_sample_size", "info_nce",
           "jacobian_sketches", "make_scorer", "tempering", "PAPER_BATCH_SIZES", "SubsetSource",
           "fit_components", "heldout_split_scores", "stability"]
