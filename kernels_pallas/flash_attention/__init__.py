"""Flash attention with an additive, differentiable bias: ``flash_attention(q, k, v, ...)``
(see ``api.py``)."""

from kernels_pallas.flash_attention.api import check_arguments, flash_attention
from kernels_pallas.flash_attention.reference import flash_attention_reference

__all__ = ["check_arguments", "flash_attention", "flash_attention_reference"]
