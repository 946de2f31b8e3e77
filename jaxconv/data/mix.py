"""mixup and CutMix of whole batches, on device (pure jnp; randomness from an explicit key).

timm's ``Mixup`` semantics: with probability ``prob`` a batch (mode ``batch``), a pair of rows
(``pair``) or a row (``elem``) is mixed with its mirror row ``B - 1 - i``; when both alphas are
positive, CutMix is used instead of mixup with probability ``switch_prob``. lambda ~ Beta(alpha,
alpha); CutMix pastes a box of side ``int(side * sqrt(1 - lambda))`` centred at a uniform pixel,
clipped to the image, and lambda is corrected to the area actually kept. The targets are the
label-smoothed one-hots (off = smoothing / K, on = 1 - smoothing + off) mixed with the same
lambda, so they sum to one. The batch size must be even (timm asserts the same).

The train step calls :func:`mix_batch` with ``fold_in`` of the step key: the mix of a step is a
pure function of (seed, step), so a resumed run mixes exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxconv.data.augment import MIX_MODES, check_mix_fields


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """mixup / CutMix settings (``config.augment.mixup_alpha`` etc.); see the module docstring."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    label_smoothing: float = 0.0

    def __post_init__(self):
        check_mix_fields(self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob,
                         self.mode)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def mix_config_from(config) -> MixConfig | None:
    """The :class:`MixConfig` of a training config, or None when mixing is off."""
    a = config.augment
    mix = MixConfig(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob,
                    switch_prob=a.mix_switch_prob, mode=a.mix_mode,
                    label_smoothing=config.label_smoothing)
    return mix if mix.enabled else None


def smooth_one_hot(labels, num_classes: int, smoothing: float = 0.0):
    """One-hot float32 targets with timm's smoothing: off = smoothing / K, on = 1 - smoothing +
    off (each row sums to one)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off).astype(
        jnp.float32)


def mix_targets(labels, num_classes: int, lam, smoothing: float = 0.0):
    """timm's ``mixup_target``: ``lam * y + (1 - lam) * y[::-1]`` of the smoothed one-hots ``y``
    (``lam`` a scalar or one value per row)."""
    lam = jnp.asarray(lam, jnp.float32)
    lam = lam[:, None] if lam.ndim == 1 else lam
    y = smooth_one_hot(labels, num_classes, smoothing)
    return y * lam + y[::-1] * (1.0 - lam)


def cutmix_box(lam, cy, cx, height: int, width: int):
    """timm's CutMix box for ``lam`` centred at (cy, cx), clipped to the image, and the lambda
    corrected to the area that stays: ``(y_lo, y_hi, x_lo, x_hi, lam)``, elementwise over arrays.
    The box covers rows ``y_lo <= y < y_hi`` and columns ``x_lo <= x < x_hi``."""
    ratio = jnp.sqrt(jnp.maximum(1.0 - lam, 0.0))
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    y_lo = jnp.clip(cy - cut_h // 2, 0, height)
    y_hi = jnp.clip(cy + (cut_h + 1) // 2, 0, height)
    x_lo = jnp.clip(cx - cut_w // 2, 0, width)
    x_hi = jnp.clip(cx + (cut_w + 1) // 2, 0, width)
    area = ((y_hi - y_lo) * (x_hi - x_lo)).astype(jnp.float32)
    return y_lo, y_hi, x_lo, x_hi, 1.0 - area / float(height * width)


def _sample_params(key, n: int, cfg: MixConfig):
    """(lambda [n], use_cutmix [n]) as timm's ``_params_per_elem`` draws them."""
    k_switch, k_cut, k_mix, k_apply = jax.random.split(key, 4)
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch, (n,)) < cfg.switch_prob
        lam = jnp.where(use_cutmix,
                        jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha, (n,)),
                        jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha, (n,)))
    elif cfg.mixup_alpha > 0:
        use_cutmix = jnp.zeros((n,), bool)
        lam = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha, (n,))
    else:
        use_cutmix = jnp.ones((n,), bool)
        lam = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha, (n,))
    lam = jnp.clip(jnp.nan_to_num(lam.astype(jnp.float32), nan=1.0), 0.0, 1.0)
    apply = jax.random.uniform(k_apply, (n,)) < cfg.prob
    return jnp.where(apply, lam, 1.0), use_cutmix


def mix_batch(key, images, labels, num_classes: int, cfg: MixConfig):
    """Mixes an NHWC batch with its mirror (row i with row B-1-i); returns ``(images, targets,
    lam)``: the mixed images (same dtype), soft targets [B, K] (float32, rows sum to one) and the
    per-row lambda [B] (the weight of the row's own label; CutMix's corrected to the box)."""
    b, h, w = images.shape[:3]
    if b % 2:
        raise ValueError(f"mixup / CutMix needs an even batch size (got {b}); change "
                         "config.batch_size")
    k_params, k_cy, k_cx = jax.random.split(key, 3)
    n = {"batch": 1, "pair": b // 2, "elem": b}[cfg.mode]
    lam, use_cutmix = _sample_params(k_params, n, cfg)
    cy = jax.random.randint(k_cy, (n,), 0, h)
    cx = jax.random.randint(k_cx, (n,), 0, w)
    y_lo, y_hi, x_lo, x_hi, lam_box = cutmix_box(lam, cy, cx, h, w)
    lam = jnp.where(use_cutmix, lam_box, lam)

    def per_row(v):  # one value per row: a pair shares its draw, mirrored
        if cfg.mode == "batch":
            return jnp.broadcast_to(v, (b,))
        if cfg.mode == "pair":
            return jnp.concatenate([v, v[::-1]])
        return v

    lam, use_cutmix, y_lo, y_hi, x_lo, x_hi = map(per_row, (lam, use_cutmix, y_lo, y_hi, x_lo,
                                                            x_hi))
    partner = images[::-1]
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    inside = ((rows >= y_lo[:, None, None]) & (rows < y_hi[:, None, None])
              & (cols >= x_lo[:, None, None]) & (cols < x_hi[:, None, None]))
    cut = jnp.where(inside[..., None], partner, images)
    lam_img = lam.astype(images.dtype).reshape(b, 1, 1, 1)
    blend = images * lam_img + partner * (1 - lam_img)
    mixed = jnp.where(use_cutmix.reshape(b, 1, 1, 1), cut, blend)
    mixed = jnp.where(lam.reshape(b, 1, 1, 1) == 1.0, images, mixed)  # unmixed rows: untouched
    return mixed, mix_targets(labels, num_classes, lam, cfg.label_smoothing), lam
