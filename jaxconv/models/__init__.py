"""Model families. Importing this package registers every model (one module per family).

Add a family by importing its module here.
"""

from jaxconv.models import (
    allcnn,
    densenet,
    inception,
    mobilenet,
    nin,
    residual_stack,
    resnet,
    vgg,
    wrn,
)
from jaxconv.models.resnet import ResNet

__all__ = ["ResNet", "allcnn", "densenet", "inception", "mobilenet", "nin", "residual_stack",
           "resnet", "vgg", "wrn"]
from jaxconv.models import convnext  # noqa: E402,F401  (issue 6: ConvNeXt)
from jaxconv.models import coatnet  # noqa: E402,F401  (issue 7: CoAtNet)
from jaxconv.models import inception_next  # noqa: E402,F401  (issue 6: InceptionNeXt)
from jaxconv.models import replknet, unireplknet  # noqa: E402,F401  (issue 6: RepLKNets)
from jaxconv.models import convnext_dcls  # noqa: E402,F401  (issue 6: ConvNeXt-dcls)
from jaxconv.models import cvt, nat  # noqa: E402,F401  (issue 7: CvT, NAT)
