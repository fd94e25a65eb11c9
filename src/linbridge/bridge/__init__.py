"""The LinBridge decomposition J_k = J_inh + dJ_k: learned, and closed-form baselines."""
from ._baselines import elementwise_median, least_squares_distillation, mean_jacobian
from ._learner import CollapseWarning, LinBridge, info_nce, jacobian_sketches, make_scorer

__all__ = ["elementwise_median", "least_squares_distillation", "mean_jacobian", "CollapseWarning",
           "LinBridge", "info_nce", "jacobian_sketches", "make_scorer"]
