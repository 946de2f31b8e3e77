"""jaxconv: a JAX/Flax Linen research codebase for convolutional networks.

    import jaxconv
    model = jaxconv.create_model("resnet20", drop_path_rate=0.1)
    jaxconv.list_models("resnet*"), jaxconv.model_info("resnet50")
"""

from jaxconv import models as _models  # noqa: F401  (registers every model)
from jaxconv.registry import ModelInfo, create_model, list_models, model_info

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
