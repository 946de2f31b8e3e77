"""Throughput of `train_iterator` on this machine.

    python -m jaxconv.data.bench [--steps 30] [--batch 128] [--threads 0,2]

Prints the machine, the shapes, and images/s of the grain pipeline on `digits` (8x8x1) and on a
synthetic in-memory 32x32x3 uint8 source (CIFAR-sized), with and without the CIFAR augmentation
(crop_padding=4, flip, cutout=8). Baseline in the same process: a vectorized numpy gather +
normalize of random batches from the same arrays (no augmentation, no grain), i.e. an upper bound
for feeding in-memory data from Python.
"""

from __future__ import annotations

import argparse
import os
import platform
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--threads", default=f"0,{min(16, os.cpu_count() or 1)}",
                      help="comma-separated num_threads values to try")
  args = parser.parse_args(argv)
  import grain  # pylint: disable=g-import-not-at-top
  print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, "
        f"os.cpu_count()={os.cpu_count()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, grain {getattr(grain, '__version__', '?')}")
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
