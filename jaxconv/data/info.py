"""Dataset metadata: `DatasetInfo`, the name registry and cheap `dataset_info(name)`.

Everything here is constant data: `dataset_info` never touches the disk or the network, so a
model can be built (number of classes, input shape) before any data is loaded.

Mean and std are per channel, on the 0..255 scale of the stored uint8 pixels (for the float
source `mnist1d`: on the scale of its stored float values), computed over the train split.

Sequence datasets (issue 12) use the same `DatasetInfo`: `image_shape` is then one example's
input shape, (L, C) for float sequences or (L,) for int32 token ids (with `vocab_size`), and
`task` says what a label is: "classification" (an int), "per_position" (int32 [L], -1 where
unlabelled) or "regression" (float32 [num_classes]). Besides the fixed names of
`list_datasets()`, the generated sequence families take their length (and vocabulary) from the
name; see `SEQUENCE_NAME_PATTERNS` and `jaxconv/data/sequences.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

__all__ = ["DatasetInfo", "dataset_info", "list_datasets", "TFDS_DATASETS", "OFFLINE_DATASETS",
           "SEQUENCE_DATASETS", "SEQUENCE_NAME_PATTERNS", "TASKS"]

#: What a label is: an int class, int32 [L] classes (-1 = unlabelled), float32 [num_classes].
TASKS = ("classification", "per_position", "regression")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: registry name (what `get_source` accepts).
    num_classes: labels are ints in [0, num_classes).
    image_shape: (H, W, C) of the images the pipeline yields (for variable-size datasets such as
      imagenet2012, the crop size the pipeline produces, not the stored size).
    mean, std: per-channel statistics used to normalize, on the scale of the stored values
      (0..255 for uint8 images).
    splits: valid split names; `get_source` also accepts slices of them, e.g. "train[:90%]".
    train_split, eval_split: the conventional splits for training and evaluation.
    split_sizes: number of examples of each split in `splits` (same order); empty if unknown.
    variable_size: stored images have varying sizes; the pipeline then uses random-resized-crop
      for training and resize + center crop for evaluation to reach `image_shape`.
    image_dtype: dtype of the stored images ("uint8" or "float32"; "int32" for token ids).
    task: one of TASKS: "classification" (label: int in [0, num_classes)), "per_position"
      (label: int32 [L], a class per position, -1 where unlabelled) or "regression" (label:
      float32 [num_classes], the targets; trained with mean squared error).
    vocab_size: token datasets only (image_shape (L,), image_dtype "int32"): ids are in
      [0, vocab_size); 0 for every other dataset.

  `image_shape` is the shape of one example's input: (H, W, C) images, (L, C) float sequences
  or (L,) token ids (mean/std empty: tokens are not normalized).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  splits: tuple[str, ...] = ("train", "test")
  train_split: str = "train"
  eval_split: str = "test"
  split_sizes: tuple[int, ...] = ()
  variable_size: bool = False
  image_dtype: str = "uint8"
  task: str = "classification"
  vocab_size: int = 0

  def __post_init__(self):
    # Normalize sequences to tuples so the info stays hashable and comparable.
    for field in ("image_shape", "mean", "std", "splits", "split_sizes"):
      object.__setattr__(self, field, tuple(getattr(self, field)))
    object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if not 1 <= len(self.image_shape) <= 3 or min(self.image_shape) < 1:
      raise ValueError("image_shape must be (H, W, C) images, (L, C) sequences or (L,) tokens "
                       f"with positive sizes, got {self.image_shape}")
    if self.task not in TASKS:
      raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
    if self.image_dtype not in ("uint8", "float32", "int32"):
      raise ValueError(
          f"image_dtype must be 'uint8', 'float32' or 'int32', got {self.image_dtype!r}")
    tokens = len(self.image_shape) == 1
    if tokens != (self.image_dtype == "int32") or tokens != (self.vocab_size > 0):
      raise ValueError("token datasets have image_shape (L,), image_dtype 'int32' and "
                       f"vocab_size >= 1; got {self.image_shape}, {self.image_dtype!r}, "
                       f"vocab_size={self.vocab_size}")
    if self.task != "classification" and len(self.image_shape) == 3:
      raise ValueError(f"task {self.task!r} needs a sequence image_shape ((L, C) or (L,)), "
                       f"got {self.image_shape}")
    if self.variable_size and len(self.image_shape) != 3:
      raise ValueError("variable_size is for images only")
    channels = 0 if tokens else self.image_shape[-1]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(
          f"mean/std need one value per channel ({channels}); got mean={self.mean}, std={self.std}")
    if self.std and min(self.std) <= 0:
      raise ValueError(f"std must be positive, got {self.std}")
    if int(self.num_classes) < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    for field in ("train_split", "eval_split"):
      if getattr(self, field) not in self.splits:
        raise ValueError(f"{field}={getattr(self, field)!r} is not one of splits={self.splits}")
    if self.split_sizes and len(self.split_sizes) != len(self.splits):
      raise ValueError("split_sizes must have one entry per split")

  @property
  def is_sequence(self) -> bool:
    """(L, C) float sequences or (L,) tokens, as opposed to (H, W, C) images."""
    return len(self.image_shape) < 3

  @property
  def label_shape(self) -> tuple[int, ...]:
    """Shape of one label: () classes, (L,) per-position classes, (num_classes,) regression."""
    if self.task == "per_position":
      return self.image_shape[:1]
    return (self.num_classes,) if self.task == "regression" else ()

  @property
  def label_dtype(self) -> str:
    return "float32" if self.task == "regression" else "int32"

  @property
  def input_dtype(self) -> str:
    """dtype of the model input the pipeline yields: int32 token ids, else float32 (stored
    uint8 pixels are normalized to float32)."""
    return "int32" if self.image_dtype == "int32" else "float32"

  def num_examples(self, split: str) -> int:
    """Size of a (whole, unsliced) split, from the static table."""
    if split not in self.splits:
      raise ValueError(
          f"Unknown split {split!r} for {self.name!r}; valid splits: {list(self.splits)}")
    if not self.split_sizes:
      raise ValueError(f"split sizes of {self.name!r} are not known statically; use len(source)")
    return self.split_sizes[self.splits.index(split)]


def _scaled(values, scale=255.0):
  return tuple(round(v * scale, 4) for v in values)


# tfds datasets read through `tfds.data_source` from prepared ArrayRecord files.
# Statistics: the widely used per-channel values of the train splits (0..1 scale) times 255.
TFDS_DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10", num_classes=10, image_shape=(32, 32, 3),
        mean=_scaled((0.4914, 0.4822, 0.4465)), std=_scaled((0.2470, 0.2435, 0.2616)),
        split_sizes=(50000, 10000)),
    "cifar100": DatasetInfo(
        name="cifar100", num_classes=100, image_shape=(32, 32, 3),
        mean=_scaled((0.5071, 0.4865, 0.4409)), std=_scaled((0.2673, 0.2564, 0.2762)),
        split_sizes=(50000, 10000)),
    "mnist": DatasetInfo(
        name="mnist", num_classes=10, image_shape=(28, 28, 1),
        mean=_scaled((0.1307,)), std=_scaled((0.3081,)), split_sizes=(60000, 10000)),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", num_classes=10, image_shape=(28, 28, 1),
        mean=_scaled((0.2860,)), std=_scaled((0.3530,)), split_sizes=(60000, 10000)),
    # The tfds "test" split of imagenet2012 has no labels, so it is not offered here.
    "imagenet2012": DatasetInfo(
        name="imagenet2012", num_classes=1000, image_shape=(224, 224, 3),
        mean=_scaled((0.485, 0.456, 0.406)), std=_scaled((0.229, 0.224, 0.225)),
        splits=("train", "validation"), eval_split="validation",
        split_sizes=(1281167, 50000), variable_size=True),
}

# Offline datasets, generated or loaded from installed packages; never any network.
# The statistics are computed from the train splits built in `sources.py`; a test recomputes them.
OFFLINE_DATASETS: dict[str, DatasetInfo] = {
    # scikit-learn load_digits, pixel values 0..16 rescaled to 0..255, stratified 1497/300 split.
    "digits": DatasetInfo(
        name="digits", num_classes=10, image_shape=(8, 8, 1),
        mean=(77.9259,), std=(95.8927,), split_sizes=(1497, 300)),
    # The same digits upsampled 4x (nearest) to 32x32: CIFAR-sized inputs for architectures
    # whose downsampling needs them (VGG, DenseNet, ...). Nearest upsampling keeps mean and std.
    "digits32": DatasetInfo(
        name="digits32", num_classes=10, image_shape=(32, 32, 1),
        mean=(77.9259,), std=(95.8927,), split_sizes=(1497, 300)),
    # MNIST-1D (Greydanus 2020), default generation arguments (seed 42), 4000/1000 split.
    # Stored as float32 signals, already roughly standardized by the generator.
    "mnist1d": DatasetInfo(
        name="mnist1d", num_classes=10, image_shape=(1, 40, 1),
        mean=(-0.0003,), std=(0.9976,), split_sizes=(4000, 1000), image_dtype="float32"),
}



def _ucr(name, length, channels_mean, channels_std, num_classes, sizes):
  return DatasetInfo(name=name, num_classes=num_classes,
                     image_shape=(length, len(channels_mean)), mean=channels_mean,
                     std=channels_std, split_sizes=sizes, image_dtype="float32")


# Fixed-size sequence datasets (built in `sequences.py` / `ucr.py`; a test recomputes the stats).
SEQUENCE_DATASETS: dict[str, DatasetInfo] = {
    # The digits read pixel by pixel in raster order (sequential MNIST's protocol on the offline
    # digits): L = 64 (8x8) or 1024 (32x32); "perm_" applies one fixed random permutation of the
    # positions (seed 0) to every image. Same pixels, so the same statistics as `digits`.
    **{f"{kind}_digits{size}": DatasetInfo(
        name=f"{kind}_digits{size}", num_classes=10, image_shape=(side * side, 1),
        mean=(77.9259,), std=(95.8927,), split_sizes=(1497, 300))
       for kind in ("seq", "perm") for size, side in (("", 8), ("32", 32))},
    # MNIST-1D signals as (40, 1) sequences (the `mnist1d` image set is (1, 40, 1)).
    "seq_mnist1d": DatasetInfo(
        name="seq_mnist1d", num_classes=10, image_shape=(40, 1), mean=(-0.0003,),
        std=(0.9976,), split_sizes=(4000, 1000), image_dtype="float32"),
    # UCR/UEA problems bundled in the aeon wheel (ucr.py); the archive's own train/test splits.
    "ucr_gunpoint": _ucr("ucr_gunpoint", 150, (0.0,), (0.9967,), 2, (50, 150)),
    "ucr_arrowhead": _ucr("ucr_arrowhead", 251, (0.0,), (0.998,), 3, (36, 175)),
    "ucr_osuleaf": _ucr("ucr_osuleaf", 427, (0.0,), (0.9988,), 6, (200, 242)),
    "ucr_acsf1": _ucr("ucr_acsf1", 1460, (0.0,), (1.0,), 10, (100, 100)),
    "ucr_italypowerdemand": _ucr("ucr_italypowerdemand", 24, (0.0,), (0.9789,), 2, (67, 1029)),
    "ucr_basicmotions": _ucr(
        "ucr_basicmotions", 100, (2.5528, -1.3039, -1.0266, 0.0191, -0.024, -0.0558),
        (7.0723, 6.7941, 3.5464, 2.1119, 1.8208, 3.5166), 4, (40, 40)),
    "ucr_japanesevowels": _ucr(
        "ucr_japanesevowels", 25,
        (0.872, -0.5509, 0.2294, -0.2627, 0.2255, -0.2161, -0.1741, -0.0481, -0.2071, -0.1808,
         -0.0198, 0.0864),
        (0.4837, 0.3858, 0.3041, 0.3052, 0.2629, 0.1671, 0.1609, 0.1871, 0.184, 0.1155, 0.0965,
         0.1283), 9, (270, 370)),
    "ucr_pickupgesturewiimotez": _ucr(
        "ucr_pickupgesturewiimotez", 361, (0.8698,), (0.2672,), 10, (50, 50)),
}

# Generated sequence families: the name carries the length (and vocabulary). Every example is a
# pure function of (split, index); see sequences.py for the tasks.
ASSOC_RECALL_VOCAB = 20          # default vocabulary (2 of the ids are special tokens)
ASSOC_RECALL_SIZES = (2000, 500)
LISTOPS_SIZES = (96000, 2000)    # LRA's train and test sizes
LISTOPS_VOCAB = 16               # pad, 10 digits, [MIN [MAX [MED [SM, ]
ADDING_SIZES = (50000, 1000)     # Bai et al. 2018 (TCN)
COPY_MEMORY_SIZES = (10000, 1000)
COPY_MEMORY_EXTRA = 20           # input length is T + 20 (10 symbols, delimiter, 9 blanks)
MAX_SEQUENCE_LENGTH = 1 << 17    # 131072: associative recall "up to 128K"

#: Name pattern -> what it means (shown in the unknown-dataset error).
SEQUENCE_NAME_PATTERNS = {
    "assoc_recall_<L>[_v<V>]": "associative recall (safari), L even in [4, 131072] tokens, "
                               f"vocabulary V >= 4 (default {ASSOC_RECALL_VOCAB})",
    "listops[_<M>]": "LRA ListOps, lengths in [M // 4, M] padded to M (default M = 2000, "
                     "LRA's 500..2000), M in [20, 131072]",
    "adding_<T>": "TCN adding problem, T in [2, 131072] steps of (value, marker), regression",
    "copy_memory_<T>": "TCN copy memory, T in [1, 131072] blanks, input length T + 20 tokens",
}
_FAMILY_RE = {
    "assoc_recall": re.compile(r"assoc_recall_(\d+)(?:_v(\d+))?"),
    "listops": re.compile(r"listops(?:_(\d+))?"),
    "adding": re.compile(r"adding_(\d+)"),
    "copy_memory": re.compile(r"copy_memory_(\d+)"),
}
#: Names of generated sets that `list_datasets()` shows (any length of the pattern works).
SEQUENCE_PRESETS = ("assoc_recall_256", "assoc_recall_1024", "assoc_recall_8192", "listops",
                    "listops_500", "adding_200", "adding_600", "copy_memory_100",
                    "copy_memory_1000")


def _check_length(name: str, what: str, value: int, low: int, high: int = MAX_SEQUENCE_LENGTH):
  if not low <= value <= high:
    raise ValueError(f"dataset {name!r}: {what} must be in [{low}, {high}], got {value}")


def family_of(name: str) -> tuple[str, tuple[int, ...]] | None:
  """(family, parameters) of a generated sequence dataset name, or None if it is not one.

  Parameters: assoc_recall (L, V); listops (M,); adding (T,); copy_memory (T,). Raises
  ValueError for a family name with parameters out of range.
  """
  for family, pattern in _FAMILY_RE.items():
    match = pattern.fullmatch(name)
    if not match:
      continue
    if family == "assoc_recall":
      length, vocab = int(match.group(1)), int(match.group(2) or ASSOC_RECALL_VOCAB)
      _check_length(name, "the length L", length, 4)
      if length % 2:
        raise ValueError(f"dataset {name!r}: the length L must be even (key-value pairs), "
                         f"got {length}")
      _check_length(name, "the vocabulary V", vocab, 4, 1 << 20)
      return family, (length, vocab)
    if family == "listops":
      max_len = int(match.group(1) or 2000)
      _check_length(name, "the maximum length M", max_len, 20)
      return family, (max_len,)
    steps = int(match.group(1))
    _check_length(name, "T", steps, 2 if family == "adding" else 1)
    return family, (steps,)
  return None


def _family_info(name: str) -> DatasetInfo | None:
  parsed = family_of(name)
  if parsed is None:
    return None
  family, params = parsed
  if family == "assoc_recall":
    length, vocab = params
    return DatasetInfo(name=name, num_classes=vocab, image_shape=(length,), mean=(), std=(),
                       split_sizes=ASSOC_RECALL_SIZES, image_dtype="int32",
                       task="per_position", vocab_size=vocab)
  if family == "listops":
    return DatasetInfo(name=name, num_classes=10, image_shape=params, mean=(), std=(),
                       split_sizes=LISTOPS_SIZES, image_dtype="int32",
                       vocab_size=LISTOPS_VOCAB)
  if family == "adding":
    # Values uniform in [0, 1) and 0/1 markers; fed unnormalized, as in the TCN paper.
    return DatasetInfo(name=name, num_classes=1, image_shape=(params[0], 2), mean=(0.0, 0.0),
                       std=(1.0, 1.0), split_sizes=ADDING_SIZES, image_dtype="float32",
                       task="regression")
  return DatasetInfo(name=name, num_classes=10, image_shape=(params[0] + COPY_MEMORY_EXTRA,),
                     mean=(), std=(), split_sizes=COPY_MEMORY_SIZES, image_dtype="int32",
                     task="per_position", vocab_size=10)


_REGISTRY: dict[str, DatasetInfo] = {**OFFLINE_DATASETS, **SEQUENCE_DATASETS, **TFDS_DATASETS}


def list_datasets() -> list[str]:
  """Every fixed name `get_source` and `dataset_info` accept, plus a few lengths of the
  generated sequence families (any length matching `SEQUENCE_NAME_PATTERNS` works), sorted."""
  return sorted([*_REGISTRY, *SEQUENCE_PRESETS])


def unknown_dataset_error(name) -> ValueError:
  close = difflib.get_close_matches(str(name).lower(), list_datasets(), n=3, cutoff=0.5)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  patterns = "; ".join(f"{k}: {v}" for k, v in SEQUENCE_NAME_PATTERNS.items())
  return ValueError(f"Unknown dataset {name!r}.{hint} Available datasets: {list_datasets()}; "
                    f"generated sequence sets by name pattern: {patterns}")


def dataset_info(name: str, data_dir=None) -> DatasetInfo:
  """`DatasetInfo` of a registered dataset (static: no I/O, works without the data present), or
  of an image folder prepared with `python -m experiments.prepare_images` ("NAME" or
  "NAME:X.Y.Z"), read from DATA_DIR/NAME/<version>/ (metadata.json, dataset_info.json).

  Args:
    name: a registered name, a generated sequence family name, or a prepared image folder.
    data_dir: where prepared image folders are looked up (local or gs://); default
      `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`. Registered datasets ignore it.
  """
  if isinstance(name, str) and name in _REGISTRY:
    return _REGISTRY[name]
  info = _family_info(name) if isinstance(name, str) else None
  if info is not None:
    return info
  from jaxconv.data import folder  # pylint: disable=g-import-not-at-top
  found = folder.find_user_dataset(name, data_dir) if isinstance(name, str) else None
  if found is None:
    where = data_dir if data_dir is not None else folder.default_data_dir()
    error = unknown_dataset_error(name)
    raise ValueError(f"{error} Image folders prepared with `python -m experiments.prepare_images` "
                     f"are found as DATA_DIR/NAME/<version>/; none named {name!r} under "
                     f"data_dir={str(where)!r}.") from None
  return found[1]
