"""UCR/UEA time-series classification sets bundled inside the `aeon` wheel, read offline.

aeon (https://www.aeon-toolkit.org) ships a few archive problems as `.ts` files inside its
package (aeon/datasets/data/NAME/NAME_{TRAIN,TEST}.ts). jaxconv reads only those files, with its
own small parser: aeon is never imported (its loaders download anything not bundled, and its
dependencies -- numba, pandas<3.1 -- are not needed to read text files). Installing the wheel
without its dependencies is enough:

    pip install --no-deps aeon==1.6.0

`.ts` format (the subset these files use): `#` comment lines, `@key value` header lines, then
after `@data` one series per line: the dimensions separated by ':', the values of a dimension by
',', and the class label as the last ':'-separated field. The bundled "_eq" variants of the
unequal-length problems (JapaneseVowels, PickupGestureWiimoteZ) are used, so every series of a
problem has the same length. Classes are numbered 0.. in the order of the `@classLabel` header.
"""

from __future__ import annotations

import functools
import os

import numpy as np

__all__ = ["UCR_PROBLEMS", "aeon_data_dir", "read_ts", "load_ucr"]

# jaxconv name suffix -> (aeon folder, file stem). Names are `ucr_<suffix>`.
UCR_PROBLEMS = {
    "gunpoint": ("GunPoint", "GunPoint"),
    "arrowhead": ("ArrowHead", "ArrowHead"),
    "osuleaf": ("OSULeaf", "OSULeaf"),
    "acsf1": ("ACSF1", "ACSF1"),
    "italypowerdemand": ("ItalyPowerDemand", "ItalyPowerDemand"),
    "basicmotions": ("BasicMotions", "BasicMotions"),
    "japanesevowels": ("JapaneseVowels", "JapaneseVowels_eq"),
    "pickupgesturewiimotez": ("PickupGestureWiimoteZ", "PickupGestureWiimoteZ_eq"),
}


def aeon_data_dir() -> str:
  """The folder of aeon's bundled data files; FileNotFoundError saying how to install it."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    dist = metadata.distribution("aeon")
  except metadata.PackageNotFoundError:
    raise FileNotFoundError(
        "The UCR/UEA datasets are read from the files bundled in the `aeon` wheel, which is not "
        "installed. Install it without its dependencies (only its data files are read): "
        "pip install --no-deps aeon==1.6.0") from None
  path = os.fspath(dist.locate_file(os.path.join("aeon", "datasets", "data")))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"aeon {dist.version} is installed but has no bundled data folder "
                            f"at {path}; reinstall it: pip install --no-deps aeon==1.6.0")
  return path


def read_ts(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Parses an equal-length `.ts` file: (series float32 [N, L, C], labels int64 [N], classes)."""
  classes, rows, labels = None, [], []
  in_data = False
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if not in_data:
        key, _, value = line.partition(" ")
        key = key.lower()
        if key == "@classlabel":
          flag, *names = value.split()
          if flag.lower() != "true" or not names:
            raise ValueError(f"{path}: only labelled classification problems are supported")
          classes = names
        elif key == "@data":
          in_data = True
        continue
      *dims, label = line.split(":")
      series = np.array([[float(v) for v in d.split(",")] for d in dims], np.float32)
      rows.append(series.T)  # [L, C]: channels last
      labels.append(label.strip())
  if classes is None or not rows:
    raise ValueError(f"{path}: no @classLabel header or no data")
  lengths = {r.shape for r in rows}
  if len(lengths) != 1:
    raise ValueError(f"{path}: series of unequal shapes {sorted(lengths)[:4]}")
  index = {c: i for i, c in enumerate(classes)}
  unknown = sorted(set(labels) - set(index))
  if unknown:
    raise ValueError(f"{path}: labels {unknown} are not in @classLabel {classes}")
  x = np.stack(rows)
  if not np.isfinite(x).all():
    raise ValueError(f"{path}: missing or non-finite values")
  return x, np.array([index[l] for l in labels], np.int64), classes


@functools.lru_cache(maxsize=16)
def load_ucr(problem: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(series float32 [N, L, C], labels int64 [N]) of `problem` (a key of UCR_PROBLEMS), split
  "train" or "test", read-only and cached."""
  if problem not in UCR_PROBLEMS:
    raise ValueError(f"unknown UCR problem {problem!r}; bundled: {sorted(UCR_PROBLEMS)}")
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  folder, stem = UCR_PROBLEMS[problem]
  x, y, _ = read_ts(os.path.join(aeon_data_dir(), folder, f"{stem}_{split.upper()}.ts"))
  x.setflags(write=False)
  y.setflags(write=False)
  return x, y
