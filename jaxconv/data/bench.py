"""Throughput of `train_iterator` on this machine.

    python -m jaxconv.data.bench [--steps 30] [--batch 128] [--threads 0,2]
    python -m jaxconv.data.bench --suite recipe [--recipe_images 256] [--torch_python PY]

Prints the machine, the shapes, and images/s.

Suite "basic": the grain pipeline on `digits` (8x8x1) and on a synthetic in-memory 32x32x3 uint8
source (CIFAR-sized), with and without the CIFAR augmentation (crop_padding=4, flip, cutout=8).
Baseline in the same process: a vectorized numpy gather + normalize of random batches from the
same arrays (no augmentation, no grain), i.e. an upper bound for feeding in-memory data from
Python.

Suite "recipe" (issue 13 item 7): the ConvNeXt/DeiT training input on ImageNet-sized JPEGs
written locally with PIL (`--jpeg_count` files of 500x375, quality 90): JPEG decode (tfds's
`Image` feature decoder, the call `TfdsSource` makes when grain's worker reads an imagenet2012
record; PIL, or OpenCV where installed) -> random-resized-crop 224 -> flip -> RandAugment
rand-m9-mstd0.5-inc1 -> normalize -> random erasing 0.25 (pixel mode), through `train_iterator`
with ONE worker thread, i.e. images/s per host core; also the same without RandAugment/erasing
and decode only, to show where the time goes. With `--torch_python PY` the same files go through
timm's `create_transform(224, is_training=True, auto_augment=..., re_prob=0.25, re_mode='pixel')`
(PIL decode, `torch.set_num_threads(1)`) in a subprocess of that python, printed beside with the
ratio. Both sides read the same bytes from memory (no disk in the timing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

from jaxconv import data


def _rate(iterator, steps: int, batch: int) -> float:
  next(iterator)  # start-up (threads, first permutation) not timed
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * batch / (time.perf_counter() - start)


def _baseline(images: np.ndarray, info, steps: int, batch: int) -> float:
  mean = np.ascontiguousarray(np.broadcast_to(np.asarray(info.mean, np.float32), images.shape[1:]))
  std = np.ascontiguousarray(np.broadcast_to(np.asarray(info.std, np.float32), images.shape[1:]))
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for _ in range(steps):
    idx = rng.integers(0, len(images), batch)
    x = images[idx].astype(np.float32)
    x -= mean
    x /= std
  return steps * batch / (time.perf_counter() - start)


RECIPE_POLICY = "rand-m9-mstd0.5-inc1"
RECIPE_ERASING = 0.25
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def write_jpegs(directory: str, count: int, size=(500, 375), seed: int = 0) -> list[str]:
  """`count` ImageNet-sized JPEGs (smooth random colour fields + noise, quality 90)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  paths = []
  for k in range(count):
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), np.float32)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    path = os.path.join(directory, f"{k:04d}.jpg")
    Image.fromarray(img).save(path, format="JPEG", quality=90)
    paths.append(path)
  return paths


class JpegBytesSource:
  """Encoded JPEGs in memory, decoded on read by tfds's `Image` feature decoder (what a tfds
  imagenet2012 data source does in `TfdsSource.__getitem__`)."""

  def __init__(self, blobs: list[bytes], info):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._blobs = blobs
    self._feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    self.info = info

  def __len__(self):
    return len(self._blobs)

  def __getitem__(self, index):
    return {"image": self._feature.decode_example_np(self._blobs[int(index)]),
            "label": int(index) % self.info.num_classes}


_TORCH_SCRIPT = r"""
import io, json, sys, time
import torch
from PIL import Image
import timm
from timm.data import create_transform
from timm.data import auto_augment as taa
torch.set_num_threads(1)
paths, n, policy, re_prob = json.loads(sys.argv[1])
# Pillow >= 12 refuses ImageOps.posterize(img, 0), which timm reaches when mstd noise takes
# PosterizeIncreasing to magnitude 10; give the black image older Pillow gave (as jaxconv does).
_posterize = taa.posterize
def posterize(img, bits, **kwargs):
  return Image.new(img.mode, img.size, 0) if bits < 1 else _posterize(img, bits, **kwargs)
for name in taa.NAME_TO_OP:
  if name.startswith("Posterize"):
    taa.NAME_TO_OP[name] = posterize
blobs = [open(p, "rb").read() for p in paths]
def decode(b):
  return Image.open(io.BytesIO(b)).convert("RGB")
full = create_transform(224, is_training=True, auto_augment=policy, re_prob=re_prob,
                        re_mode="pixel")
plain = create_transform(224, is_training=True, auto_augment=None, color_jitter=None)
torch.manual_seed(0)
out = {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads()}
for name, fn in [("decode", decode), ("decode+rrc+flip+normalize", lambda b: plain(decode(b))),
                 ("full", lambda b: full(decode(b)))]:
  fn(blobs[0])
  start = time.perf_counter()
  for k in range(n):
    y = fn(blobs[k % len(blobs)])
  out[name] = n / (time.perf_counter() - start)
out["shape"] = list(y.shape)
out["transform"] = " -> ".join(type(t).__name__ for t in full.transforms)
print(json.dumps(out))
"""


def _torch_rates(python: str, paths: list[str], n: int) -> dict:
  result = subprocess.run(
      [python, "-c", _TORCH_SCRIPT, json.dumps([paths, n, RECIPE_POLICY, RECIPE_ERASING])],
      capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
  if result.returncode:
    raise RuntimeError(f"--torch_python {python} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def recipe_suite(args):
  """The full recipe input pipeline on JPEGs, one worker thread, beside timm's (see docstring)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  batch, n = 32, max(32, args.recipe_images // 32 * 32)
  with tempfile.TemporaryDirectory(prefix="jaxconv_jpegs_") as tmp:
    paths = write_jpegs(tmp, args.jpeg_count)
    blobs = [open(p, "rb").read() for p in paths]
    kib = np.mean([len(b) for b in blobs]) / 1024
    print(f"recipe suite: {len(paths)} JPEGs 500x375 q90 (mean {kib:.0f} KiB), "
          f"{n} images timed per row, output 224x224x3 float32, batch {batch}, pillow "
          f"{Image.__version__}; 1 worker thread (= images/s per core)")
    info = data.DatasetInfo("jpeg_bench", 1000, (224, 224, 3),
                            mean=tuple(255 * m for m in IMAGENET_MEAN),
                            std=tuple(255 * s for s in IMAGENET_STD), variable_size=True)
    src = JpegBytesSource(blobs, info)
    full = data.AugmentConfig(flip=True, randaugment=RECIPE_POLICY, random_erasing=RECIPE_ERASING,
                              erasing_mode="pixel")

    def ours():
      rates = {}
      start = time.perf_counter()
      for k in range(n):
        src[k % len(src)]
      rates["decode"] = n / (time.perf_counter() - start)
      for label, cfg in [("decode+rrc+flip+normalize", data.AugmentConfig(flip=True)),
                         ("full", full)]:
        it = data.train_iterator(src, global_batch_size=batch, seed=0, augment=cfg,
                                 num_threads=1)
        shapes[label] = next(it)["image"].shape
        rates[label] = _rate(it, n // batch, batch)
      return rates

    # Alternate the two sides and keep each row's best: on a loaded machine the slowest runs
    # measure the neighbours, not the pipeline.
    shapes, best, theirs = {}, {}, None
    for _ in range(args.repeats):
      for label, rate in ours().items():
        best[label] = max(best.get(label, 0.0), rate)
      if args.torch_python:
        run = _torch_rates(args.torch_python, paths, n)
        theirs = run if theirs is None else {
            k: max(v, run[k]) if isinstance(v, float) else v for k, v in theirs.items()}
  rows = list(best.items())
  print(f"jaxconv output batch {shapes['full']} float32: decode -> RandomResizedCrop -> flip -> "
        f"RandAugment {RECIPE_POLICY} -> normalize -> RandomErasing p={RECIPE_ERASING} pixel")
  if theirs:
    print(f"timm {theirs['timm']} / torch {theirs['torch']} ({theirs['threads']} thread), output "
          f"{theirs['shape']}: {theirs['transform']}")
  print(f"best of {args.repeats} alternating runs per side")
  print(f"{'pipeline (JPEG -> 224 crop)':<34} {'jaxconv img/s':>14}"
        + (f" {'timm img/s':>11} {'ratio':>6}" if theirs else ""))
  for label, rate in rows:
    line = f"{label:<34} {rate:>14.1f}"
    if theirs:
      line += f" {theirs[label]:>11.1f} {rate / theirs[label]:>6.2f}"
    print(line)
  return rows, theirs


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or ""


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--threads", default=f"0,{min(16, os.cpu_count() or 1)}",
                      help="comma-separated num_threads values to try")
  parser.add_argument("--suite", default="basic,recipe",
                      help="comma-separated: basic (in-memory small images), recipe (JPEGs)")
  parser.add_argument("--recipe_images", type=int, default=256,
                      help="images timed per recipe row (a multiple of 32)")
  parser.add_argument("--jpeg_count", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3,
                      help="recipe suite: alternating runs per side; the best is reported")
  parser.add_argument("--torch_python", default=None,
                      help="a python with torch+timm: run timm's transform on the same JPEGs")
  args = parser.parse_args(argv)
  suites = args.suite.split(",")
  bad = [s for s in suites if s not in ("basic", "recipe")]
  if bad:
    raise ValueError(f"--suite={args.suite!r}: unknown {bad}; valid: basic, recipe")
  import grain  # pylint: disable=g-import-not-at-top
  print(f"machine: {platform.node()} {platform.machine()} {_cpu_model()}, "
        f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, grain {getattr(grain, '__version__', '?')}")
  if hasattr(os, "getloadavg"):
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min)")
  if "recipe" in suites:
    recipe_suite(args)
  if "basic" not in suites:
    return
  print(f"global_batch_size={args.batch}, steps={args.steps}, 1 process")

  digits = data.get_source("digits", "train")
  rng = np.random.default_rng(0)
  synth_info = data.DatasetInfo("synthetic32", 10, (32, 32, 3), mean=(125.0, 123.0, 114.0),
                                std=(63.0, 62.0, 67.0))
  synth_images = rng.integers(0, 256, size=(10000, 32, 32, 3), dtype=np.uint8)
  synth = data.ArraySource(synth_images, rng.integers(0, 10, 10000), synth_info)
  cifar_aug = data.AugmentConfig(crop_padding=4, flip=True, cutout=8)
  digits_aug = data.AugmentConfig(crop_padding=1, flip=True)

  rows = []
  for name, src, images, augment in [
      ("digits 8x8x1", digits, digits._images, digits_aug),  # pylint: disable=protected-access
      ("synthetic 32x32x3", synth, synth_images, cifar_aug)]:
    base = _baseline(images, src.info, args.steps, args.batch)
    rows.append((name, "baseline: numpy gather+normalize", "-", base))
    for threads in [int(t) for t in args.threads.split(",")]:
      for label, cfg in [("no augmentation", data.AugmentConfig()), (f"augment {cfg_str(augment)}",
                                                                      augment)]:
        it = data.train_iterator(src, global_batch_size=args.batch, seed=0, augment=cfg,
                                 num_threads=threads)
        rows.append((name, label, threads, _rate(it, args.steps, args.batch)))
  print(f"{'source':<20} {'pipeline':<45} {'threads':>7} {'images/s':>10}")
  for name, label, threads, rate in rows:
    print(f"{name:<20} {label:<45} {threads!s:>7} {rate:>10.0f}")


def cfg_str(cfg: data.AugmentConfig) -> str:
  return f"(pad={cfg.crop_padding}, flip={cfg.flip}, cutout={cfg.cutout})"


if __name__ == "__main__":
  main()
