"""Model families. Importing this package registers every model (one module per family).

Add a family by importing its module here.
"""

from jaxconv.models import residual_stack, resnet
from jaxconv.models.resnet import ResNet

__all__ = ["ResNet", "resnet"]
