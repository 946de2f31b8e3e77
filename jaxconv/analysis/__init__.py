"""Model analysis: parameter counts, FLOPs, multiply-adds, activations, compile time and
effective receptive fields (generic over registered models)."""

from jaxconv.analysis.cost import (
    ACTIVATION_LAYERS,
    DEPTHWISE_LAYERS,
    compile_time,
    count_macs,
    count_params,
    device_name,
    init_variables,
    median_seconds,
    model_activations,
    model_flops,
)
from jaxconv.analysis.erf import (
    AREA_THRESHOLDS,
    area_ratios,
    effective_receptive_field,
    erf_heatmap,
    high_contribution_area_ratio,
)

__all__ = ["ACTIVATION_LAYERS", "AREA_THRESHOLDS", "DEPTHWISE_LAYERS", "area_ratios",
           "compile_time", "count_macs", "count_params", "device_name",
           "effective_receptive_field", "erf_heatmap", "high_contribution_area_ratio",
           "init_variables", "median_seconds", "model_activations", "model_flops"]
