"""UniRepLKNet (Ding, Zhang, Han, Ding, Shan, Yue 2024, UniRepLKNet: A Universal Perception
Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series and Image Recognition,
arXiv:2311.15599), sizes A/F/P/N/T.

A ConvNeXt-like macro design (4 stages, LayerNorm downsampling, inverted-bottleneck FFN) whose
13x13 depthwise convs are trained as a *dilated reparam block*: the large kernel plus parallel
small dilated depthwise kernels (for 13: 5x5 r1, 7x7 r2, 3x3 r3/r4/r5), each with BatchNorm,
merged into one 13x13 kernel for inference. Each block also has SE (squeeze to dim/4) after the
depthwise conv and GRN (global response normalisation, ConvNeXt V2) in the FFN, as the paper
and the authors' code use in every size. timm 1.0.31 has no UniRepLKNet; names follow the
authors' code (``unireplknet_a`` ... ``unireplknet_t``; ``stages.2.5.dwconv.dil_conv_k7_2.weight``
-> ``stages_2_5/dwconv/dil_conv_k7_2/kernel``; BatchNorm ``weight`` -> ``scale``).

Parameter layout (training form; ``batch_stats`` mirrors the BatchNorms)::

    downsample_layers_0_0, _0_1, _0_3, _0_4   stem: 3x3/2 conv, LayerNorm, GELU, 3x3/2 conv, LN
    downsample_layers_{i}_0, _{i}_1           3x3/2 conv, LayerNorm (stages 1..3)
    stages_{i}_{j}                            block j of stage i:
        dwconv      kernel >= 7: DilatedReparamBlock {lk_origin, origin_bn, dil_conv_k{k}_{r},
                    dil_bn_k{k}_{r}}; kernel 3/5: a depthwise conv (no bias)
        norm        BatchNorm
        se          down, up (Dense on the pooled features; the authors' 1x1 convs)
        pwconv1     Dense dim -> 4 dim, GELU
        grn         gamma, beta
        pwconv2, pwconv2_bn   Dense 4 dim -> dim (no bias), BatchNorm
        gamma       layer scale (init 1e-6)
    norm, head                                LayerNorm on the pooled features, Dense

Deploy form (``deploy=True``): ``dwconv`` is one depthwise conv with bias (``dwconv/lk_origin``
for kernels >= 7, as in the authors' code; ``dwconv`` for 3/5) with ``norm`` folded in;
``grn`` has no ``beta`` and ``pwconv2`` has a bias (beta, the BN and the layer scale folded in,
the authors' ``reparameterize``). The paper's parameter counts are of this form.

Stage outputs (``intermediates/stage{i}``): the output of stage i (strides 4/8/16/32). Every
depthwise conv is a :class:`jaxconv.layers.DepthwiseConv2D` whose ``implementation`` is the
model field.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import DropPath, batch_norm, canonical_dtype, conv2d, drop_path_rates
from jaxconv.layers.conv import exact_gelu, flat_dot_general, recompute_module_on_cpu
from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.layers.reparam import dilate_kernel, fold_batch_norm, pad_kernel
from jaxconv.registry import register_model
from kernels_pallas import IMPLEMENTATIONS

__all__ = ["DilatedReparamBlock", "GRN", "SqueezeExcite", "UniRepLKNet", "UniRepLKNetBlock",
           "DILATED_BRANCHES"]

PAPER = ("Ding et al. 2024, UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, "
         "Video, Point Cloud, Time-Series and Image Recognition, arXiv:2311.15599")

#: Large kernel -> its parallel (kernel, dilation) branches (the authors' table; each branch's
#: dilated extent (k - 1) * r + 1 fits in the large kernel).
DILATED_BRANCHES = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
}
#: Small kernels a block uses as a plain depthwise conv + BN (no dilated branches).
PLAIN_KERNELS = (3, 5)
KERNEL_SIZES = tuple(sorted((*PLAIN_KERNELS, *DILATED_BRANCHES)))

_LN_EPSILON = 1e-6
_trunc_normal = nn.initializers.truncated_normal(0.02)


def _dense(features, name, *, use_bias=True, dtype=jnp.float32):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=_trunc_normal, dot_general=flat_dot_general, name=name)


class DilatedReparamBlock(nn.Module):
    """Depthwise KxK conv-BN plus dilated small depthwise conv-BNs, summed (the paper's Fig. 2);
    deploy: one depthwise KxK conv with bias (``lk_origin``)."""

    kernel_size: int
    deploy: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        if self.kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"kernel_size must be one of {sorted(DILATED_BRANCHES)} for a "
                             f"dilated reparam block, got {self.kernel_size!r}")
        super().__post_init__()

    def _dw(self, kernel_size, name, dilation=1):
        return DepthwiseConv2D(kernel_size, dilation=dilation, use_bias=self.deploy,
                               dtype=self.dtype, implementation=self.implementation, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = self._dw(self.kernel_size, "lk_origin")(x)
        if self.deploy:
            return out
        out = batch_norm(train, dtype=self.dtype, name="origin_bn")(out)
        for k, r in DILATED_BRANCHES[self.kernel_size]:
            branch = self._dw(k, f"dil_conv_k{k}_{r}", r)(x)
            out = out + batch_norm(train, dtype=self.dtype, name=f"dil_bn_k{k}_{r}")(branch)
        return out

    def deploy_variables(self, variables):
        params, stats = variables["params"], variables["batch_stats"]
        kernel, bias = fold_batch_norm(params["lk_origin"]["kernel"], None, params["origin_bn"],
                                       stats["origin_bn"])
        for k, r in DILATED_BRANCHES[self.kernel_size]:
            branch_kernel, branch_bias = fold_batch_norm(
                params[f"dil_conv_k{k}_{r}"]["kernel"], None, params[f"dil_bn_k{k}_{r}"],
                stats[f"dil_bn_k{k}_{r}"])
            kernel = kernel + pad_kernel(dilate_kernel(branch_kernel, r), self.kernel_size)
            bias = bias + branch_bias
        return {"params": {"lk_origin": {"kernel": kernel, "bias": bias}}}


class SqueezeExcite(nn.Module):
    """x * sigmoid(up(relu(down(mean over H, W of x)))): the authors' SEBlock (with biases)."""

    reduced: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(_dense(self.reduced, "down", dtype=self.dtype)(s))
        s = _dense(x.shape[-1], "up", dtype=self.dtype)(s)
        return x * nn.sigmoid(s)


class GRN(nn.Module):
    """Global response normalisation (Woo et al. 2023, ConvNeXt V2): per channel L2 norm over
    H, W, divided by its mean over channels; ``(gamma * N + 1) * x + beta`` (no ``beta`` when
    ``use_bias=False``, the deploy form)."""

    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.zeros, (channels,), jnp.float32)
        x32 = jnp.asarray(x, jnp.float32)
        gx = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True))
        nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
        out = (gamma * nx + 1.0) * x32
        if self.use_bias:
            out = out + self.param("beta", nn.initializers.zeros, (channels,), jnp.float32)
        return jnp.asarray(out, x.dtype)


class UniRepLKNetBlock(nn.Module):
    """Depthwise conv (dilated reparam block for kernels >= 7), BN, SE, Dense-GELU-GRN-Dense,
    BN, layer scale, + shortcut (drop path)."""

    kernel_size: int
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 1e-6
    ffn_factor: int = 4
    deploy: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        if self.kernel_size not in KERNEL_SIZES:
            raise ValueError(f"kernel_size must be one of {list(KERNEL_SIZES)}, got "
                             f"{self.kernel_size!r}")
        super().__post_init__()

    @property
    def dilated(self) -> bool:
        return self.kernel_size in DILATED_BRANCHES

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim = x.shape[-1]
        if self.dilated:
            y = DilatedReparamBlock(self.kernel_size, self.deploy, self.dtype,
                                    self.implementation, name="dwconv")(x, train)
        else:
            y = DepthwiseConv2D(self.kernel_size, use_bias=self.deploy, dtype=self.dtype,
                                implementation=self.implementation, name="dwconv")(x)
        if not self.deploy:
            y = batch_norm(train, dtype=self.dtype, name="norm")(y)
        y = SqueezeExcite(dim // 4, self.dtype, name="se")(y)
        y = _dense(self.ffn_factor * dim, "pwconv1", dtype=self.dtype)(y)
        y = GRN(use_bias=not self.deploy, name="grn")(exact_gelu(y))
        y = _dense(dim, "pwconv2", use_bias=self.deploy, dtype=self.dtype)(y)
        if not self.deploy:
            y = batch_norm(train, dtype=self.dtype, name="pwconv2_bn")(y)
            if self.layer_scale_init_value:
                init = nn.initializers.constant(self.layer_scale_init_value)
                y = y * self.param("gamma", init, (dim,), jnp.float32).astype(y.dtype)
        return x + DropPath(self.drop_path_rate)(y, deterministic=not train)

    def deploy_variables(self, variables):
        """The authors' ``reparameterize``: the dwconv's BN into the dwconv; GRN's beta, the
        BN after pwconv2 and the layer scale into pwconv2 (all linear, per channel)."""
        params, stats = dict(variables["params"]), variables["batch_stats"]
        norm = params.pop("norm")
        if self.dilated:  # lk_origin: already merged with its branches, has a bias
            conv = params["dwconv"]["lk_origin"]
            kernel, bias = fold_batch_norm(conv["kernel"], conv["bias"], norm, stats["norm"])
            params["dwconv"] = {"lk_origin": {"kernel": kernel, "bias": bias}}
        else:
            kernel, bias = fold_batch_norm(params["dwconv"]["kernel"], None, norm, stats["norm"])
            params["dwconv"] = {"kernel": kernel, "bias": bias}
        beta = params["grn"]["beta"]
        params["grn"] = {"gamma": params["grn"]["gamma"]}
        w = params["pwconv2"]["kernel"]
        kernel, bias = fold_batch_norm(w, beta @ w, params.pop("pwconv2_bn"), stats["pwconv2_bn"])
        if "gamma" in params:
            scale = params.pop("gamma")
            kernel, bias = kernel * scale, bias * scale
        params["pwconv2"] = {"kernel": kernel, "bias": bias}
        return {"params": params}


#: The authors' default kernel sizes per depth setting.
_K13 = 13
DEFAULT_KERNEL_SIZES = {
    (2, 2, 6, 2): ((3, 3), (_K13,) * 2, (_K13,) * 6, (_K13,) * 2),
    (2, 2, 8, 2): ((3, 3), (_K13,) * 2, (_K13,) * 8, (_K13,) * 2),
    (3, 3, 18, 3): ((3, 3, 3), (_K13,) * 3, (_K13, 3) * 9, (_K13,) * 3),
}


class UniRepLKNet(nn.Module):
    """UniRepLKNet over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      depths, dims: blocks and width per stage (4 stages).
      kernel_sizes: per stage, per block depthwise kernel sizes (each one of
        :data:`KERNEL_SIZES`); None: the authors' defaults for ``depths``
        (:data:`DEFAULT_KERNEL_SIZES`: 3x3 in stage 0, 13x13 after, every other block 3x3 in
        stage 2 of T).
      layer_scale_init_value: initial layer scale (0 or None: no layer scale).
      num_classes, dtype (compute dtype; parameters float32), drop_path_rate (linear over the
        blocks).
      implementation: depthwise conv path (None, "xla", "pallas"; see DepthwiseConv2D).
      deploy: the re-parameterized inference form (module docstring); build it with
        :func:`jaxconv.layers.reparam.reparameterize`.
    """

    depths: Sequence[int] = (2, 2, 6, 2)
    dims: Sequence[int] = (40, 80, 160, 320)
    kernel_sizes: Sequence[Sequence[int]] | None = None
    layer_scale_init_value: float | None = 1e-6
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    implementation: str | None = None
    deploy: bool = False

    def __post_init__(self):
        for field in ("depths", "dims"):
            value = getattr(self, field)
            try:
                value = tuple(value)
            except TypeError:
                value = ()
            if len(value) != 4 or not all(isinstance(v, int) and not isinstance(v, bool)
                                          and v > 0 for v in value):
                raise ValueError(f"{field} must be 4 positive ints (one per stage), got "
                                 f"{getattr(self, field)!r}")
            object.__setattr__(self, field, value)
        if any(d % 4 for d in self.dims) or self.dims[0] % 2:
            raise ValueError(f"dims must be multiples of 4 (SE squeezes to dim/4; the stem "
                             f"halves dims[0]), got {self.dims!r}")
        kernel_sizes = self.kernel_sizes
        if kernel_sizes is None:
            if self.depths not in DEFAULT_KERNEL_SIZES:
                raise ValueError(f"kernel_sizes must be given for depths {self.depths}: "
                                 f"defaults exist for {sorted(DEFAULT_KERNEL_SIZES)}")
            kernel_sizes = DEFAULT_KERNEL_SIZES[self.depths]
        try:
            kernel_sizes = tuple(tuple(stage) for stage in kernel_sizes)
        except TypeError:
            kernel_sizes = ()
        if (tuple(len(s) for s in kernel_sizes) != self.depths
                or not all(k in KERNEL_SIZES for s in kernel_sizes for k in s)):
            raise ValueError(f"kernel_sizes must give one kernel per block ({self.depths}), each "
                             f"one of {list(KERNEL_SIZES)}; got {self.kernel_sizes!r}")
        object.__setattr__(self, "kernel_sizes", kernel_sizes)
        ls = self.layer_scale_init_value
        if ls is not None and (isinstance(ls, bool) or not isinstance(ls, (int, float))
                               or ls < 0):
            raise ValueError(f"layer_scale_init_value must be None or a number >= 0, got "
                             f"{ls!r}")
        if (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                or self.num_classes <= 0):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"drop_path_rate must be a float in [0, 1), got {rate!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got "
                             f"{self.implementation!r}")
        if not isinstance(self.deploy, bool):
            raise ValueError(f"deploy must be a bool, got {self.deploy!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    def _conv(self, features, name):
        return conv2d(features, 3, 2, padding=1, use_bias=True, dtype=self.dtype,
                      kernel_init=_trunc_normal, name=name)

    def _ln(self, name):
        return recompute_module_on_cpu(nn.LayerNorm)(epsilon=_LN_EPSILON, dtype=self.dtype,
                                                     param_dtype=jnp.float32, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        dims = self.dims
        x = exact_gelu(self._ln("downsample_layers_0_1")(
            self._conv(dims[0] // 2, "downsample_layers_0_0")(x)))
        x = self._ln("downsample_layers_0_4")(self._conv(dims[0], "downsample_layers_0_3")(x))
        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        first = 0
        for i, (depth, kernels) in enumerate(zip(self.depths, self.kernel_sizes)):
            if i > 0:
                x = self._conv(dims[i], f"downsample_layers_{i}_0")(x)
                x = self._ln(f"downsample_layers_{i}_1")(x)
            for j in range(depth):
                x = UniRepLKNetBlock(kernels[j], rates[first + j], self.layer_scale_init_value,
                                     deploy=self.deploy, dtype=self.dtype,
                                     implementation=self.implementation,
                                     name=f"stages_{i}_{j}")(x, train)
            first += depth
            self.sow("intermediates", f"stage{i}", x)
        x = self._ln("norm")(jnp.mean(x, axis=(1, 2)))
        return jnp.asarray(_dense(self.num_classes, "head", dtype=self.dtype)(x), jnp.float32)


# --------------------------------------------------------------------------------- registry


def _register(fn):
    return register_model(family="unireplknet", paper=PAPER, input_size=(224, 224, 3),
                          num_classes=1000)(fn)


_A_F_P = (2, 2, 6, 2)


@_register
def unireplknet_a(**overrides) -> UniRepLKNet:
    """UniRepLKNet-A (Atto): dims 40..320, depths (2, 2, 6, 2), 4.4M deploy params."""
    return UniRepLKNet(**{"depths": _A_F_P, "dims": (40, 80, 160, 320), **overrides})


@_register
def unireplknet_f(**overrides) -> UniRepLKNet:
    """UniRepLKNet-F (Femto): dims 48..384, depths (2, 2, 6, 2), 6.2M deploy params."""
    return UniRepLKNet(**{"depths": _A_F_P, "dims": (48, 96, 192, 384), **overrides})


@_register
def unireplknet_p(**overrides) -> UniRepLKNet:
    """UniRepLKNet-P (Pico): dims 64..512, depths (2, 2, 6, 2), 10.7M deploy params."""
    return UniRepLKNet(**{"depths": _A_F_P, "dims": (64, 128, 256, 512), **overrides})


@_register
def unireplknet_n(**overrides) -> UniRepLKNet:
    """UniRepLKNet-N (Nano): dims 80..640, depths (2, 2, 8, 2), 18.3M deploy params."""
    return UniRepLKNet(**{"depths": (2, 2, 8, 2), "dims": (80, 160, 320, 640), **overrides})


@_register
def unireplknet_t(**overrides) -> UniRepLKNet:
    """UniRepLKNet-T (Tiny): dims 80..640, depths (3, 3, 18, 3), 31M deploy params."""
    return UniRepLKNet(**{"depths": (3, 3, 18, 3), "dims": (80, 160, 320, 640), **overrides})
