"""Neighborhood attention, 1-D and 2-D: ``neighborhood_attention(q, k, v, ...)`` (``api.py``)."""

from kernels_pallas.neighborhood_attention.api import check_arguments, neighborhood_attention
from kernels_pallas.neighborhood_attention.reference import neighborhood_attention_reference

__all__ = ["check_arguments", "neighborhood_attention", "neighborhood_attention_reference"]
