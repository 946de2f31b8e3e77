"""Streaming inference of causal conv models.

* :mod:`jaxconv.streaming.ring`: step-by-step inference with ring-buffer caches (TCN, ByteNet,
  causal CCNN/CKConv), equal to the full forward; ``python -m jaxconv.streaming.bench`` times a
  step against recomputing the window.
* :mod:`jaxconv.streaming.modal`: Laughing Hyena's distillation of a long filter into a small
  modal recurrence (O(order) work per step).
"""

from jaxconv.streaming import modal
from jaxconv.streaming.ring import decoder, init_cache, step, stream

__all__ = ["decoder", "init_cache", "modal", "step", "stream"]
