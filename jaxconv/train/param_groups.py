"""Per-parameter learning-rate multipliers: layer-wise lr decay and regex rules.

Layer decay (BEiT; timm's ``param_groups_layer_decay``) gives every parameter a layer id and
multiplies its whole update by ``decay ** (max_id - id)``: the head learns at the full rate,
the stem slowest. The ids follow timm's ``group_matcher(coarse=False)`` of each family, so a
fine-tuning recipe from timm transfers as is. They are computed on timm's module names, which
jaxconv's converter (:mod:`jaxconv.convert.timm`) derives from the Flax paths, so the groups
cannot drift from the names the weights are imported under. A parameter's *sort key* orders
the groups (stem < stage s block b < head); equal keys share an id, and a key marked
``merge`` (a final norm) joins the group just before it, as timm's ``MATCH_PREV_GROUP`` does.

Regex rules (big_vision's per-parameter schedules): ``((regex, multiplier), ...)`` searched in
the '/'-joined parameter path (``stages_0/blocks_1/conv_dw/kernel``); the first rule that
matches sets the multiplier, unmatched parameters keep 1; multiplier 0 freezes.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import jax
import numpy as np

#: The sort key of timm's unmatched parameters (the head): after every other group.
_HEAD = (math.inf,)


def _match(patterns, key: str):
    for pattern, make in patterns:
        m = re.match(pattern, key)
        if m:
            return make(*map(int, m.groups()))
    return _HEAD, False


# Per family: (regex on the timm parameter name, groups -> (sort key, merge with previous)).
# Written from each timm model's ``group_matcher(coarse=False)``.
_CONVNEXT = (
    (r"stem", lambda: ((0,), False)),
    # A stage's downsample shares block 0's group.
    (r"stages\.(\d+)\.downsample", lambda s: ((1, s, 0), False)),
    (r"stages\.(\d+)\.blocks\.(\d+)", lambda s, b: ((1, s, b), False)),
    (r"norm_pre", lambda: ((1, math.inf), True)),
)
_RESNET = (
    (r"(?:conv1|bn1|maxpool)", lambda: ((0,), False)),    # the stem (deep stems: conv1.0, ...)
    (r"layer(\d+)\.(\d+)", lambda s, b: ((1, s, b), False)),
)
_COATNET = (
    (r"stem", lambda: ((0,), False)),
    (r"stages\.(\d+)", lambda s: ((1, s), False)),      # one group per stage
    (r"norm", lambda: ((1, math.inf), True)),           # the final norm joins the last stage
)
LAYER_DECAY_RULES = {
    "convnext": _CONVNEXT, "inception_next": _CONVNEXT,
    "resnet": _RESNET, "ecaresnet": _RESNET,
    "coatnet": _COATNET,
}
#: Registry families whose models support ``config.layer_decay``.
LAYER_DECAY_FAMILIES = tuple(sorted(LAYER_DECAY_RULES))

# ``nn.scan``-stacked ResNet blocks: ``layer{s}_scan`` row i is timm's ``layer{s}.{i+1}``.
_SCANNED = re.compile(r"^layer(\d+)_scan$")


def path_name(path) -> str:
    """The '/'-joined name of a ``jax.tree_util`` key path (``stages_0/blocks_1/conv/kernel``)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _leaves(params) -> list[tuple[str, object]]:
    return [(path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


def model_family(model_name: str) -> str | None:
    """The registry family of ``model_name``, or None for a model outside the registry."""
    from jaxconv.registry import model_info
    try:
        return model_info(model_name).family
    except (ValueError, KeyError):
        return None


def _timm_names(model_name: str, name: str, leaf) -> list[str]:
    """timm's name(s) of the parameter ``name``: one, or one per row of a scanned leaf."""
    from jaxconv.convert.timm import _family_rule  # the family's Flax path -> timm name rule
    rule = _family_rule(model_name)
    *modules, last = name.split("/")
    m = _SCANNED.match(modules[0]) if modules else None
    if m:
        rest = rule.module_key(tuple(modules[1:]))
        return [f"layer{m.group(1)}.{i + 1}.{rest}.{last}" for i in range(leaf.shape[0])]
    return [f"{rule.module_key(tuple(modules))}.{last}" if modules else last]


def layer_ids(model_name: str, params) -> tuple[dict[str, int | np.ndarray], int]:
    """timm's layer id of every parameter of ``model_name``: ``({path name: id}, num_layers)``.

    A scanned leaf (``layer{s}_scan``) gets an int array of one id per stacked block, shaped to
    broadcast against the leaf. Raises ValueError for a family without rules.
    """
    family = model_family(model_name)
    if family not in LAYER_DECAY_RULES:
        raise ValueError(f"config.layer_decay: model {model_name!r} (family {family!r}) has no "
                         f"layer groups; supported families: {list(LAYER_DECAY_FAMILIES)}")
    patterns = LAYER_DECAY_RULES[family]
    keys = {name: [_match(patterns, t) for t in _timm_names(model_name, name, leaf)]
            for name, leaf in _leaves(params)}
    ordered = sorted({k for ks in keys.values() for k in ks}, key=lambda k: k[0])
    group, last = {}, -1
    for sort_key, merge in ordered:
        if last < 0 or not merge:
            last += 1
        group[(sort_key, merge)] = last
    ids = {}
    for (name, leaf), ks in zip(_leaves(params), keys.values()):
        if _SCANNED.match(name.split("/")[0]):
            ids[name] = np.array([group[k] for k in ks]).reshape((-1,) + (1,) * (leaf.ndim - 1))
        else:
            ids[name] = group[ks[0]]
    return ids, last + 1


def layer_decay_scales(model_name: str, params, decay: float) -> dict:
    """``{path name: decay ** (num_layers - 1 - layer id)}`` (floats; arrays for scanned leaves)."""
    ids, n = layer_ids(model_name, params)
    return {name: (decay ** (n - 1 - i)) if isinstance(i, int)
            else (decay ** (n - 1 - i)).astype(np.float32) for name, i in ids.items()}


def check_param_rules(rules) -> list[tuple[re.Pattern, float]]:
    """``config.param_rules`` as compiled (regex, multiplier) pairs; ValueError if malformed."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ValueError(f"config.param_rules={rules!r} must be a tuple of (regex, multiplier) "
                         "pairs, e.g. (('^stem', 0.0), ('head', 10.0))")
    compiled = []
    for rule in rules:
        if (isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2
                or not isinstance(rule[0], str)):
            raise ValueError(f"config.param_rules: {rule!r} is not a (regex, multiplier) pair")
        pattern, mult = rule
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"config.param_rules: {pattern!r} is not a valid regex ({e})") \
                from None
        if (isinstance(mult, bool) or not isinstance(mult, (int, float, np.integer, np.floating))
                or not math.isfinite(mult) or mult < 0):
            raise ValueError(f"config.param_rules: the multiplier of {pattern!r} is {mult!r}; it "
                             "must be a finite number >= 0 (0 freezes the parameters)")
        compiled.append((regex, float(mult)))
    return compiled


def rule_multipliers(rules, params, *, check_unused: bool = True) -> dict[str, float]:
    """``{path name: multiplier}`` from ``config.param_rules`` (first ``re.search`` match wins;
    1.0 where none matches). ``check_unused``: a rule that takes no parameter is a ValueError
    (a misspelt pattern would otherwise silently change nothing)."""
    compiled = check_param_rules(rules)
    out, used = {}, [False] * len(compiled)
    for name, _ in _leaves(params):
        out[name] = 1.0
        for i, (regex, mult) in enumerate(compiled):
            if regex.search(name):
                out[name], used[i] = mult, True
                break
    unused = [compiled[i][0].pattern for i, u in enumerate(used) if not u]
    if check_unused and unused:
        examples = ", ".join(list(out)[:5])
        raise ValueError(f"config.param_rules: {unused} match no parameter (or only parameters "
                         f"an earlier rule took); names look like: {examples}, ...")
    return out


def multiplier_tree(params, multipliers: dict[str, object]):
    """``params``-shaped tree of the multipliers by path name (1.0 where absent)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: multipliers.get(path_name(p), 1.0),
                                            params)


def make_multipliers(config) -> Callable[[object], dict[str, object]] | None:
    """A function params -> {path name: lr multiplier} combining ``config.layer_decay`` and
    ``config.param_rules`` (their product), or None when neither is set."""
    decay, rules = config.get("layer_decay"), tuple(config.get("param_rules") or ())
    if decay is None and not rules:
        return None
    model = config.model

    def multipliers(params):
        out = dict(rule_multipliers(rules, params)) if rules else {}
        if decay is not None:
            for name, scale in layer_decay_scales(model, params, float(decay)).items():
                out[name] = out.get(name, 1.0) * scale
        return out

    return multipliers


def classifier_mask(params, num_classes: int):
    """True on every parameter except the classifier: Dense kernels ``[C, num_classes]`` and the
    biases beside them (NFNets and timm leave the final linear layer out of AGC)."""
    names = [n for n, _ in _leaves(params)]
    shapes = dict(_leaves(params))
    heads = {n.rsplit("/", 1)[0] for n in names
             if n.endswith("/kernel") and len(shapes[n].shape) == 2
             and shapes[n].shape[-1] == num_classes}
    return jax.tree_util.tree_map_with_path(
        lambda p, _: path_name(p).rsplit("/", 1)[0] not in heads, params)


def merge_pretrained(params, pretrained, reinit=()) -> tuple[object, list[str]]:
    """``params`` with every leaf taken from ``pretrained`` (same tree layout, e.g. a checkpoint's
    ``state["params"]``) except those whose name matches a regex of ``reinit`` (kept as freshly
    initialised, e.g. ``("^head/fc/",)`` for a new classifier). Returns ``(params, names kept)``.

    A leaf missing from ``pretrained`` or shaped differently must be matched by ``reinit``:
    otherwise ValueError listing them (a wrong checkpoint would train mostly from scratch).
    """
    compiled = [re.compile(r) for r in reinit]
    loaded = dict(_leaves(pretrained))
    kept, bad = [], []

    def pick(path, fresh):
        name = path_name(path)
        if any(r.search(name) for r in compiled):
            kept.append(name)
            return fresh
        old = loaded.get(name)
        if old is None or tuple(old.shape) != tuple(fresh.shape):
            bad.append(f"{name} {tuple(fresh.shape)} <- "
                       f"{'missing' if old is None else tuple(old.shape)}")
            return fresh
        return jax.numpy.asarray(old, fresh.dtype)

    merged = jax.tree_util.tree_map_with_path(pick, params)
    if bad:
        raise ValueError(f"the pretrained parameters do not fit the model ({len(bad)} leaves; "
                         f"match them with a re-init regex to train them from scratch): "
                         + "; ".join(bad[:10]))
    return merged, kept
