"""Your own folder of images as a tfds dataset that jaxconv trains on (no TensorFlow needed).

    python -m experiments.prepare_images SRC_DIR --name NAME --data_dir DIR \
        [--val_fraction 0.1] [--seed 0] [--image_size 224] [--version 1.0.0]
    python -m experiments.train --config experiments/configs/CONFIG.py --workdir RUN \
        --config.dataset=NAME --config.data_dir=DIR

SRC_DIR holds one subfolder per class (SRC_DIR/<class>/**/*.jpg|jpeg|png); the sorted subfolder
names are the label ids. Writes DIR/NAME/<version>/ (ArrayRecord shards, dataset_info.json,
features.json, label.labels.txt, metadata.json) readable by `tfds.data_source(NAME,
data_dir=DIR)`; DIR may be gs://. Every image is decoded first: undecodable files are all listed
by path and the command exits with status 1 before writing anything. An existing version is never
overwritten (the command refuses; --version writes a new one beside it). Details:
jaxconv/data/folder.py.
"""
from __future__ import annotations

import sys

from absl import app, flags

_NAME = flags.DEFINE_string("name", None, "dataset name (lower case, digits, underscores)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir to write into (default "
                                "$TFDS_DATA_DIR, else ~/tensorflow_datasets); gs:// works")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.0, "fraction of the images held out as a "
                                   "stratified 'validation' split, in [0, 1)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the validation draw")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "crop size of variable-size sets "
                                   "(default 224); set it to resize a fixed-size set too")
_VERSION = flags.DEFINE_string("version", None, "dataset version X.Y.Z (default 1.0.0)")
_THREADS = flags.DEFINE_integer("num_threads", None, "decoding threads (default: CPU count)")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f"expected exactly one SRC_DIR argument, got {argv[1:]}")
  if not _NAME.value:
    raise app.UsageError("--name is required")
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.WARNING)
  from jaxconv.data.folder import prepare_image_folder  # pylint: disable=g-import-not-at-top
  try:
    path = prepare_image_folder(argv[1], _NAME.value, _DATA_DIR.value,
                                val_fraction=_VAL_FRACTION.value, seed=_SEED.value,
                                image_size=_IMAGE_SIZE.value, version=_VERSION.value,
                                num_threads=_THREADS.value)
  except ValueError as err:  # bad arguments, bad images, existing version: the message only
    print(f"prepare_images: error: {err}", file=sys.stderr)
    return 1
  name = _NAME.value if _VERSION.value is None else f"{_NAME.value}:{_VERSION.value}"
  data_dir = _DATA_DIR.value or "$TFDS_DATA_DIR"
  print(f"train on it with: python -m experiments.train --config CONFIG --workdir RUN "
        f"--config.dataset={name} --config.data_dir={data_dir}")
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
