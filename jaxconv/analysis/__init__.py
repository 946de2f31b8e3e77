"""Model analysis: parameter counts, FLOPs, compile time (generic over registered models)."""

from jaxconv.analysis.cost import compile_time, count_params, init_variables, model_flops

__all__ = ["compile_time", "count_params", "init_variables", "model_flops"]
