"""Random-access data sources: `get_source(name, split)`.

A source has `len(src)`, `src[i] -> {"image": array [H, W, C], "label": int}` and `src.info`
(a `DatasetInfo`). Images are uint8, except for `mnist1d` whose images are float32.

Offline datasets (never any network):
  * digits: scikit-learn `load_digits`, 1797 8x8 grayscale images; pixel values 0..16 are scaled
    to uint8 by round(v * 255 / 16). Split: stratified by class with a fixed seed (0), exactly 300
    test images (class quotas by largest remainder of 300 * n_class / 1797), 1497 train; both
    splits are kept in the original order of `load_digits`.
  * mnist1d: MNIST-1D (Greydanus 2020) generated locally with `mnist1d.data.make_dataset` and
    its default arguments (5000 signals of length 40, seed 42, first 4000 train, last 1000 test).
    Images are float32 of shape (1, 40, 1), already roughly standardized by the generator. The
    arrays are cached in memory and on disk (`$JAXCONV_CACHE_DIR`, default
    `~/.cache/jaxconv`); generation does not touch the network (`get_dataset`, which may
    download, is never called).

tfds datasets (cifar10, cifar100, mnist, fashion_mnist, imagenet2012) are read with
`tfds.data_source(..., download=False)` from ArrayRecord files already prepared in `data_dir`
(default: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`). The files are checked before tfds is
even imported; a missing dataset raises `DatasetNotPreparedError` (a `FileNotFoundError`) saying
how to prepare it.

Image folders prepared with `python -m experiments.prepare_images` (any other name; see
`folder.py`) are read from DATA_DIR/NAME/<version>/ with `tfds.builder_from_directory`.

Splits may be sliced: "train[:45000]", "train[90%:]", "test[-500:]" (percentages are floored:
index = n * pct // 100). Slicing is done by jaxconv, identically for every source.

Sequence datasets (sequential digits, UCR/UEA, associative recall, ListOps, adding, copy memory)
come from `sequences.py` and `ucr.py`, offline too.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import random
import re
import tempfile
from typing import Any

import numpy as np

from jaxconv.data.folder import default_data_dir, find_user_dataset
from jaxconv.data.info import (OFFLINE_DATASETS, TFDS_DATASETS, DatasetInfo, dataset_info,
                               unknown_dataset_error)

__all__ = [
    "ArraySource", "SubsetSource", "TfdsSource", "DatasetNotPreparedError", "get_source",
    "default_data_dir", "default_cache_dir",
]

DIGITS_TEST_SIZE = 300
DIGITS_SPLIT_SEED = 0


class DatasetNotPreparedError(FileNotFoundError):
  """A tfds dataset is not prepared (as ArrayRecord) in the data dir; the message says how."""


# ----------------------------------------------------------------------------------------------
# Source classes


class ArraySource:
  """In-memory source over an image array [N, H, W, C] (or a list of arrays) and labels [N]."""

  def __init__(self, images, labels, info: DatasetInfo, split: str = "train"):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self._images = images
    self._labels = np.asarray(labels)
    if self._labels.ndim != 1 or not np.issubdtype(self._labels.dtype, np.integer):
      raise ValueError(f"labels must be a 1-D integer array, got {self._labels.dtype} "
                       f"{self._labels.shape}")
    self.info = info
    self.split = split

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index) -> dict[str, Any]:
    return {"image": self._images[index], "label": int(self._labels[index])}

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [{"image": self._images[i], "label": int(self._labels[i])} for i in indices]

  def __repr__(self):
    return f"ArraySource({self.info.name!r}, split={self.split!r}, n={len(self)})"


class SubsetSource:
  """Contiguous slice [start, stop) of another source."""

  def __init__(self, base, start: int, stop: int, split: str):
    if not 0 <= start <= stop <= len(base):
      raise ValueError(f"bad slice [{start}:{stop}] of a source of length {len(base)}")
    self._base = base
    self._start = start
    self._len = stop - start
    self.info = base.info
    self.split = split

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      index += self._len
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range for a source of length {self._len}")
    return self._base[self._start + index]

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    shifted = []
    for index in indices:
      index = int(index)
      if not 0 <= index < self._len:
        raise IndexError(f"index {index} out of range for a source of length {self._len}")
      shifted.append(self._start + index)
    getitems = getattr(self._base, "__getitems__", None)
    return list(getitems(shifted)) if getitems else [self._base[i] for i in shifted]

  def __repr__(self):
    return f"SubsetSource({self.info.name!r}, split={self.split!r}, n={len(self)})"


class TfdsSource:
  """Wraps a `tfds.data_source`; keeps only "image" (numpy) and "label" (int)."""

  def __init__(self, data_source, info: DatasetInfo, split: str):
    self._ds = data_source
    self.info = info
    self.split = split

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index) -> dict[str, Any]:
    return self._convert(self._ds[int(index)])

  @staticmethod
  def _convert(example) -> dict[str, Any]:
    return {"image": np.asarray(example["image"]), "label": int(example["label"])}

  def __repr__(self):
    return f"TfdsSource({self.info.name!r}, split={self.split!r}, n={len(self)})"


# ----------------------------------------------------------------------------------------------
# Splits

_SPLIT_RE = re.compile(r"^([A-Za-z_]\w*)(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?$")


def _parse_split(split, info: DatasetInfo) -> tuple[str, str | None, str | None]:
  """Returns (base split, start, stop) with start/stop as written ("10", "90%") or None."""
  match = _SPLIT_RE.match(split.strip()) if isinstance(split, str) else None
  if match is None or match.group(1) not in info.splits:
    raise ValueError(
        f"Invalid split {split!r} for dataset {info.name!r}; valid splits: {list(info.splits)} "
        "(optionally sliced, e.g. 'train[:90%]' or 'train[:1000]').")
  return match.group(1), match.group(2), match.group(3)


def _slice_bound(token: str | None, n: int) -> int | None:
  if token is None:
    return None
  if token.endswith("%"):
    pct = int(token[:-1])
    if abs(pct) > 100:
      raise ValueError(f"split percentage {token} is outside [-100%, 100%]")
    return (n * pct) // 100 if pct >= 0 else -((n * -pct) // 100)
  return int(token)


def _apply_slice(src, base: str, start: str | None, stop: str | None, split: str):
  if start is None and stop is None:
    return src
  n = len(src)
  lo, hi, _ = slice(_slice_bound(start, n), _slice_bound(stop, n)).indices(n)
  return SubsetSource(src, lo, max(lo, hi), split)


# ----------------------------------------------------------------------------------------------
# Offline datasets


def _readonly(*arrays):
  for a in arrays:
    a.setflags(write=False)
  return arrays


def _stratified_test_indices(labels: np.ndarray, test_size: int, seed: int) -> np.ndarray:
  """Sorted test indices, `test_size` in total, per-class quotas by largest remainder."""
  classes, counts = np.unique(labels, return_counts=True)
  exact = counts * test_size / counts.sum()
  quota = np.floor(exact).astype(int)
  remainder_order = np.argsort(-(exact - quota), kind="stable")
  quota[remainder_order[:test_size - quota.sum()]] += 1
  rng = np.random.default_rng(seed)
  picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
  return np.sort(np.concatenate(picked))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  test = _stratified_test_indices(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {
      "train": _readonly(np.ascontiguousarray(images[train]), labels[train]),
      "test": _readonly(np.ascontiguousarray(images[test]), labels[test]),
  }


@functools.lru_cache(maxsize=1)
def _digits32_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  def upsample(images):
    return np.ascontiguousarray(images.repeat(4, axis=1).repeat(4, axis=2))
  return {split: _readonly(upsample(images), labels)
          for split, (images, labels) in _digits_arrays().items()}


def default_cache_dir() -> str:
  """`$JAXCONV_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxconv`, else `~/.cache/jaxconv`."""
  if os.environ.get("JAXCONV_CACHE_DIR"):
    return os.environ["JAXCONV_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxconv")


def _generate_mnist1d() -> dict[str, np.ndarray]:
  # `make_dataset` reseeds Python's and NumPy's global RNGs; restore them afterwards so that
  # loading data has no effect on anyone else's randomness.
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    data = make_dataset(get_dataset_args())
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  return {
      "x_train": data["x"].astype(np.float32), "y_train": data["y"].astype(np.int64),
      "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64),
  }


def _mnist1d_cache_path(cache_dir: str) -> str:
  try:
    from importlib.metadata import version  # pylint: disable=g-import-not-at-top
    pkg = version("mnist1d")
  except Exception:  # pylint: disable=broad-except
    pkg = "unknown"
  # The generator's default arguments (seed 42, 5000 samples, ...) are part of the key via the
  # package version; bump the tag if the conversion here changes.
  tag = hashlib.sha1(f"mnist1d-{pkg}-default-v1".encode()).hexdigest()[:10]
  return os.path.join(cache_dir, f"mnist1d_{pkg}_{tag}.npz")


_MNIST1D_KEYS = ("x_train", "y_train", "x_test", "y_test")


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(cache_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  arrays = None
  path = _mnist1d_cache_path(cache_dir) if cache_dir else None
  if path and os.path.exists(path):
    try:
      with np.load(path) as f:
        arrays = {k: f[k] for k in _MNIST1D_KEYS}
      if arrays["x_train"].shape != (4000, 40) or arrays["x_test"].shape != (1000, 40):
        arrays = None
    except Exception:  # pylint: disable=broad-except  (corrupt cache: regenerate)
      arrays = None
  if arrays is None:
    arrays = _generate_mnist1d()
    if path:
      try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
          np.savez(f, **arrays)
        os.replace(tmp, path)
      except OSError:
        pass  # caching is best effort
  def image(x):
    return np.ascontiguousarray(x.reshape(len(x), 1, x.shape[1], 1), dtype=np.float32)
  return {
      "train": _readonly(image(arrays["x_train"]), arrays["y_train"].astype(np.int64)),
      "test": _readonly(image(arrays["x_test"]), arrays["y_test"].astype(np.int64)),
  }


def _offline_source(name: str, split: str) -> ArraySource:
  info = OFFLINE_DATASETS[name]
  if name == "digits":
    arrays = _digits_arrays()
  elif name == "digits32":
    arrays = _digits32_arrays()
  elif name == "mnist1d":
    arrays = _mnist1d_arrays(default_cache_dir())
  else:  # pragma: no cover
    raise AssertionError(name)
  images, labels = arrays[split]
  return ArraySource(images, labels, info, split=split)


# ----------------------------------------------------------------------------------------------
# tfds datasets


def _user_source(name: str, split: str, data_dir) -> TfdsSource:
  """An image folder prepared by `experiments.prepare_images` (see `jaxconv/data/folder.py`)."""
  found = find_user_dataset(name, data_dir)
  if found is None:  # pragma: no cover  (dataset_info found it a moment ago)
    raise DatasetNotPreparedError(f"dataset {name!r} is not prepared under {data_dir!r}")
  version_dir, info = found
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.builder_from_directory(version_dir).as_data_source(split=split)
  return TfdsSource(ds, info, split)


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in version.split("."))


def _prepare_instructions(name: str, data_dir: str) -> str:
  command = (f"python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}, "
             f"data_dir={data_dir!r}, file_format='array_record').download_and_prepare()\"")
  lines = [
      "jaxconv reads tfds datasets with tfds.data_source (ArrayRecord files; TensorFlow is not "
      "needed to read, and nothing is ever downloaded at run time).",
      "Prepare it once, on a machine with network access (preparing needs TensorFlow):",
      "  pip install tensorflow-cpu tensorflow-datasets",
  ]
  if name == "imagenet2012":
    manual = os.path.join(data_dir, "downloads", "manual")
    lines.append(
        f"  # ImageNet is not downloadable by tfds: get ILSVRC2012_img_train.tar and "
        f"ILSVRC2012_img_val.tar from https://image-net.org (registration needed) and put them "
        f"in {manual}/")
  lines += [
      f"  {command}",
      f"then copy {os.path.join(data_dir, name)} to this machine if you prepared it elsewhere, and "
      "pass data_dir=... (or set TFDS_DATA_DIR).",
  ]
  return "\n".join(lines)


def _find_prepared_version(name: str, split: str, data_dir: str) -> str:
  """Newest version folder under data_dir/name with dataset_info.json and ArrayRecord files
  for `split`; raises DatasetNotPreparedError otherwise. Only touches the local file system."""
  dataset_dir = os.path.join(data_dir, name)
  versions = []
  if os.path.isdir(dataset_dir):
    versions = sorted((v for v in os.listdir(dataset_dir) if re.fullmatch(r"\d+\.\d+\.\d+", v)),
                      key=_version_key, reverse=True)
  with_info = [v for v in versions
               if os.path.isfile(os.path.join(dataset_dir, v, "dataset_info.json"))]
  for version in with_info:
    pattern = os.path.join(glob.escape(os.path.join(dataset_dir, version)),
                           f"{name}-{split}.array_record*")
    if glob.glob(pattern):
      return version
  if not with_info:
    reason = (f"no prepared version found (looked for {dataset_dir}/<version>/dataset_info.json"
              f"{'; the folder does not exist' if not os.path.isdir(dataset_dir) else ''})")
  else:
    reason = (f"version(s) {with_info} in {dataset_dir} have no ArrayRecord files for split "
              f"{split!r} ({name}-{split}.array_record-*); the data is probably in TFRecord "
              "format, which tfds.data_source cannot read")
  raise DatasetNotPreparedError(
      f"tfds dataset {name!r} (split {split!r}) is not prepared under data_dir={data_dir!r}: "
      f"{reason}.\n{_prepare_instructions(name, data_dir)}")


def _tfds_source(name: str, split: str, data_dir: str | None) -> TfdsSource:
  info = TFDS_DATASETS[name]
  data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
  data_dir = os.path.expanduser(data_dir)
  if "://" in data_dir:
    version = None  # remote file systems (gs://): let tfds check; download stays disabled
  else:
    version = _find_prepared_version(name, split, data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  full_name = f"{name}:{version}" if version else name
  ds = tfds.data_source(full_name, split=split, data_dir=data_dir, download=False)
  return TfdsSource(ds, info, split)


# ----------------------------------------------------------------------------------------------


def get_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None):
  """Random-access source of a registered dataset split (see the module docstring).

  Args:
    name: one of `list_datasets()`.
    split: one of `dataset_info(name).splits`, optionally sliced ("train[:90%]").
    data_dir: tfds data dir (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`), also where
      image folders prepared by `experiments.prepare_images` are found; ignored by the offline
      datasets.
  """
  info = dataset_info(name, data_dir=data_dir) if isinstance(name, str) else None
  if info is None:
    raise unknown_dataset_error(name)
  base, start, stop = _parse_split(split, info)
  if info.is_sequence:
    from jaxconv.data.sequences import sequence_source  # pylint: disable=g-import-not-at-top
    src = sequence_source(name, base)
  elif name in OFFLINE_DATASETS:
    src = _offline_source(name, base)
  elif name in TFDS_DATASETS:
    src = _tfds_source(name, base, data_dir)
  else:
    src = _user_source(name, base, data_dir)
  return _apply_slice(src, base, start, stop, split)

