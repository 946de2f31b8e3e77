"""Model registry: names -> builders, with metadata.

A model family registers each variant with a builder function whose name is the model name::

    @register_model(family="resnet", paper="He et al. 2016, ...", input_size=(32, 32, 3),
                    num_classes=10)
    def resnet20(**overrides) -> nn.Module:
        ...

``create_model(name, **overrides)`` builds the default module, checks the override keys against
its dataclass fields and returns ``module.clone(**overrides)``; nothing is traced or
initialised. Names follow timm's where timm has the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Callable

import flax.linen as nn

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]


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
        old = _REGISTRY.get(name)
        # Re-registering the same function (e.g. importlib.reload) replaces it; a different
        # function claiming an existing name is a bug.
        if old is not None and (old.builder.__module__, old.builder.__qualname__) != (
            fn.__module__, fn.__qualname__
        ):
            raise ValueError(
                f"model {name!r} is already registered by {old.builder.__module__}."
                f"{old.builder.__qualname__}"
            )
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
        _REGISTRY[name] = _Entry(info, fn)
        return fn

    return decorator


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

    Raises ``ValueError`` for an unknown name (naming close matches), for override keys that are
    not fields of the model (listing the valid keys), and for invalid values (the model's own
    validation, naming the valid values). Nothing is initialised.
    """
    entry = _entry(name)
    module = entry.builder()
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
    """Metadata of the registered model ``name`` (``ValueError`` like ``create_model``)."""
    return _entry(name).info
