"""Model analysis: parameter counts, FLOPs, activations, compile time (generic over registered
models)."""

from jaxconv.analysis.cost import (
    ACTIVATION_LAYERS,
    compile_time,
    count_macs,
    count_params,
    device_name,
    init_variables,
    median_seconds,
    model_activations,
    model_flops,
)

__all__ = ["ACTIVATION_LAYERS", "compile_time", "count_macs", "count_params", "device_name",
           "init_variables", "median_seconds", "model_activations", "model_flops"]
from jaxconv.analysis.erf import (  # noqa: E402  (issue 6: effective receptive field)
    AREA_THRESHOLDS,
    area_ratios,
    effective_receptive_field,
    erf_heatmap,
    high_contribution_area_ratio,
)

__all__ += ["AREA_THRESHOLDS", "area_ratios", "effective_receptive_field", "erf_heatmap",
            "high_contribution_area_ratio"]
