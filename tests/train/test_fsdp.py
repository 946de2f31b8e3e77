"""FSDP / ZeRO-3 sharding on a 2-D mesh (config.mesh, config.sharding; jaxconv.train.sharding).

The multi-device checks run one subprocess on 8 fake CPU devices: the same steps data-parallel
(data 8, replicated) and fsdp (data 2 x fsdp 4) must train alike; every large array of the fsdp
state must really be split 4 ways; its checkpoint must restore on data 4 x fsdp 2 and, in this
process (one device), on a single device, with equal values.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from jaxconv.train import mesh as mesh_lib
from jaxconv.train import sharding as sh

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Small enough that the toy model's 3x3x32x32 kernels (9216 elements) are sharded.
MIN_SIZE = 1024

# A real model and optimizer (adamw: two moments per parameter), random but fixed batches.
COMMON = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import jaxconv
    from jaxconv.train.config import default_config
    from jaxconv.train.optim import make_optimizer

    def setup():
        c = default_config()
        c.optimizer, c.learning_rate, c.weight_decay = "adamw", 1e-2, 0.05
        model = jaxconv.create_model("residual_stack", features=32, num_layers=2, num_classes=10)
        tx, schedule = make_optimizer(c, 10)
        return model, tx, schedule
""")

SCRIPT = COMMON + textwrap.dedent("""
    import json, re, sys
    from jaxconv.train import mesh as mesh_lib, sharding as sh
    from jaxconv.train.checkpoint import Checkpointer
    from jaxconv.train.sharding import path_name
    from jaxconv.train.steps import make_train_step

    assert jax.device_count() == 8
    workdir, min_size = sys.argv[1], int(sys.argv[2])
    model, tx, schedule = setup()
    rng = np.random.default_rng(0)
    # two batches in turn: a task 6 steps can learn something of
    batches = [{"image": rng.standard_normal((16, 8, 8, 3)).astype(np.float32),
                "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(2)] * 3

    def train(spec, sharding):
        mesh = mesh_lib.make_mesh(spec)
        state, shardings = sh.create_sharded_train_state(model, tx, (1, 8, 8, 3), 0, mesh,
                                                         sharding, min_size=min_size, ema=True)
        step = jax.jit(make_train_step(model, tx, schedule, num_classes=10, ema_decay=0.9),
                       in_shardings=(shardings, mesh_lib.batch_sharded(mesh)),
                       out_shardings=(shardings, mesh_lib.replicated(mesh)))
        losses = []
        with jax.set_mesh(mesh):
            hlo = step.lower(state, mesh_lib.global_batch(batches[0], mesh)).compile().as_text()
            for b in batches:
                state, metrics = step(state, mesh_lib.global_batch(b, mesh))
                losses.append(float(metrics["loss"]))
        return state, losses, hlo

    _, dp_losses, _ = train((("data", -1),), "replicate")
    state, fsdp_losses, hlo = train((("data", 2), ("fsdp", 4)), "fsdp")

    leaves = []
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        full = np.asarray(x)
        shards = [(s.index, np.asarray(s.data)) for s in x.addressable_shards]
        # every device's piece is the slice of the whole array it claims to be
        pieces_ok = all(np.array_equal(full[i], d) for i, d in shards)
        leaves.append({"name": path_name(path), "shape": list(x.shape),
                       "shard_shapes": sorted({tuple(d.shape) for _, d in shards}),
                       "distinct_pieces": len({tuple((s.start, s.stop) for s in i)
                                               for i, _ in shards}),
                       "pieces_ok": pieces_ok})
    np.savez(workdir + "/state.npz", **{path_name(p): np.asarray(x)
                                        for p, x in jax.tree_util.tree_leaves_with_path(state)})
    ckpt = Checkpointer(workdir)
    ckpt.save(state, wait=True)
    ckpt.close()

    # Restore onto data 4 x fsdp 2: a target with the new layout.
    mesh2 = mesh_lib.make_mesh((("data", 4), ("fsdp", 2)))
    target, shardings2 = sh.create_sharded_train_state(model, tx, (1, 8, 8, 3), 1, mesh2,
                                                       "fsdp", min_size=min_size, ema=True)
    restored = Checkpointer(workdir).restore_latest(target)
    equal = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True))
    same_layout = all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in
                      zip(jax.tree.leaves(restored), jax.tree.leaves(shardings2), strict=True))
    restored_shards = {path_name(p): list(x.addressable_shards[0].data.shape)
                       for p, x in jax.tree_util.tree_leaves_with_path(restored)}
    collectives = {op: len(re.findall(r"\\b" + op + r"\\(", hlo))
                   for op in ("all-gather", "reduce-scatter", "all-reduce", "dynamic-slice")}
    ema_changed = not np.array_equal(np.asarray(state.ema["params"]["layer0_conv"]["kernel"]),
                                     np.asarray(state.params["layer0_conv"]["kernel"]))
    print("RESULT" + json.dumps({"ema_changed": ema_changed,
        "dp_losses": dp_losses, "fsdp_losses": fsdp_losses, "leaves": leaves,
        "restored_equal": equal, "restored_layout": same_layout,
        "restored_shards": restored_shards, "collectives": collectives}))
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), str(MIN_SIZE)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return workdir, json.loads(lines[-1][len("RESULT"):])


def _expected_split_axis(shape, ways):
    """Independent of fsdp_spec: among axes ``ways`` divides, the largest (last on ties)."""
    best = None
    for i, d in enumerate(shape):
        if d % ways == 0 and (best is None or d >= shape[best]):
            best = i
    return best


def test_fsdp_trains_like_data_parallel(run):
    from tests.train.test_train import assert_same_training  # the 8-vs-1 tolerance
    _, r = run
    assert len(r["fsdp_losses"]) == 6
    assert r["ema_changed"]  # the EMA is trained too (and stays sharded: see below)
    assert_same_training(r["fsdp_losses"], r["dp_losses"])
    assert r["fsdp_losses"][4] < r["fsdp_losses"][0]  # it does train (same batch)


def test_large_arrays_are_split_over_fsdp(run):
    """Each array with >= MIN_SIZE elements (params, both adamw moments, the EMA weights) holds
    1/4 of itself per device, along its largest divisible axis; everything else is whole on
    every device."""
    _, r = run
    split = 0
    for leaf in r["leaves"]:
        shape = leaf["shape"]
        assert leaf["pieces_ok"], leaf["name"]
        axis = _expected_split_axis(shape, 4) if math.prod(shape) >= MIN_SIZE else None
        if axis is None:
            assert leaf["shard_shapes"] == [shape], leaf
            assert leaf["distinct_pieces"] == 1
        else:
            want = list(shape)
            want[axis] //= 4
            assert leaf["shard_shapes"] == [want], leaf
            assert math.prod(want) * 4 == math.prod(shape)
            assert leaf["distinct_pieces"] == 4  # 4 different quarters over the 8 devices
            split += 1
    names = [l["name"] for l in r["leaves"]]
    # both conv kernels, their mu, their nu and their EMA
    assert split == 8, names
    assert "ema/params/layer1_conv/kernel" in names
    assert sum("opt_state" in l["name"] and len(l["shard_shapes"][0]) == 4
               and l["shard_shapes"][0][3] == 8 for l in r["leaves"]) == 4


def test_sharded_params_are_gathered_and_gradients_scattered(run):
    """The compiled step all-gathers the sharded kernels for the forward/backward and hands the
    optimizer a gradient shard: XLA:CPU writes the reduce-scatter as an all-reduce followed by a
    dynamic-slice (TPU/GPU passes fuse the pair into a reduce-scatter)."""
    _, r = run
    ops = r["collectives"]
    assert ops["all-gather"] >= 2, ops
    assert ops["reduce-scatter"] + ops["dynamic-slice"] >= 2, ops


def test_checkpoint_restores_on_another_mesh(run):
    _, r = run
    assert r["restored_equal"] and r["restored_layout"]
    assert r["restored_shards"]["params/layer0_conv/kernel"] == [3, 3, 32, 16]  # fsdp 2
    assert r["restored_shards"]["opt_state/0/nu/layer1_conv/kernel"] == [3, 3, 32, 16]
    assert r["restored_shards"]["ema/params/layer1_conv/kernel"] == [3, 3, 32, 16]


def test_checkpoint_restores_on_one_device(run):
    """This process has one device: restore the 8-device fsdp checkpoint into an unsharded
    state built here and compare every array with what the writer held."""
    import jax
    from jaxconv.train.checkpoint import Checkpointer
    from jaxconv.train.state import create_train_state
    assert jax.device_count() == 1
    workdir, _ = run
    scope = {}
    exec(COMMON, scope)
    model, tx, _ = scope["setup"]()
    target = create_train_state(model, tx, (1, 8, 8, 3), seed=1, ema=True)
    restored = Checkpointer(str(workdir)).restore_latest(target)
    saved = np.load(workdir / "state.npz")
    leaves = jax.tree_util.tree_leaves_with_path(restored)
    assert sorted(saved.files) == sorted(sh.path_name(p) for p, _ in leaves)
    for path, x in leaves:
        np.testing.assert_array_equal(np.asarray(x), saved[sh.path_name(path)])
        assert len(x.sharding.device_set) == 1


# --------------------------------------------------------------------- rules, on one process
MESH = AbstractMesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


@pytest.mark.parametrize("shape, min_size, expected", [
    ((3, 3, 64, 128), 1, P(None, None, None, "fsdp")),    # largest divisible axis
    ((3, 3, 256, 6), 1, P(None, None, "fsdp")),            # last axis not divisible by 4
    ((7, 7, 4, 4), 1, P(None, None, None, "fsdp")),        # ties: the last
    ((3, 3, 3, 5), 1, P()),                                # nothing divisible: replicated
    ((1024, 64), 2 ** 16, P("fsdp")),                      # exactly the threshold
    ((1023, 64), 2 ** 16, P()),                            # below it
    ((), 1, P()),
])
def test_fsdp_rule(shape, min_size, expected):
    rules = sh.check_sharding("fsdp")
    assert sh.spec_for("params/x", shape, rules, MESH, min_size=min_size) == expected


def test_regex_rules_first_match_wins():
    rules = sh.check_sharding(((r"head/kernel$", (None, "fsdp")), (r"kernel$", "fsdp"),
                               (r"^params/", "replicate")))
    assert sh.spec_for("params/head/kernel", (256, 8), rules, MESH, min_size=1) == P(None, "fsdp")
    assert sh.spec_for("opt_state/0/mu/head/kernel", (256, 8), rules, MESH, min_size=1) \
        == P(None, "fsdp")
    assert sh.spec_for("params/conv/kernel", (256, 8), rules, MESH, min_size=1) == P("fsdp")
    assert sh.spec_for("params/conv/bias", (256,), rules, MESH, min_size=1) == P()
    assert sh.spec_for("step", (), rules, MESH) == P()  # no rule matches: replicated


def test_rules_as_command_line_text():
    text = "(('head/kernel$', (None, 'fsdp')), ('kernel$', 'fsdp'))"
    rules = sh.check_sharding(text, MESH.axis_names)
    assert [(p.pattern, spec) for p, spec in rules] == [("head/kernel$", (None, "fsdp")),
                                                       ("kernel$", "fsdp")]
    with pytest.raises(ValueError, match=r"config.sharding=.*must be a Python literal"):
        sh.check_sharding("((kernel, fsdp),)")


@pytest.mark.parametrize("sharding, message", [
    ("zero3", r"config.sharding='zero3'.*'replicate', 'fsdp'"),
    ((("(", "fsdp"),), r"config.sharding=.*regex '\(' does not compile"),
    (((".*", "shard"),), r"config.sharding=.*spec 'shard'"),
    (((".*", (None, "model")),), r"config.sharding=.*mesh axes \['model'\]"),
    ((".*",), r"config.sharding=.*\(regex, spec\) pairs"),
])
def test_bad_sharding(sharding, message):
    with pytest.raises(ValueError, match=message):
        sh.check_sharding(sharding, MESH.axis_names)


def test_bad_spec_for_a_shape():
    rules = sh.check_sharding(((r"w", (None, "fsdp")),))
    with pytest.raises(ValueError, match=r"config.sharding=.*dimension of 6 of w .* over 4"):
        sh.spec_for("w", (3, 6), rules, MESH, sharding=(("w", (None, "fsdp")),))


def test_fsdp_needs_an_fsdp_axis():
    import jax
    mesh = mesh_lib.make_mesh((("data", -1),))
    with pytest.raises(ValueError, match=r"config.sharding='fsdp' needs an 'fsdp' axis"):
        sh.tree_shardings({"w": jax.ShapeDtypeStruct((4, 4), np.float32)}, mesh, "fsdp")


@pytest.mark.parametrize("spec, n, expected", [
    ((("data", -1),), 8, (("data", 8),)),
    ((("data", -1), ("fsdp", 4)), 8, (("data", 2), ("fsdp", 4))),
    ((("fsdp", 8), ("data", 1)), 8, (("fsdp", 8), ("data", 1))),
    ((("data", 2), ("fsdp", 4)), 8, (("data", 2), ("fsdp", 4))),
])
def test_parse_mesh(spec, n, expected):
    assert mesh_lib.parse_mesh(spec, n) == expected


@pytest.mark.parametrize("spec, message", [
    ((("data", -1), ("fsdp", 3)), r"config.mesh=.*\(product 3\) do not divide the device count 8"),
    ((("data", 2), ("fsdp", 2)), r"config.mesh=.*multiply to 4, not the device count 8"),
    ((("data", -1), ("fsdp", -1)), r"config.mesh=.*at most one\s+-1"),
    ((("data", 0),), r"config.mesh=.*positive ints"),
    ((("model", -1),), r"config.mesh=.*\['data', 'fsdp'\]"),
    ((("data", 2), ("data", 4)), r"config.mesh=.*distinct"),
    ((), r"config.mesh=.*at least one"),
    ("data", r"config.mesh='data' must be \(\(name, size\), ...\)"),
])
def test_bad_mesh(spec, message):
    with pytest.raises(ValueError, match=message):
        mesh_lib.parse_mesh(spec, 8)


def test_batch_sharding_spans_every_axis():
    mesh = mesh_lib.make_mesh((("data", 1), ("fsdp", 1)))
    assert mesh_lib.batch_sharded(mesh).spec == P(("data", "fsdp"))
    assert mesh_lib.batch_sharded(mesh_lib.make_data_mesh()).spec == P("data")  # as before


# ------------------------------------------------------------------------ the memory bench
BENCH_SCRIPT = textwrap.dedent("""
    import json
    from experiments import bench
    rows = [bench.bench_memory("residual_stack", spec, batch_size=2, image_size=8,
                               dtype="float32", overrides=dict(features=32, num_layers=2),
                               min_size=1024)
            for spec in ((("data", 8),), (("data", 1), ("fsdp", 8)))]
    print("RESULT" + json.dumps(rows))
""")


def test_memory_bench_counts_the_sharded_state():
    """Per-device parameter bytes follow the rule (computed here from the shapes), and XLA's
    own analysis of the compiled step sees the same arguments: state shard + batch shard."""
    import jax
    import jaxconv
    model = jaxconv.create_model("residual_stack", features=32, num_layers=2)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, 3),
                                                                           np.float32)))["params"]
    sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
    full = 4 * sum(sizes)
    # 8-way over the 3x3x32x32 kernels (8 divides 32), the rest whole
    sharded = 4 * sum(n // 8 if n >= MIN_SIZE and n % 8 == 0 and n != 3 * 3 * 3 * 32 else n
                      for n in sizes)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", BENCH_SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULT")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    dp, fsdp = json.loads(lines[-1][len("RESULT"):])
    assert (dp["sharding"], fsdp["sharding"]) == ("replicate", "fsdp"), (dp, fsdp)
    mb = lambda n: n / 2 ** 20  # noqa: E731
    assert dp["params_MB_per_dev"] == pytest.approx(mb(full), abs=1e-3)
    assert fsdp["params_MB_per_dev"] == pytest.approx(mb(sharded), abs=1e-3)
    batch = mb(2 * 8 * 8 * 3 * 4 + 2 * 4)  # this device's images and labels
    for row in (dp, fsdp):
        # adamw: two moments per parameter
        assert row["opt_MB_per_dev"] == pytest.approx(2 * row["params_MB_per_dev"], abs=2e-3)
        state = row["params_MB_per_dev"] + row["opt_MB_per_dev"]
        assert row["arguments_MB"] == pytest.approx(state + batch, abs=3e-3), row
    assert fsdp["arguments_MB"] < dp["arguments_MB"]
