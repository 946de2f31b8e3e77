"""Model registry: names -> builders, with metadata.

A model family registers each variant with a builder function whose name is the model name::

    @register_model(family="resnet", paper="He et al. 2016, ...", input_size=(32, 32, 3),
                    num_classes=10)
    def resnet20(**overrides) -> nn.Module:
        ...

``create_model(name, **overrides)`` builds the default module, checks the override keys against
its dataclass fields and returns ``module.clone(**overrides)``; nothing is traced or
initialised. Names follow timm's where timm has the model.

Anything that takes a model name also takes a factory outside the registry (a forked model
file, a research module), as ``"package.module:factory"`` or ``"path/to/file.py:factory"``
(relative to the working directory). The factory is called with the overrides (the trainer
passes ``num_classes`` and ``dtype``) and must return a ``flax.linen.Module``; a builder
decorated with :func:`register_model` keeps its metadata (``model_info``) there too.

A module that registers a name already taken by another module (a copy of a jaxconv model
file, imported beside jaxconv) gets a :class:`DuplicateModelWarning` and leaves the registry as
it was: the copy's builders are reached by their ``module:factory`` spec.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import warnings
from typing import Callable

import flax.linen as nn

__all__ = ["DuplicateModelWarning", "ModelInfo", "create_model", "list_models", "model_info",
           "register_model", "resolve_factory"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model."""

    name: str
    family: str
    #: Citation: 'Authors Year, Title, arXiv:XXXX.XXXXX'.
    paper: str
    #: Default input shape of one example, batch excluded: (H, W, C) for an image model, (L, C)
    #: for a sequence model, (L,) for a model over token ids, (D, H, W, C) for volumes.
    input_size: tuple[int, ...]
    #: Default number of classes (the ``num_classes`` field of the built module).
    num_classes: int
    #: Python module that defines the builder.
    module: str = ""
    #: First line of the builder's docstring.
    description: str = ""
    #: dtype of the input: "float32" (images, signals) or "int32" (token ids).
    input_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, _Entry] = {}


INPUT_DTYPES = ("float32", "int32")


class DuplicateModelWarning(UserWarning):
    """A module registered a model name that another module had registered first."""


def register_model(*, family: str, paper: str, input_size: tuple[int, ...], num_classes: int,
                   input_dtype: str = "float32"):
    """Decorator registering ``fn`` (a ``**overrides -> nn.Module`` builder) under ``fn.__name__``.

    ``input_size`` is one example's shape: (H, W, C) images, (L, C) sequences, (L,) token ids
    (with ``input_dtype="int32"``), (D, H, W, C) volumes.
    """
    if not (isinstance(input_size, tuple) and 1 <= len(input_size) <= 4
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_size)):
        raise ValueError("input_size must be a tuple of 1-4 positive ints ((H, W, C) images, "
                         f"(L, C) sequences, (L,) tokens, (D, H, W, C) volumes), got {input_size!r}")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype={input_dtype!r} is not valid; choose one of {list(INPUT_DTYPES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        doc = (fn.__doc__ or "").strip().splitlines()
        info = ModelInfo(
            name=name,
            family=family,
            paper=paper,
            input_size=input_size,
            num_classes=num_classes,
            module=fn.__module__,
            description=doc[0] if doc else "",
            input_dtype=input_dtype,
        )
        # The metadata travels with the builder, for 'module:factory' specs.
        fn.model_info = info
        old = _REGISTRY.get(name)
        # Re-registering the same function (e.g. importlib.reload) replaces it; another module
        # claiming the name (a forked copy of a model file) must not replace jaxconv's entry.
        if old is not None and (old.builder.__module__, old.builder.__qualname__) != (
            fn.__module__, fn.__qualname__
        ):
            # One warning per module: a forked file repeats every name of the original.
            if fn.__module__ not in _WARNED_MODULES:
                _WARNED_MODULES.add(fn.__module__)
                where = _FILE_PATHS.get(fn.__module__, fn.__module__)
                warnings.warn(
                    f"model {name!r} is already registered by {old.builder.__module__}."
                    f"{old.builder.__qualname__}; the one in {where} (and any other taken name "
                    f"there) is not added to the registry (jaxconv's entry stays): name it "
                    f"'{where}:{name}' (or rename the builder)", DuplicateModelWarning,
                    stacklevel=2)
            return fn
        _REGISTRY[name] = _Entry(info, fn)
        return fn

    return decorator


def is_spec(name) -> bool:
    """Whether ``name`` is a ``module:factory`` / ``file.py:factory`` spec (names have no ':')."""
    return isinstance(name, str) and ":" in name


_FILE_MODULES: dict[str, object] = {}   # absolute path -> module
_FILE_PATHS: dict[str, str] = {}        # private module name -> the path it was given as
_WARNED_MODULES: set[str] = set()       # modules told that they registered a taken name


def _load_file(path: str):
    """Import the Python file ``path`` once per absolute path (a stable private module name)."""
    full = os.path.abspath(path)
    if full in _FILE_MODULES:
        return _FILE_MODULES[full]
    if not os.path.isfile(full):
        raise ValueError(f"model file {path!r} does not exist (resolved to {full!r}, relative to "
                         f"the working directory {os.getcwd()!r})")
    stem = os.path.splitext(os.path.basename(full))[0]
    mod_name = f"_jaxconv_file_{stem}_{hashlib.sha1(full.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # before exec: dataclasses and pickling look it up
    _FILE_PATHS[mod_name] = path
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    _FILE_MODULES[full] = module
    return module


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable a ``"package.module:factory"`` or ``"path/to/file.py:factory"`` spec names."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ValueError(f"model spec {spec!r} must be 'package.module:factory' or "
                         "'path/to/file.py:factory' (factory: a Python identifier)")
    if target.endswith(".py"):
        module = _load_file(target)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise ValueError(f"model spec {spec!r}: cannot import {target!r} ({err}); give an "
                             "importable module path or a 'path/to/file.py'") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        close = difflib.get_close_matches(attr, names, n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"model spec {spec!r}: {target!r} has no callable {attr!r}.{hint} "
                         f"Callables defined there: {sorted(names)}")
    return factory


def _create_from_spec(spec: str, overrides: dict) -> nn.Module:
    factory = resolve_factory(spec)
    if hasattr(factory, "model_info"):  # a @register_model builder: the registry's checks
        return _built(spec, factory, overrides)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise ValueError(f"create_model({spec!r}): unknown override(s) {unknown}; the factory "
                             f"takes {sorted(params)} (the trainer passes num_classes and dtype)")
    module = factory(**overrides)
    if not isinstance(module, nn.Module):
        raise ValueError(f"create_model({spec!r}): the factory returned "
                         f"{type(module).__name__}, not a flax.linen.Module")
    return module


def _entry(name: str) -> _Entry:
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.6)
    hint = f"Did you mean {', '.join(map(repr, close))}? " if close else ""
    raise ValueError(
        f"Unknown model {name!r}. {hint}See jaxconv.list_models() for the "
        f"{len(_REGISTRY)} registered models."
    )


def _override_keys(module: nn.Module) -> list[str]:
    return sorted(
        f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")
    )


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``, with dataclass-field ``overrides`` applied.

    ``name`` may also be a ``"package.module:factory"`` or ``"path/to/file.py:factory"`` spec
    (module docstring): the factory is called with the overrides.

    Raises ``ValueError`` for an unknown name (naming close matches), for override keys that are
    not fields of the model (listing the valid keys), and for invalid values (the model's own
    validation, naming the valid values). Nothing is initialised.
    """
    if is_spec(name):
        return _create_from_spec(name, overrides)
    return _built(name, _entry(name).builder, overrides)


def _built(name: str, builder: Callable[..., nn.Module], overrides: dict) -> nn.Module:
    module = builder()
    if not overrides:
        return module
    valid = _override_keys(module)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"create_model({name!r}): unknown override(s) {unknown}; valid keys for "
            f"{type(module).__name__}: {valid}"
        )
    return module.clone(**overrides)


def list_models(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Sorted names of registered models matching the fnmatch ``pattern`` (and ``family``)."""
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatchcase(name, pattern) and (family is None or entry.info.family == family)
    )


def model_info(name: str) -> ModelInfo:
    """Metadata of the registered model ``name`` (``ValueError`` like ``create_model``).

    For a ``module:factory`` spec: the metadata of a factory decorated with
    :func:`register_model` (named by the spec); other factories have none (``ValueError``).
    """
    if is_spec(name):
        info = getattr(resolve_factory(name), "model_info", None)
        if not isinstance(info, ModelInfo):
            raise ValueError(f"model {name!r} has no metadata (input size, classes): decorate the "
                             "factory with @jaxconv.registry.register_model(family=..., paper=..., "
                             "input_size=..., num_classes=...)")
        return dataclasses.replace(info, name=name)
    return _entry(name).info
