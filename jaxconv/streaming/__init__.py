"""Streaming inference of causal conv models: :mod:`jaxconv.streaming.ring` (step-by-step with
ring-buffer caches, equal to the full forward); ``python -m jaxconv.streaming.bench`` times a
step against recomputing the window."""

from jaxconv.streaming.ring import decoder, init_cache, step, stream

__all__ = ["decoder", "init_cache", "step", "stream"]
