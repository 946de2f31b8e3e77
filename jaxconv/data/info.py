"""Dataset metadata: `DatasetInfo`, the name registry and cheap `dataset_info(name)`.

Everything here is constant data: `dataset_info` never touches the disk or the network, so a
model can be built (number of classes, input shape) before any data is loaded.

Mean and std are per channel, on the 0..255 scale of the stored uint8 pixels (for the float
source `mnist1d`: on the scale of its stored float values), computed over the train split.
"""

from __future__ import annotations

import dataclasses
import difflib

__all__ = ["DatasetInfo", "dataset_info", "list_datasets", "TFDS_DATASETS", "OFFLINE_DATASETS"]


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
    image_dtype: dtype of the stored images ("uint8" or "float32").
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

  def __post_init__(self):
    # Normalize sequences to tuples so the info stays hashable and comparable.
    for field in ("image_shape", "mean", "std", "splits", "split_sizes"):
      object.__setattr__(self, field, tuple(getattr(self, field)))
    object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {self.image_shape}")
    channels = self.image_shape[2]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(
          f"mean/std need one value per channel ({channels}); got mean={self.mean}, std={self.std}")
    if min(self.std) <= 0:
      raise ValueError(f"std must be positive, got {self.std}")
    if int(self.num_classes) < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    for field in ("train_split", "eval_split"):
      if getattr(self, field) not in self.splits:
        raise ValueError(f"{field}={getattr(self, field)!r} is not one of splits={self.splits}")
    if self.split_sizes and len(self.split_sizes) != len(self.splits):
      raise ValueError("split_sizes must have one entry per split")
    if self.image_dtype not in ("uint8", "float32"):
      raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {self.image_dtype!r}")

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

_REGISTRY: dict[str, DatasetInfo] = {**OFFLINE_DATASETS, **TFDS_DATASETS}


def list_datasets() -> list[str]:
  """Every name `get_source` and `dataset_info` accept, sorted."""
  return sorted(_REGISTRY)


def unknown_dataset_error(name) -> ValueError:
  close = difflib.get_close_matches(str(name).lower(), list_datasets(), n=3, cutoff=0.5)
  hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
  return ValueError(f"Unknown dataset {name!r}.{hint} Available datasets: {list_datasets()}")


def dataset_info(name: str) -> DatasetInfo:
  """Static `DatasetInfo` of a registered dataset; no I/O, works without the data present."""
  if not isinstance(name, str) or name not in _REGISTRY:
    raise unknown_dataset_error(name)
  return _REGISTRY[name]
