"""Per-sample Jacobians of encoders and streaming reductions of them."""
from ._analytic import MLPPlan, analytic_jacobian, forward_record, parse_mlp
from ._autodiff import autodiff_jacobian, choose_mode
from ._checks import check_eval_mode
from ._reductions import (DeviationStats, deviation_statistics, jacobian_sketch,
                          median_jacobian, weighted_mean_jacobian)
from ._source import (ArrayJacobianSource, JacobianSource, LinearJacobianSource,
                      ModelJacobianSource, as_source)
from ._store import ZarrJacobianSource, source_fingerprint, write_store

__all__ = ["MLPPlan", "analytic_jacobian", "forward_record", "parse_mlp", "autodiff_jacobian",
           "choose_mode", "check_eval_mode", "DeviationStats", "deviation_statistics",
           "jacobian_sketch", "median_jacobian", "weighted_mean_jacobian", "ArrayJacobianSource",
           "JacobianSource", "LinearJacobianSource", "ModelJacobianSource", "as_source",
           "ZarrJacobianSource", "source_fingerprint", "write_store"]
