"""How the train state is laid out over the mesh: ``config.sharding``.

* ``"replicate"`` (default): every array whole on every device (plain data parallelism).
* ``"fsdp"``: ZeRO-3-like. Each array of the state with at least :data:`FSDP_MIN_SIZE` elements
  has its largest axis that the ``fsdp`` mesh axis divides split over ``fsdp``; the rest stay
  replicated. The rule looks only at shapes, so a parameter, its optimizer moments (optax states
  mirror the parameter tree) and its EMA copy get the same layout.
* Rules, big_vision style: ``((regex, spec), ...)``. Each state array is named by its path,
  e.g. ``params/stages_2/block_0/conv/kernel``, ``opt_state/0/mu/stages_2/block_0/conv/kernel``,
  ``ema/...``; the first rule whose regex ``re.search``-es the name gives its spec, and arrays no
  rule matches are replicated. A spec is ``"fsdp"`` (the rule above), ``"replicate"``, or one
  mesh axis name (or None) per leading dimension, e.g. ``(None, None, None, "fsdp")``.

The batch is split over every mesh axis (:func:`jaxconv.train.mesh.batch_sharded`). ``jax.jit``
with these shardings as in/out shardings does the rest: sharded parameters are all-gathered
where the forward needs them, and the gradients, summed over the batch, leave the backward pass
reduce-scattered to their parameter's layout, so the optimizer updates only the local shard.
"""
from __future__ import annotations

import ast
import math
import re

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxconv.train.mesh import FSDP_AXIS

#: Arrays smaller than this (elements) stay replicated under "fsdp": 2**16 floats are 256 KiB,
#: where one more collective costs more in latency than the memory saved is worth. Biases, norm
#: scales and BN statistics are all below it: in convnext_base (resnet152) 268 of 344 (323 of
#: 467) parameter arrays, but only 1.2% (0.7%) of the parameters, so the saving stays close
#: to the full 1/fsdp while most arrays need no gather at all.
FSDP_MIN_SIZE = 2 ** 16

MODES = ("replicate", "fsdp")


def _bad(sharding, why: str) -> ValueError:
    return ValueError(f"config.sharding={sharding!r}: {why}. Valid: 'replicate', 'fsdp', or "
                      "rules ((regex, spec), ...) with spec 'fsdp', 'replicate' or a tuple of "
                      "mesh axis names / None per dimension")


def check_sharding(sharding, axis_names=None) -> tuple[tuple[re.Pattern, object], ...]:
    """Validates ``config.sharding`` (and, given the mesh's ``axis_names``, that the axes it
    uses exist); returns it as compiled rules. Raises ValueError naming config.sharding."""
    if isinstance(sharding, str) and sharding.lstrip()[:1] in ("(", "["):
        # Rules given on the command line: the field's default is a string, so
        # --config.sharding="((regex, spec), ...)" arrives as the literal's text.
        try:
            sharding = ast.literal_eval(sharding)
        except (ValueError, SyntaxError):
            raise _bad(sharding, "rules given as text must be a Python literal") from None
    if isinstance(sharding, str):
        if sharding not in MODES:
            raise _bad(sharding, f"unknown mode {sharding!r}")
        rules = ((".*", sharding),)
    else:
        try:
            rules = tuple(sharding)
        except TypeError:
            rules = None
        if rules is None or not all(isinstance(r, (tuple, list)) and len(r) == 2 for r in rules):
            raise _bad(sharding, "rules must be (regex, spec) pairs")
    compiled = []
    for regex, spec in rules:
        try:
            pattern = re.compile(regex)
        except (re.error, TypeError) as e:
            raise _bad(sharding, f"regex {regex!r} does not compile ({e})") from None
        if isinstance(spec, str) and spec in MODES:
            used = [FSDP_AXIS] if spec == "fsdp" else []
        elif isinstance(spec, (tuple, list)) and all(
                a is None or isinstance(a, str) or
                (isinstance(a, (tuple, list)) and all(isinstance(b, str) for b in a))
                for a in spec):
            spec = tuple(tuple(a) if isinstance(a, list) else a for a in spec)
            used = [b for a in spec if a is not None for b in ((a,) if isinstance(a, str) else a)]
        else:
            raise _bad(sharding, f"spec {spec!r} of rule {regex!r} is not valid")
        if axis_names is not None:
            missing = [a for a in used if a not in axis_names]
            if missing:
                raise _bad(sharding, f"rule {regex!r} uses mesh axes {missing} that config.mesh "
                                     f"does not have (it has {list(axis_names)})")
        compiled.append((pattern, spec))
    return tuple(compiled)


def fsdp_spec(shape, fsdp_size: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """The "fsdp" rule for one array: its largest axis divisible by ``fsdp_size`` (the last such
    on ties: output channels for conv and dense kernels) over ``fsdp``, when the array has at
    least ``min_size`` elements; else replicated."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], i))
    return P(*([None] * axis), FSDP_AXIS)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path) -> str:
    """``params/stem/conv/kernel`` for a ``jax.tree_util`` key path."""
    return "/".join(_key_name(k) for k in path)


def spec_for(name: str, shape, rules, mesh: Mesh, *, min_size: int = FSDP_MIN_SIZE,
             sharding=None) -> P:
    """The PartitionSpec the first matching rule gives the array ``name`` of ``shape``."""
    for pattern, spec in rules:
        if not pattern.search(name):
            continue
        if spec == "replicate":
            return P()
        if spec == "fsdp":
            return fsdp_spec(shape, dict(mesh.shape).get(FSDP_AXIS, 1), min_size)
        if len(spec) > len(shape):
            raise _bad(sharding, f"spec {spec!r} has more entries than {name} has dimensions "
                                 f"(shape {tuple(shape)})")
        for dim, axes in zip(shape, spec):
            size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else
                                                     (axes or ())))
            if dim % size:
                raise _bad(sharding, f"spec {spec!r} splits a dimension of {dim} of {name} "
                                     f"(shape {tuple(shape)}) over {size} devices")
        return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh, sharding="replicate", *, min_size: int = FSDP_MIN_SIZE):
    """A pytree of NamedSharding for ``tree`` (arrays or ShapeDtypeStructs) under ``sharding``
    (``config.sharding``'s values); leaves are named by their path in ``tree``."""
    if isinstance(sharding, str) and sharding == "fsdp" and FSDP_AXIS not in mesh.axis_names:
        raise ValueError(f"config.sharding='fsdp' needs an {FSDP_AXIS!r} axis in config.mesh "
                         f"(the mesh has {list(mesh.axis_names)}), e.g. (('data', -1), "
                         f"('{FSDP_AXIS}', 4))")
    rules = check_sharding(sharding, mesh.axis_names)

    def leaf(path, x):
        return NamedSharding(mesh, spec_for(path_name(path), tuple(x.shape), rules, mesh,
                                            min_size=min_size, sharding=sharding))
    return jax.tree_util.tree_map_with_path(leaf, tree)


def state_shardings(state, mesh: Mesh, config, *, min_size: int = FSDP_MIN_SIZE):
    """NamedShardings for a whole ``TrainState`` (params, optimizer state, EMA, batch
    statistics, step, rng) under ``config.sharding``; ``config`` may also be the sharding value
    itself. Use them as ``jax.jit(train_step, in_shardings=(these, batch_sharded(mesh)),
    out_shardings=(these, replicated(mesh)))``."""
    sharding = getattr(config, "sharding", config)
    return tree_shardings(state, mesh, sharding, min_size=min_size)


def create_sharded_train_state(model, tx, input_shape, seed: int, mesh: Mesh, config, *,
                               min_size: int = FSDP_MIN_SIZE, **kwargs):
    """``create_train_state(model, tx, input_shape, seed, **kwargs)``'s state (bitwise the same
    values), initialized straight into its shardings under ``config.sharding``, so no device
    ever holds more than its share; returns ``(state, shardings)``."""
    from jaxconv.train.state import create_train_state

    def init():
        return create_train_state(model, tx, input_shape, seed, **kwargs)

    shardings = state_shardings(jax.eval_shape(init), mesh, config, min_size=min_size)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return state, shardings


def per_device_bytes(tree, shardings) -> int:
    """Bytes of ``tree``'s arrays that one device holds under ``shardings`` (the largest shard
    of each array, from the shapes alone)."""
    def one(x, s):
        shard = s.shard_shape(tuple(x.shape))
        return math.prod(shard) * jax.numpy.dtype(x.dtype).itemsize
    return sum(jax.tree.leaves(jax.tree.map(one, tree, shardings)))
