"""The ``conv2d`` factory's general forms (against a direct ``nn.Conv``) and
``experiments.profile_cpu``'s trace accounting and HLO classification (against formulas)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_torch, profile_cpu
from jaxconv.layers import conv


@pytest.mark.parametrize("kwargs, direct", [
    (dict(kernel_size=3), dict(kernel_size=(3, 3), padding=((1, 1), (1, 1)))),
    (dict(kernel_size=(1, 7), padding=(0, 3), use_bias=True),
     dict(kernel_size=(1, 7), padding=((0, 0), (3, 3)), use_bias=True)),
    (dict(kernel_size=4, strides=4, padding="VALID", use_bias=True),
     dict(kernel_size=(4, 4), strides=(4, 4), padding="VALID", use_bias=True)),
    (dict(kernel_size=(3, 2), strides=(2, 1), padding=((1, 0), (2, 1))),
     dict(kernel_size=(3, 2), strides=(2, 1), padding=((1, 0), (2, 1)))),
    (dict(kernel_size=3, padding=2), dict(kernel_size=(3, 3), padding=((2, 2), (2, 2)))),
])
def test_conv2d_forms_equal_direct_nn_conv(kwargs, direct):
    """The models' former ``nn.Conv(...)`` calls and their ``conv2d`` replacements: same
    parameter tree (names, shapes), same outputs on the same parameters (float32 round-off).
    Shapes come from ``eval_shape`` and values from numpy: jitting Flax's RNG init alone takes
    ~10 s on the 2-core CPU."""
    ours = conv.conv2d(5, **kwargs)
    direct = dict(direct)
    ref = nn.Conv(5, use_bias=direct.pop("use_bias", False), param_dtype=jnp.float32, **direct)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)
    key = jax.random.PRNGKey(1)
    shapes = jax.eval_shape(ours.init, key, x)
    assert jax.tree.structure(shapes) == jax.tree.structure(jax.eval_shape(ref.init, key, x))
    jax.tree.map(lambda a, b: a.shape == b.shape or pytest.fail(f"{a.shape} != {b.shape}"),
                 shapes, jax.eval_shape(ref.init, key, x))
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(jax.jit(ours.apply)(variables, x),
                                   jax.jit(ref.apply)(variables, x), rtol=1e-5, atol=1e-5)


def test_exclusive_times_subtract_nested_events():
    events = [  # thread 1: a [0, 10) holds b [2, 5) which holds c [3, 4); d [10, 12) after
        {"ph": "X", "tid": 1, "ts": 0.0, "dur": 10.0, "name": "a"},
        {"ph": "X", "tid": 1, "ts": 2.0, "dur": 3.0, "name": "b"},
        {"ph": "X", "tid": 1, "ts": 3.0, "dur": 1.0, "name": "c"},
        {"ph": "X", "tid": 1, "ts": 10.0, "dur": 2.0, "name": "d"},
        {"ph": "X", "tid": 2, "ts": 1.0, "dur": 4.0, "name": "e"},  # other thread: overlaps a
        {"ph": "M", "tid": 1, "name": "thread_name"},
    ]
    got = dict(profile_cpu.exclusive_times(events))
    assert got == {"a": 10 - 3, "b": 3 - 1, "c": 1, "d": 2, "e": 4}


def test_profile_classifies_a_traced_conv_step(tmp_path):
    """A jitted loss + gradient of two convs, traced: the forward, input-gradient and
    kernel-gradient convolutions are found, with the FLOPs of the formula
    2 x B x Ho x Wo x kh x kw x Cin x Cout each (the first conv's input gradient is not
    needed: x is not differentiated)."""
    b, h, w, c1, c2, c3 = 3, 12, 10, 4, 6, 5
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, h, w, c1)), jnp.float32)
    w1 = jnp.asarray(rng.normal(size=(3, 3, c1, c2)), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(3, 3, c2, c3)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(ws):
        y = jax.lax.conv_general_dilated(x, ws[0], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=dn)
        y = jax.lax.conv_general_dilated(jnp.tanh(y), ws[1], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=dn)
        return jnp.sum(y ** 2)

    compiled = jax.jit(jax.grad(loss)).lower((w1, w2)).compile()
    instrs = profile_cpu.parse_hlo(compiled.as_text())
    module = compiled.as_text().split("HloModule ", 1)[1].split(",", 1)[0].split()[0]
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        jax.block_until_ready(compiled((w1, w2)))
    times = profile_cpu.thunk_times(str(tmp_path), module)
    assert times and all(t >= 0 for t in times.values())
    flops = {}
    for name in times:
        cls, f, _ = profile_cpu.classify(instrs, name, b)
        if cls.startswith("conv"):
            flops[cls] = flops.get(cls, 0.0) + f
    per_conv = 2 * b * h * w * 9
    assert flops == pytest.approx({"conv fwd": per_conv * (c1 * c2 + c2 * c3),
                                   "conv dx": per_conv * c2 * c3,
                                   "conv dw": per_conv * (c1 * c2 + c2 * c3)})


@pytest.mark.parametrize("name, cls", [
    ("aten::mkldnn_convolution", "conv fwd"), ("aten::convolution_backward", "conv dx+dw"),
    ("aten::native_batch_norm", "norm fwd"), ("aten::native_batch_norm_backward", "norm bwd"),
    ("aten::addmm", "matmul fwd"), ("aten::_foreach_add_", "optimizer+glue"),
    ("aten::max_pool2d_with_indices", "pooling"), ("aten::copy_", "layout"),
    ("aten::threshold_backward", "elementwise bwd"), ("aten::relu_", "elementwise fwd"),
    ("aten::nll_loss_forward", "loss"), ("aten::sum", "reduce"),
])
def test_torch_op_classes(name, cls):
    assert bench_torch.torch_op_class(name) == cls
    assert cls in profile_cpu.CLASSES


def test_cpu_compiler_options_keep_convolutions_out_of_ynnpack():
    """With ``CPU_COMPILER_OPTIONS`` no convolution is compiled into a YNNPACK fusion (they
    go to XLA's own convolution), and forward + both gradients equal the default compile's
    within float32 round-off."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 32)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 32, 32)), jnp.float32)

    def f(x, w):
        y, vjp = jax.vjp(lambda x, w: conv.cpu_conv(x, w, (1, 1), ((1, 1), (1, 1)),
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")),
                         x, w)
        return (y, *vjp(jnp.cos(y)))

    assert conv.cpu_compiler_options() == conv.CPU_COMPILER_OPTIONS
    lowered = jax.jit(f).lower(x, w)
    ours = lowered.compile(compiler_options=conv.cpu_compiler_options())
    instrs = profile_cpu.parse_hlo(ours.as_text())
    for name, ins in instrs.items():
        if name.startswith("%") or ins["opcode"] != "fusion":
            continue
        ops = {m["opcode"] for m in profile_cpu._fused(instrs, name)}
        assert not ("convolution" in ops and "ynn" in name), name
    for a, b in zip(ours(x, w), lowered.compile()(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_profile_defaults_to_the_options_bench_compiles_with(monkeypatch):
    """Without --compiler_option the profiled step is the one experiments.bench times (compiled
    with CPU_COMPILER_OPTIONS); --xla_defaults profiles XLA's own options."""
    seen = []
    monkeypatch.setattr(profile_cpu, "profile_jax",
                        lambda *args, **kwargs: seen.append(args[5]) or {})
    monkeypatch.setattr(profile_cpu, "print_report", lambda *args: None)
    profile_cpu.main(["--model", "resnet20"])
    profile_cpu.main(["--model", "resnet20", "--xla_defaults"])
    profile_cpu.main(["--model", "resnet20", "--compiler_option", "xla_cpu_prefer_vector_width=512"])
    assert seen == [conv.CPU_COMPILER_OPTIONS, {}, {"xla_cpu_prefer_vector_width": "512"}]
