"""Deterministic, seeded PyTorch-layout state_dicts for weight-conversion parity tests.

NumPy only, on purpose: the fixture generator (``tests/models/timm_fixtures/make_fixtures.py``)
loads this file by path inside a torch + timm environment that has no JAX, and the parity test
rebuilds the very same tensors inside the JAX environment, which has no torch. So a fixture only
stores the (key, shape) list, the seed and timm's logits, a few KB even for VGG-19.

Every tensor has its own generator, seeded by ``(seed, crc32(key))``: a tensor does not depend on
the order of the keys or on which other keys exist. Values follow the role the key's name gives
the tensor, so that a network built from them has activations of a sane scale and every tensor
matters to the output:

=========================  ===========================================================
key ends in                values (float32)
=========================  ===========================================================
``weight``, ndim >= 2      conv / linear weight: N(0, 1 / fan_in), fan_in = prod(shape[1:])
``weight``, ndim 1         norm scale: U(0.5, 1.5)
``running_var``            U(0.5, 2)
``running_mean``           N(0, 0.1^2)
``..._bias_table``         attention logit bias (relative_position_bias_table): N(0, 1), so
                           a wrongly oriented table shows in the logits (CoAtNet)
anything else (``bias``)   N(0, 0.1^2)
``num_batches_tracked``    skipped (a counter; converters ignore it)
=========================  ===========================================================

NumPy documents no cross-version guarantee for ``Generator`` streams (NEP 19), though PCG64
with ``standard_normal``/``random`` has been stable since NumPy 1.17. Fixtures therefore also
store :func:`fingerprint` (per-tensor sums), and the parity test checks it first, so a changed
stream fails with a message saying so rather than as a parity error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Fixture",
    "fingerprint",
    "read_fixture",
    "seeded_input",
    "seeded_state_dict",
    "seeded_tensor",
    "write_fixture",
]

SKIPPED_SUFFIXES = ("num_batches_tracked",)
SMALL_STD = 0.1


def _generator(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def seeded_tensor(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The float32 tensor of ``key`` (values chosen by the key's suffix; see the module doc)."""
    shape = tuple(int(d) for d in shape)
    rng = _generator(seed, key)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "weight" and len(shape) >= 2:
        std = 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if leaf == "relative_position_bias_table":
        return rng.standard_normal(shape, dtype=np.float32)
    if leaf == "weight" or leaf == "running_var":
        lo, hi = (0.5, 1.5) if leaf == "weight" else (0.5, 2.0)
        return rng.random(shape, dtype=np.float32) * np.float32(hi - lo) + np.float32(lo)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(SMALL_STD)


def seeded_state_dict(
    entries: Iterable[tuple[str, Sequence[int]]], seed: int
) -> dict[str, np.ndarray]:
    """``{key: seeded_tensor(key, shape, seed)}`` for ``(key, shape)`` pairs (counters skipped)."""
    return {
        key: seeded_tensor(key, shape, seed)
        for key, shape in entries
        if not key.endswith(SKIPPED_SUFFIXES)
    }


def fingerprint(state_dict: Mapping[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """Float64 sum of each tensor in ``keys`` order: detects a changed random stream."""
    return np.array([np.asarray(state_dict[k]).sum(dtype=np.float64) for k in keys], np.float64)


def seeded_input(shape: Sequence[int], seed: int) -> np.ndarray:
    """Standard-normal float32 input of ``shape`` (NCHW for torch; transpose for NHWC)."""
    return np.random.default_rng(int(seed)).standard_normal(tuple(shape), dtype=np.float32)


# ------------------------------------------------------------------------ parity fixture files


@dataclasses.dataclass(frozen=True)
class Fixture:
    """A parity fixture: what a reference framework output for seeded weights and input.

    ``entries`` is the reference model's full state_dict key list with shapes (counters
    included), ``input_shape`` is NCHW, ``logits`` the reference output.
    """

    name: str
    entries: list[tuple[str, tuple[int, ...]]]
    seed: int
    input_seed: int
    input_shape: tuple[int, ...]
    fingerprint: np.ndarray
    logits: np.ndarray
    slow: bool
    versions: str

    def state_dict(self) -> dict[str, np.ndarray]:
        return seeded_state_dict(self.entries, self.seed)

    def input_nchw(self) -> np.ndarray:
        return seeded_input(self.input_shape, self.input_seed)

    def check_fingerprint(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Raise if ``state_dict`` is not the tensors the fixture was made with."""
        keys = [k for k, _ in self.entries if not k.endswith(SKIPPED_SUFFIXES)]
        got = fingerprint(state_dict, keys)
        bad = [k for k, a, b in zip(keys, got, self.fingerprint) if not np.isclose(a, b, 1e-9, 0)]
        if bad:
            raise AssertionError(
                f"{self.name}: the seeded tensors differ from the fixture's ({len(bad)} keys, "
                f"e.g. {bad[:3]}); NumPy's random stream changed? (fixture made with "
                f"{self.versions}, now numpy={np.__version__}). Regenerate the fixtures."
            )


def write_fixture(path: str | os.PathLike, *, entries: Sequence[tuple[str, Sequence[int]]],
                  state_dict: Mapping[str, np.ndarray], seed: int, input_seed: int,
                  input_shape: Sequence[int], logits: np.ndarray, slow: bool,
                  versions: str) -> None:
    """Write a fixture ``.npz`` (no pickled objects): see :class:`Fixture` for the fields."""
    keys = [k for k, _ in entries]
    np.savez_compressed(
        path,
        keys=np.array(keys),
        shape_ndims=np.array([len(s) for _, s in entries], np.int64),
        shape_dims=np.array([int(d) for _, s in entries for d in s], np.int64),
        seed=np.int64(seed),
        input_seed=np.int64(input_seed),
        input_shape=np.array(input_shape, np.int64),
        fingerprint=fingerprint(state_dict, [k for k in keys if not k.endswith(SKIPPED_SUFFIXES)]),
        logits=np.asarray(logits, np.float32),
        slow=np.int64(bool(slow)),
        versions=np.array(versions),
    )


def read_fixture(path: str | os.PathLike) -> Fixture:
    """Read a fixture written by :func:`write_fixture`."""
    with np.load(path, allow_pickle=False) as f:
        dims = np.split(f["shape_dims"], np.cumsum(f["shape_ndims"])[:-1])
        return Fixture(
            name=os.path.splitext(os.path.basename(os.fspath(path)))[0],
            entries=[(str(k), tuple(int(d) for d in s)) for k, s in zip(f["keys"], dims)],
            seed=int(f["seed"]),
            input_seed=int(f["input_seed"]),
            input_shape=tuple(int(d) for d in f["input_shape"]),
            fingerprint=f["fingerprint"],
            logits=f["logits"],
            slow=bool(f["slow"]),
            versions=str(f["versions"]),
        )
