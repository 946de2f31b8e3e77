"""Pallas ops on the training loop's 2-D mesh (data x fsdp, config.mesh / config.sharding).

``kernels_pallas.core.shard_batch`` must split the batch over both axes (as the loop's batch
sharding does) and still take parameters that fsdp shards: jit all-gathers them into the
``shard_map`` and reduce-scatters their gradients back. Checked for depthwise_conv2d's
interpreted Pallas path against the unsharded run, forward and gradient, on 8 fake CPU devices.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from kernels_pallas import depthwise_conv2d
    from jaxconv.train import mesh as mesh_lib

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 9, 9, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 8)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((8,)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((16, 9, 9, 8)), jnp.float32)

    def loss(x, w, b, implementation):
        y = depthwise_conv2d(x, w, bias=b, implementation=implementation)
        return jnp.sum((y - target) ** 2), y

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    (ref_value, ref_y), ref_grads = jax.jit(grad, static_argnums=3)(x, w, b, "xla")

    mesh = mesh_lib.make_mesh((("data", 2), ("fsdp", 4)))
    batch = mesh_lib.batch_sharded(mesh)
    w_sh, b_sh = NamedSharding(mesh, P(None, None, "fsdp")), NamedSharding(mesh, P("fsdp"))
    x_s, w_s, b_s = jax.device_put(x, batch), jax.device_put(w, w_sh), jax.device_put(b, b_sh)
    assert w_s.addressable_shards[0].data.shape == (3, 3, 2)  # really sharded over fsdp
    with jax.set_mesh(mesh):
        step = jax.jit(lambda x, w, b: grad(x, w, b, "pallas"),
                       in_shardings=(batch, w_sh, b_sh),
                       out_shardings=((mesh_lib.replicated(mesh), batch), (batch, w_sh, b_sh)))
        jaxpr = str(jax.make_jaxpr(step)(x_s, w_s, b_s))
        hlo = step.lower(x_s, w_s, b_s).compile().as_text()
        (value, y), grads = step(x_s, w_s, b_s)

    assert "shard_map" in jaxpr, "no per-shard Pallas call"
    # inside the shard_map every device sees 16 / (2 * 4) = 2 images: split over both axes
    assert "f32[2,9,9,8]" in jaxpr and "f32[8,9,9,8]" not in jaxpr, jaxpr[:3000]
    assert re.search(r"\\ball-gather\\(", hlo), "w/bias were not gathered"
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    for name, g, r in zip(("x", "w", "bias"), grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=name)
    assert grads[1].addressable_shards[0].data.shape == (3, 3, 2)  # w's layout kept
    print("MESH_2D_OK")
""")


def test_depthwise_pallas_on_a_data_by_fsdp_mesh_matches_unsharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "MESH_2D_OK" in result.stdout, result.stderr[-3000:]
