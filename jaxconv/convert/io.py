"""Read a PyTorch-style checkpoint into ``{key: np.ndarray}`` without torch."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["load_state_dict"]

SUFFIXES = (".safetensors", ".npz")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{key: array}`` from a ``.safetensors`` file (needs the ``safetensors`` package; NumPy
    only, no torch) or a ``.npz`` archive (``np.savez`` of a state_dict; no pickle).

    ``.pth``/``.bin``/``.pt`` checkpoints are pickled torch objects: convert them once where torch
    is installed, e.g. ``np.savez(out, **{k: v.numpy() for k, v in torch.load(p).items()})``.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        hint = ""
        if suffix in (".pth", ".pt", ".bin", ".ckpt"):
            hint = (" This is a pickled torch checkpoint; in an environment with torch, save it as "
                    ".npz: np.savez(OUT, **{k: v.numpy() for k, v in torch.load(PATH, "
                    "map_location='cpu').items()}), or as .safetensors with "
                    "safetensors.torch.save_file.")
        raise ValueError(f"load_state_dict: unsupported file type {suffix!r} of {path!r}; "
                         f"valid: {list(SUFFIXES)}.{hint}")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError(
            f"load_state_dict({path!r}) needs the 'safetensors' package for .safetensors files "
            "(NumPy-only, no torch): pip install safetensors"
        ) from err
    return load_file(path)
