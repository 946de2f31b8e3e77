"""jaxconv: a JAX/Flax Linen research codebase for convolutional networks.

    import jaxconv
    model = jaxconv.create_model("resnet20", drop_path_rate=0.1)
    model = jaxconv.create_model("path/to/my_convnext.py:convnext_tiny")  # a fork, by file spec
    jaxconv.list_models("resnet*"), jaxconv.model_info("resnet50")
    jaxconv.feature_info(model, (32, 32, 3))            # stage names, channels, strides
    jaxconv.stage_features(model, variables, images)    # [(name, array, stride), ...]
"""

from jaxconv import models as _models  # noqa: F401  (registers every model)
from jaxconv.models.features import FeatureInfo, StageFeature, feature_info, stage_features
from jaxconv.registry import ModelInfo, create_model, list_models, model_info

__all__ = [
    "FeatureInfo",
    "ModelInfo",
    "StageFeature",
    "create_model",
    "feature_info",
    "list_models",
    "model_info",
    "stage_features",
]
