"""A folder of class subfolders of JPEG/PNG images as a tfds ArrayRecord dataset, without TensorFlow.

Writing (`prepare_image_folder`, the engine of `python -m experiments.prepare_images`):

    SRC/<class name>/**/*.{jpg,jpeg,png}  ->  DATA_DIR/NAME/<version>/
        NAME-train.array_record-0000i-of-0000N       (and NAME-validation... if asked for)
        dataset_info.json  features.json  label.labels.txt  metadata.json

The records are tfds' own `tf.train.Example` encoding of the features
`{"image": tfds.features.Image(shape=(None, None, C)), "label": ClassLabel(names=classes)}`
(serialized by tfds' `FeaturesDict.serialize_example`, which needs no TensorFlow for encoded image
bytes), written with `array_record`'s writer (`group_size:1`, as tfds writes for random access);
the metadata files come from `tfds.folder_dataset.write_metadata`. So `tfds.data_source(NAME,
data_dir=DATA_DIR)` and `tfds.builder_from_directory(DATA_DIR/NAME/<version>)` read the result.

* Labels: the class subfolder names sorted (Python string order) are label ids 0, 1, ...
* Every file is decoded (fully, truncation included) before anything is written; all undecodable
  files are reported by path in one `BadImagesError` and nothing is written. Files whose
  extension is not .jpg/.jpeg/.png are not read; they are counted and named in the summary.
  Hidden files and folders (names starting with ".", e.g. .DS_Store) are skipped.
* Channels: 1 if every image is grayscale (PIL mode "L"), else 3. JPEG/PNG files already in a
  fitting mode (RGB or L; tfds repeats a gray image to 3 channels on decoding) are stored
  byte for byte; others (palette, RGBA, CMYK, 1-bit, ...) are converted with PIL (alpha is
  dropped) and stored as PNG, losslessly. 16-bit and float images are reported as bad (convert
  them to 8 bits first). EXIF orientation is not applied (as torchvision's ImageFolder).
* Optional stratified validation split: round(N * val_fraction) images (Python's round), per-class quotas by
  largest remainder, chosen with `seed` (the digits split's rule, `sources._stratified_test_indices`).
  Both splits keep the sorted (class, path) order.
* jaxconv's own facts go to metadata.json under "jaxconv": per-channel mean/std over the train
  split's pixels (0..255 scale), the image shape the pipeline yields and whether sizes vary: if
  every image has the same size (and no `image_size` is asked for) the set is fixed-size like
  CIFAR; otherwise it is variable-size like imagenet2012 (random-resized-crop for training,
  resize + center crop for evaluation, to `image_size`, default 224).
* An existing DATA_DIR/NAME/<version> is never touched: the call refuses (pass another version to
  write a new one beside it). Files are written into a staging folder and renamed into place (on
  a remote `data_dir` such as gs://, staged locally and copied with dataset_info.json last), so
  an interrupted run leaves no half-written version that readers would pick up.

Reading (`find_user_dataset`): `data.dataset_info(NAME, data_dir=...)` and `data.get_source`
resolve a name that is not registered to the newest version under DATA_DIR/NAME/ that has
jaxconv's metadata ("NAME:1.0.1" pins a version). All paths go through `etils.epath`, so
`gs://bucket/data` works as a data_dir.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Sequence

import numpy as np

from jaxconv.data.info import DatasetInfo

__all__ = ["prepare_image_folder", "scan_image_folder", "find_user_dataset", "BadImagesError",
           "IMAGE_EXTENSIONS", "DEFAULT_IMAGE_SIZE", "METADATA_KEY", "default_data_dir"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_IMAGE_SIZE = 224        # crop size of variable-size sets, as imagenet2012
METADATA_KEY = "jaxconv"        # key of jaxconv's facts in the version's metadata.json
METADATA_FORMAT = 1
DEFAULT_VERSION = "1.0.0"
SHARD_BYTES = 512 << 20          # start a new ArrayRecord shard after this many bytes
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")
_USER_NAME_RE = re.compile(r"([a-z][a-z0-9_]*)(?::(\d+\.\d+\.\d+))?")
_BAD_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class BadImagesError(ValueError):
  """Files of the source folder that could not be decoded; `.bad` lists (path, reason)."""

  def __init__(self, bad: Sequence[tuple[str, str]], total: int):
    self.bad = list(bad)
    lines = "\n".join(f"  {path}: {reason}" for path, reason in self.bad)
    super().__init__(f"{len(self.bad)} of {total} image files could not be used (nothing was "
                     f"written); fix or remove them and re-run:\n{lines}")


def default_data_dir() -> str:
  """`$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (what tfds itself uses)."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                          "tensorflow_datasets")


def _epath(path):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(os.path.expanduser(os.fspath(path)) if "://" not in os.fspath(path)
                    else os.fspath(path))


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(p) for p in version.split("."))


# ----------------------------------------------------------------------------------------------
# Reading


def _info_from_metadata(name: str, dataset_json: dict, meta: dict) -> DatasetInfo:
  splits = tuple(s["name"] for s in dataset_json.get("splits", []))
  sizes = tuple(sum(int(n) for n in s.get("shardLengths", [])) for s in dataset_json["splits"])
  return DatasetInfo(
      name=name, num_classes=int(meta["num_classes"]), image_shape=tuple(meta["image_shape"]),
      mean=tuple(meta["mean"]), std=tuple(meta["std"]), splits=splits,
      train_split="train", eval_split="validation" if "validation" in splits else "train",
      split_sizes=sizes, variable_size=bool(meta["variable_size"]))


def find_user_dataset(name: str, data_dir=None) -> tuple[str, DatasetInfo] | None:
  """(version folder, DatasetInfo) of a prepared image folder `name` ("NAME" or "NAME:X.Y.Z")
  under `data_dir` (default `default_data_dir()`), or None if there is no such dataset.

  The newest version with dataset_info.json and jaxconv's metadata.json wins. Raises ValueError
  for a pinned version that does not exist, or a tfds dataset folder without jaxconv's metadata.
  """
  match = _USER_NAME_RE.fullmatch(name) if isinstance(name, str) else None
  if match is None:
    return None
  base, pinned = match.group(1), match.group(2)
  root = _epath(data_dir if data_dir is not None else default_data_dir())
  folder = root / base
  try:
    if not folder.is_dir():
      return None
    versions = sorted((p.name for p in folder.iterdir() if _VERSION_RE.fullmatch(p.name)),
                      key=_version_key, reverse=True)
  except OSError:
    return None
  with_info = [v for v in versions if (folder / v / "dataset_info.json").exists()]
  if pinned is not None:
    if pinned not in with_info:
      raise ValueError(f"dataset {name!r}: version {pinned} is not prepared under {folder} "
                       f"(prepared versions: {with_info or 'none'})")
    with_info = [pinned]
  for version in with_info:
    vdir = folder / version
    meta_path = vdir / "metadata.json"
    if not meta_path.exists():
      continue
    meta = json.loads(meta_path.read_text()).get(METADATA_KEY)
    if not meta:
      continue
    dataset_json = json.loads((vdir / "dataset_info.json").read_text())
    return os.fspath(vdir), _info_from_metadata(name, dataset_json, meta)
  if with_info:
    raise ValueError(
        f"dataset {name!r}: {folder} holds tfds version(s) {with_info} without jaxconv's "
        f"metadata ({METADATA_KEY!r} in metadata.json): it was not written by "
        "`python -m experiments.prepare_images`, so its statistics are unknown. Prepare the image "
        "folder with that command, or use a registered dataset name.")
  return None


# ----------------------------------------------------------------------------------------------
# Writing


@dataclasses.dataclass
class _Scanned:
  classes: list[str]
  files: list[tuple[str, int]]      # (path, label) in sorted (class, path) order
  ignored: list[str]                # files not read (other extensions, files outside classes)


def scan_image_folder(src_dir) -> _Scanned:
  """Class subfolders (sorted names = label ids) and their image files, recursively, sorted."""
  src_dir = os.path.expanduser(os.fspath(src_dir))
  if not os.path.isdir(src_dir):
    raise ValueError(f"SRC_DIR={src_dir!r} is not a folder (expected one subfolder per class)")
  entries = sorted(os.listdir(src_dir))
  classes = [e for e in entries if os.path.isdir(os.path.join(src_dir, e)) and not e.startswith(".")]
  ignored = [os.path.join(src_dir, e) for e in entries
             if not os.path.isdir(os.path.join(src_dir, e)) and not e.startswith(".")]
  if not classes:
    raise ValueError(f"SRC_DIR={src_dir!r} has no class subfolders: put the images of each class "
                     "in SRC_DIR/<class name>/")
  files, empty = [], []
  for label, cls in enumerate(classes):
    found = []
    for root, dirs, names in os.walk(os.path.join(src_dir, cls)):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for fname in names:
        if fname.startswith("."):
          continue
        path = os.path.join(root, fname)
        (found if fname.lower().endswith(IMAGE_EXTENSIONS) else ignored).append(path)
    if not found:
      empty.append(cls)
    files.extend((p, label) for p in sorted(found))
  if empty:
    raise ValueError(f"class folder(s) {empty} of {src_dir!r} hold no {'/'.join(IMAGE_EXTENSIONS)} "
                     "files: every class needs at least one image (remove the empty folders)")
  return _Scanned(classes, files, sorted(ignored))


@dataclasses.dataclass
class _Checked:
  size: tuple[int, int]                 # (H, W)
  gray: bool                            # decodes as mode "L"
  passthrough_modes: tuple[str, ...]    # modes that can be stored byte for byte
  sums: np.ndarray                      # float64 [C'] per-channel pixel sums (C' = 1 if gray else 3)
  sqsums: np.ndarray


def _open_rgb_or_l(path: str):
  """Decodes `path` fully; returns (PIL image in mode RGB or L, original mode, format)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    im.load()
    mode, fmt = im.mode, im.format
    if mode in _BAD_MODES:
      raise ValueError(f"16-bit or float pixels (PIL mode {mode}) are not supported: convert to "
                       "8-bit RGB or grayscale first")
    if mode not in ("RGB", "L"):
      im = im.convert("L" if mode in ("1", "LA") else "RGB")
    else:
      im = im.copy()
  return im, mode, fmt


def _check_one(path: str) -> _Checked:
  im, mode, fmt = _open_rgb_or_l(path)
  x = np.asarray(im, np.float64)
  x = x[..., None] if x.ndim == 2 else x
  return _Checked(size=x.shape[:2], gray=im.mode == "L",
                  passthrough_modes=(mode,) if fmt in ("JPEG", "PNG") and mode in ("RGB", "L")
                  else (),
                  sums=x.sum(axis=(0, 1)), sqsums=np.square(x).sum(axis=(0, 1)))


def _encoded(path: str, checked: _Checked, channels: int) -> bytes:
  """The bytes to store: the file itself when tfds decodes it to the right channels, else PNG."""
  target = "L" if channels == 1 else "RGB"
  if checked.passthrough_modes and (channels == 3 or checked.passthrough_modes[0] == "L"):
    with open(path, "rb") as f:
      return f.read()
  im, _, _ = _open_rgb_or_l(path)
  if im.mode != target:
    im = im.convert(target)
  buffer = io.BytesIO()
  im.save(buffer, format="PNG")
  return buffer.getvalue()


def _check_name(name: str) -> None:
  from jaxconv.data import info as info_lib  # pylint: disable=g-import-not-at-top
  if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
    raise ValueError(f"--name={name!r}: must be lower case letters, digits and underscores, "
                     "starting with a letter (a tfds dataset name), e.g. 'my_flowers'")
  registered = name in info_lib._REGISTRY  # pylint: disable=protected-access
  try:
    family = info_lib.family_of(name) is not None
  except ValueError:
    family = True
  if registered or family:
    raise ValueError(f"--name={name!r} is a dataset jaxconv already knows (registered datasets: "
                     f"{info_lib.list_datasets()}); choose another name")


def _map(fn, items, num_threads: int):
  if num_threads <= 1:
    return [_try(fn, x) for x in items]
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    return list(pool.map(lambda x: _try(fn, x), items))


def _try(fn, x):
  try:
    return fn(x)
  except Exception as e:  # pylint: disable=broad-except  (every failure is reported by path)
    return e


def _write_split(stage: str, name: str, split: str, records, shard_bytes: int):
  """Writes records (an iterator of bytes) as shards; returns (shard lengths, bytes)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  shards, lengths, writer, written = [], [], None, 0
  for record in records:
    if writer is None or written >= shard_bytes:
      if writer is not None:
        writer.close()
      shards.append(os.path.join(stage, f"{name}-{split}.shard{len(shards)}.tmp"))
      writer = array_record_module.ArrayRecordWriter(shards[-1], "group_size:1")
      lengths.append(0)
      written = 0
    writer.write(record)
    lengths[-1] += 1
    written += len(record)
  if writer is not None:
    writer.close()
  total = 0
  for i, tmp in enumerate(shards):
    final = os.path.join(stage, f"{name}-{split}.array_record-{i:05d}-of-{len(shards):05d}")
    os.rename(tmp, final)
    total += os.path.getsize(final)
  return lengths, total


def prepare_image_folder(src_dir, name: str, data_dir=None, *, val_fraction: float = 0.0,
                         seed: int = 0, image_size: int | None = None,
                         version: str | None = None, num_threads: int | None = None,
                         shard_bytes: int = SHARD_BYTES, log=print) -> str:
  """Writes the image folder `src_dir` as tfds ArrayRecord dataset `name` (module docstring).

  Args:
    src_dir: folder with one subfolder of JPEG/PNG images per class.
    name: dataset name (lower-case tfds name; not one jaxconv already registers).
    data_dir: where DATA_DIR/name/<version>/ goes (default `default_data_dir()`; gs:// works).
    val_fraction: fraction in [0, 1) of the images held out as a stratified "validation" split.
    seed: seed of the validation draw (int >= 0).
    image_size: crop size the pipeline yields for variable-size sets (default 224); given for a
      set whose images all have one size, the set is treated as variable-size at that size.
    version: "X.Y.Z" (default "1.0.0"); must not exist yet.
    num_threads: decoding threads (default: the CPU count, at most 16).
    log: where the summary lines go.

  Returns:
    The version folder written. Raises ValueError for bad arguments and `BadImagesError` (a
    ValueError) naming every undecodable file, before anything is written.
  """
  _check_name(name)
  if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
      or not 0 <= val_fraction < 1:
    raise ValueError(f"--val_fraction={val_fraction!r} must be a number in [0, 1)")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"--seed={seed!r} must be an int >= 0")
  if image_size is not None and (isinstance(image_size, bool) or
                                 not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ValueError(f"--image_size={image_size!r} must be a positive int (or unset)")
  version = DEFAULT_VERSION if version is None else version
  if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
    raise ValueError(f"--version={version!r} must look like 1.0.0 (MAJOR.MINOR.PATCH)")
  data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
  remote = "://" in data_dir
  folder = _epath(data_dir) / name
  target = folder / version

  def existing_versions():
    return sorted((p.name for p in folder.iterdir() if _VERSION_RE.fullmatch(p.name)),
                  key=_version_key) if folder.exists() else []

  def refuse_if_exists():
    if target.exists():
      versions = existing_versions()
      bump = versions[-1].split(".")
      bump = ".".join([*bump[:2], str(int(bump[2]) + 1)])
      raise ValueError(f"{target} already exists: it is left untouched. Pass --version={bump} to "
                       f"write a new version beside it (readers take the newest; "
                       f"'{name}:{versions[-1]}' pins one), or choose another --name")

  refuse_if_exists()
  scanned = scan_image_folder(src_dir)
  paths = [p for p, _ in scanned.files]
  labels = np.array([l for _, l in scanned.files], np.int64)
  num_threads = min(16, os.cpu_count() or 1) if num_threads is None else int(num_threads)
  log(f"decoding {len(paths)} images of {len(scanned.classes)} classes from {src_dir} ...")
  results = _map(_check_one, paths, num_threads)
  bad = [(p, f"{type(r).__name__}: {r}") for p, r in zip(paths, results)
         if isinstance(r, Exception)]
  if bad:
    raise BadImagesError(bad, len(paths))
  checked: list[_Checked] = results
  channels = 1 if all(c.gray for c in checked) else 3

  num_val = int(round(len(paths) * val_fraction))
  if val_fraction > 0 and num_val == 0:
    raise ValueError(f"--val_fraction={val_fraction} of {len(paths)} images is 0 images: "
                     "use a larger fraction (or 0 for no validation split)")
  if num_val >= len(paths):
    raise ValueError(f"--val_fraction={val_fraction} leaves no training images")
  from jaxconv.data.sources import _stratified_test_indices  # pylint: disable=g-import-not-at-top
  val = _stratified_test_indices(labels, num_val, int(seed)) if num_val else np.array([], int)
  train = np.setdiff1d(np.arange(len(paths)), val)
  splits = {"train": train, **({"validation": val} if num_val else {})}

  # Pixel statistics over the train split; a gray image counts in all 3 channels of a color set.
  sums, sqsums, count = np.zeros(channels), np.zeros(channels), 0
  for i in train:
    c = checked[i]
    sums += np.broadcast_to(c.sums, (channels,))
    sqsums += np.broadcast_to(c.sqsums, (channels,))
    count += c.size[0] * c.size[1]
  mean = sums / count
  std = np.sqrt(np.maximum(sqsums / count - mean ** 2, 0.0))
  std = np.where(std > 0, std, 1.0)   # a constant channel: leave it unscaled
  sizes = {c.size for c in checked}
  variable = len(sizes) > 1 or image_size is not None
  if variable:
    size = image_size or DEFAULT_IMAGE_SIZE
    image_shape = (size, size, channels)
  else:
    image_shape = (*next(iter(sizes)), channels)
  meta = {"format": METADATA_FORMAT, "num_classes": len(scanned.classes),
          "class_names": scanned.classes, "image_shape": list(image_shape),
          "variable_size": variable, "mean": [round(float(m), 4) for m in mean],
          "std": [round(float(s), 4) for s in std], "val_fraction": float(val_fraction),
          "seed": int(seed), "source_dir": os.path.abspath(os.path.expanduser(os.fspath(src_dir))),
          "min_size": [min(s[0] for s in sizes), min(s[1] for s in sizes)],
          "max_size": [max(s[0] for s in sizes), max(s[1] for s in sizes)]}

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, channels)),
      "label": tfds.features.ClassLabel(names=scanned.classes),
  })
  if remote:
    stage_parent = tempfile.mkdtemp(prefix=f"jaxconv_prepare_{name}_")
  else:
    os.makedirs(os.fspath(folder), exist_ok=True)
    stage_parent = None
  stage = (os.path.join(stage_parent, version) if remote else
           os.path.join(os.fspath(folder), f".incomplete-{version}-{uuid.uuid4().hex[:8]}"))
  os.makedirs(stage)
  try:
    split_infos = []
    for split, indices in splits.items():
      def records(indices=indices):
        # Encode in parallel, in chunks, keeping the stored order.
        for start in range(0, len(indices), 256):
          chunk = indices[start:start + 256]
          encoded = _map(lambda i: _encoded(paths[i], checked[i], channels), chunk, num_threads)
          for i, data in zip(chunk, encoded):
            if isinstance(data, Exception):
              raise BadImagesError([(paths[i], f"{type(data).__name__}: {data}")], len(paths))
            yield features.serialize_example({"image": data, "label": int(labels[i])})
      lengths, nbytes = _write_split(stage, name, split, records(), shard_bytes)
      split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=nbytes))
    tfds.folder_dataset.write_metadata(
        data_dir=stage, features=features, split_infos=split_infos, version=version,
        check_data=False, supervised_keys=("image", "label"),
        description=f"Image folder {meta['source_dir']} prepared by jaxconv "
                    "(python -m experiments.prepare_images).",
        metadata=tfds.core.MetadataDict({METADATA_KEY: meta}))
    refuse_if_exists()   # someone else wrote it meanwhile: keep theirs
    if remote:
      target.mkdir(parents=True, exist_ok=False)
      names = sorted(os.listdir(stage), key=lambda n: n == "dataset_info.json")
      for fname in names:     # dataset_info.json last: readers only see complete versions
        (target / fname).write_bytes(open(os.path.join(stage, fname), "rb").read())
    else:
      os.rename(stage, os.fspath(target))
  finally:
    if os.path.exists(stage):
      shutil.rmtree(stage, ignore_errors=True)
    if stage_parent:
      shutil.rmtree(stage_parent, ignore_errors=True)
  counts = np.bincount(labels, minlength=len(scanned.classes))
  log(f"wrote {target}: {', '.join(f'{s} {len(ix)}' for s, ix in splits.items())} images, "
      f"{len(scanned.classes)} classes ({min(counts)}..{max(counts)} images per class), "
      f"{channels} channel(s), " + (f"sizes {meta['min_size']}..{meta['max_size']} -> "
                                    f"variable-size, crops of {image_shape[:2]}" if variable else
                                    f"all {image_shape[:2]}") +
      f"; mean {meta['mean']} std {meta['std']}")
  if scanned.ignored:
    shown = ", ".join(scanned.ignored[:5]) + (" ..." if len(scanned.ignored) > 5 else "")
    log(f"not read ({len(scanned.ignored)} files without a {'/'.join(IMAGE_EXTENSIONS)} "
        f"extension or outside a class folder): {shown}")
  return os.fspath(target)
