"""Model families. Importing this package registers every model (one module per family).

Add a family by importing its module here.
"""

from jaxconv.models import (
    allcnn,
    bytenet,
    ccnn,
    coatnet,
    condconv,
    convnext,
    convnext_dcls,
    cvt,
    densenet,
    hyena,
    inception,
    inception_next,
    long_conv,
    mobilenet,
    nat,
    nin,
    replknet,
    residual_stack,
    resnet,
    seq_attention,
    tcn,
    ucr,
    unireplknet,
    vgg,
    wrn,
    xnor,
)
from jaxconv.models.resnet import ResNet

__all__ = ["ResNet", "allcnn", "coatnet", "convnext", "convnext_dcls", "cvt", "densenet",
           "inception", "inception_next", "mobilenet", "nat", "nin", "replknet",
           "residual_stack", "resnet", "unireplknet", "vgg", "wrn",
           "bytenet", "ccnn", "tcn", "ucr", "seq_attention", "hyena", "long_conv",
           "condconv", "xnor"]
