"""grain input pipelines: `train_iterator` (infinite, deterministic) and `eval_iterator` (one pass).

Both are grain `MapDataset`s over row indices: index arithmetic -> load + transform (a `map`
run by grain's prefetch thread pool via `to_iter_dataset(ReadOptions(num_threads=...))`) ->
`batch`. Each grain element is a task of `rows_per_task` consecutive rows (auto: about two tasks
per thread per batch), so per-task thread overhead is amortized for tiny images while large
images (reading, JPEG decoding, cropping) still spread over all threads; the same code serves
in-memory arrays and ImageNet-sized ArrayRecord data. Tasking never changes the data.

Training order (exact and resumable):
  * Examples are consumed as one continuous stream of *global positions* p = 0, 1, 2, ...;
    step s uses positions [s*B, (s+1)*B) for global batch size B. Position p belongs to epoch
    e = p // N (N = len(source)) and reads example perm_e[p % N], where perm_e is a permutation
    of range(N) drawn from (seed, e). So every epoch is a fresh permutation that covers every
    example exactly once, nothing is dropped, and every step is a full batch; a batch may
    straddle an epoch boundary (its first rows end epoch e, the rest start epoch e+1).
    N / B steps make one epoch (not an integer in general).
  * The augmentation randomness of position p comes only from a generator seeded by
    (seed, p) (`np.random.Philox(key=(seed, p))`), never from thread or worker order. The
    recipe ops (RandAugment & co., random erasing) draw from a second generator of (seed, p):
    the same key with the Philox counter started at 2**192 (`_AUX_COUNTER`), a range the first
    generator never reaches, so turning them on leaves every other draw unchanged.
  * Repeated augmentation (`aug_repeats` = r > 1, Hoffer et al. 2020 / timm's RepeatAugSampler):
    position p reads perm_e[(p % N) // r], so each example appears r times at consecutive
    positions (different views: each position has its own generator) and an epoch is still
    N positions, covering ceil(N / r) distinct examples. Unlike timm's sampler, which deals the
    copies to different GPUs, the copies here fall in the same global batch (and usually on the
    same host), as in Hoffer et al.
  * Hence the global batch of step s is a pure function of (source, seed, s, B, augment), and
    `start_step=s` starts exactly at step s.
  * Process i of P gets rows [i*B/P, (i+1)*B/P) of each global batch; concatenating the P local
    batches of a step gives exactly the 1-process batch.

Evaluation: the split in its stored order, in ceil(N / B) global batches; global batch k holds
examples [k*B, (k+1)*B), process i gets rows [i*B/P, (i+1)*B/P) of it, and rows past the end of
the data are zero images with label 0 and mask False. Every process yields the same number of
batches, and every example is counted exactly once across processes.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Iterator

import numpy as np

from jaxconv.data.augment import AugmentConfig, make_transform

__all__ = ["train_iterator", "eval_iterator", "EvalIterator", "steps_per_epoch",
           "epoch_permutation", "example_index"]

# Positions must fit the 64-bit Philox key word and MapDataset lengths must fit an int64.
_MAX_POSITION = 2**62
_PERM_SALT = 0x6A78636F6E76  # "jxconv": separates the permutation stream from other uses
_AUX_COUNTER = 1  # top word of the recipe ops' Philox counter: a stream disjoint from the first


def _source_info(src):
  info = getattr(src, "info", None)
  if info is None:
    raise TypeError("the source needs an `info` attribute (a data.DatasetInfo); "
                    "use data.get_source(...) or data.ArraySource(images, labels, info)")
  return info


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def _local_batch(global_batch_size, process_index, process_count) -> tuple[int, int]:
  global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
  process_count = _check_int("process_count", process_count, 1)
  process_index = _check_int("process_index", process_index, 0)
  if process_index >= process_count:
    raise ValueError(f"process_index={process_index} must be < process_count={process_count}")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"process_count={process_count}")
  local = global_batch_size // process_count
  return local, process_index * local


def _num_threads(num_threads) -> int:
  if num_threads is None:
    return min(16, os.cpu_count() or 1)
  return _check_int("num_threads", num_threads, 0)


def _rows_per_task(local_batch: int, num_threads: int, rows_per_task) -> int:
  """Rows each grain task loads (a divisor of the local batch).

  One grain element is a task of this many consecutive rows: per-element thread-pool overhead is
  hundreds of microseconds in CPython, far more than an 8x8 image costs, so small images are
  loaded in chunks. Auto: about 2 tasks per thread per batch (one task per batch without threads).
  """
  if rows_per_task is None:
    target = local_batch if num_threads == 0 else max(1, local_batch // (2 * num_threads))
  else:
    target = _check_int("rows_per_task", rows_per_task, 1)
  target = min(target, local_batch)
  return max(d for d in range(1, target + 1) if local_batch % d == 0)


def _pipeline(load_rows, first_row: int, stop_row: int, local_batch: int, num_threads,
              prefetch_batches: int, rows_per_task):
  """range(rows) in tasks of `rows_per_task` -> map(load_rows) -> prefetch threads -> batches.

  `load_rows(range of row indices) -> dict of arrays with those rows`.
  """
  import grain  # pylint: disable=g-import-not-at-top
  num_threads = _num_threads(num_threads)
  prefetch_batches = _check_int("prefetch_batches", prefetch_batches, 0)
  chunk = _rows_per_task(local_batch, num_threads, rows_per_task)
  tasks_per_batch = local_batch // chunk
  if num_threads == 0 or prefetch_batches == 0:
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  else:
    options = grain.ReadOptions(
        num_threads=num_threads,
        prefetch_buffer_size=max(prefetch_batches * tasks_per_batch, 2 * num_threads))

  def load_task(task: int):
    return load_rows(range(task * chunk, (task + 1) * chunk))

  def collate(tasks):
    if len(tasks) == 1:
      return tasks[0]
    return {key: np.concatenate([t[key] for t in tasks]) for key in tasks[0]}

  return (grain.MapDataset.range(first_row // chunk, stop_row // chunk)
          .map(load_task)
          .to_iter_dataset(options)
          .batch(tasks_per_batch, drop_remainder=True, batch_fn=collate))


def _read(src, indices: list[int]) -> list[dict[str, Any]]:
  getitems = getattr(src, "__getitems__", None)
  if getitems is not None:
    return list(getitems(indices))
  return [src[i] for i in indices]


@functools.lru_cache(maxsize=8)
def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  perm = np.random.default_rng([_PERM_SALT, seed, epoch]).permutation(n)
  perm.setflags(write=False)
  return perm


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order in which epoch `epoch` reads the N examples (read-only array)."""
  return _cached_permutation(int(seed) % 2**64, int(epoch), int(n))


def steps_per_epoch(num_examples: int, global_batch_size: int) -> float:
  """Steps per epoch, N / B (a float: epochs are not aligned to steps, see module docstring)."""
  return num_examples / global_batch_size


_THREAD_RNG = threading.local()


def _reset(name: str, seed: int, position: int, counter_top: int) -> np.random.Generator:
  generator = getattr(_THREAD_RNG, name, None)
  if generator is None:
    generator = np.random.Generator(np.random.Philox(key=0))
    setattr(_THREAD_RNG, name, generator)
  counter = np.zeros(4, np.uint64)
  counter[3] = counter_top
  generator.bit_generator.state = {
      "bit_generator": "Philox",
      "state": {"counter": counter, "key": np.array([seed, position], dtype=np.uint64)},
      "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0,
  }
  return generator


def _element_rng(seed: int, position: int) -> np.random.Generator:
  """A generator in the exact state of `Generator(Philox(key=(seed, position)))`.

  Building a Philox from scratch costs ~25-40 us; each thread instead keeps one and resets its
  state (key, zero counter, empty buffer), which is identical and ~4x cheaper. The generator is
  only valid until this thread's next call.
  """
  return _reset("generator", seed, position, 0)


def _aux_rng(seed: int, position: int) -> np.random.Generator:
  """The recipe ops' generator of (seed, position): `Philox(key=(seed, position),
  counter=[0, 0, 0, _AUX_COUNTER])`, disjoint from `_element_rng`'s stream (same reuse rules)."""
  return _reset("aux_generator", seed, position, _AUX_COUNTER)


def example_index(seed: int, position: int, n: int, aug_repeats: int = 1) -> int:
  """The example (row of the source) that training position `position` reads."""
  perm = _cached_permutation(int(seed) % 2**64, position // n, n)
  return int(perm[(position % n) // aug_repeats])


def train_iterator(src, *, global_batch_size: int, seed: int, start_step: int = 0,
                   augment: AugmentConfig | None = None, process_index: int = 0,
                   process_count: int = 1, num_threads: int | None = None,
                   prefetch_batches: int = 2, rows_per_task: int | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of local training batches (see the module docstring for the order).

  Args:
    src: random-access source with `.info` (e.g. `get_source(name, "train")`).
    global_batch_size: B, summed over processes; must be divisible by `process_count`.
    seed: non-negative int; reduced mod 2**64.
    start_step: first step to yield (resume = pass the step to run next).
    augment: `AugmentConfig`; default no augmentation. Its `aug_repeats` also sets which example
      each position reads (see the module docstring); mixup/CutMix are not applied here.
    process_index, process_count: this process's rows of each global batch.
    num_threads: grain prefetch threads (None: min(16, cpu count); 0: no threads, no prefetch).
    prefetch_batches: how many local batches grain keeps in flight.
    rows_per_task: rows one thread-pool task loads (a divisor of B/P; None: auto). Only affects
      speed, never the data.

  Yields:
    {"image": float32 [B/P, H, W, C] normalized with info.mean/std, "label": int32 [B/P]}.
    Sequence datasets: "image" float32 [B/P, L, C] (normalized) or int32 token ids [B/P, L];
    "label" int32 [B/P], int32 [B/P, L] (per-position, -1 = unlabelled) or float32 [B/P, K]
    (regression), following `info.task`.
  """
  info = _source_info(src)
  local_batch, offset = _local_batch(global_batch_size, process_index, process_count)
  seed = _check_int("seed", seed, 0) % 2**64
  start_step = _check_int("start_step", start_step, 0)
  n = len(src)
  if n == 0:
    raise ValueError("cannot train on an empty source")
  max_steps = _MAX_POSITION // global_batch_size
  if start_step >= max_steps:
    raise ValueError(f"start_step={start_step} is too large")
  transform = make_transform(info, augment, train=True)
  needs_rng, needs_aux = transform.needs_rng, transform.needs_aux_rng
  repeats = augment.aug_repeats if augment is not None else 1
  label_dtype = np.dtype(info.label_dtype)

  def load_rows(rows: range) -> dict[str, np.ndarray]:
    positions = [(k // local_batch) * global_batch_size + offset + k % local_batch for k in rows]
    indices = [int(_cached_permutation(seed, p // n, n)[(p % n) // repeats]) for p in positions]
    raws, uniforms, plans, labels = [], [], [], []
    for position, example in zip(positions, _read(src, indices)):
      raw, u, plan = transform.prepare(
          example["image"], _element_rng(seed, position) if needs_rng else None,
          _aux_rng(seed, position) if needs_aux else None)
      raws.append(raw)
      uniforms.append(u)
      plans.append(plan)
      labels.append(example["label"])
    return {
        "image": transform.apply(np.stack(raws), np.stack(uniforms) if needs_rng else None,
                                 plans if needs_aux else None),
        "label": np.asarray(labels, label_dtype),
    }

  dataset = _pipeline(load_rows, start_step * local_batch, max_steps * local_batch, local_batch,
                      num_threads, prefetch_batches, rows_per_task)
  return iter(dataset)


class EvalIterator:
  """One pass over the eval batches; `len()` is the number of batches (same on every process)."""

  def __init__(self, iterator, num_batches: int):
    self._it = iterator
    self._num_batches = num_batches

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)


def eval_iterator(src, *, global_batch_size: int, process_index: int = 0,
                  process_count: int = 1, num_threads: int | None = None,
                  prefetch_batches: int = 2, rows_per_task: int | None = None
                  ) -> EvalIterator:
  """One pass over `src` in order, padded to full batches (see the module docstring).

  Yields:
    {"image": float32 [B/P, H, W, C], "label": int32 [B/P], "mask": bool [B/P]}; padded rows
    have mask False (image zeros, label 0; per-position labels -1). Sequence datasets: the
    image and label shapes and dtypes of `train_iterator`.
  """
  info = _source_info(src)
  local_batch, offset = _local_batch(global_batch_size, process_index, process_count)
  n = len(src)
  num_batches = -(-n // global_batch_size)
  transform = make_transform(info, None, train=False)
  stored_dtype = np.dtype(info.image_dtype)
  label_dtype = np.dtype(info.label_dtype)
  # Padding rows' label: 0, or -1 everywhere for per-position labels (so they count nowhere).
  pad_label = np.full(info.label_shape, -1 if info.task == "per_position" else 0, label_dtype)

  def load_rows(rows: range) -> dict[str, np.ndarray]:
    positions = [(k // local_batch) * global_batch_size + offset + k % local_batch for k in rows]
    mask = np.array([p < n for p in positions], np.bool_)
    examples = iter(_read(src, [p for p in positions if p < n]))
    raws, labels = [], []
    for valid in mask:
      if valid:
        example = next(examples)
        raws.append(transform.prepare(example["image"], None)[0])
        labels.append(example["label"])
      else:
        raws.append(None)
        labels.append(pad_label)
    if not mask.all():  # padding rows: zero images (set again to 0 after normalizing)
      filler = np.zeros(transform.shape, raws[int(mask.argmax())].dtype if mask.any()
                        else stored_dtype)
      raws = [filler if r is None else r for r in raws]
    image = transform.apply(np.stack(raws), None)
    image[~mask] = 0
    return {"image": image, "label": np.asarray(labels, label_dtype), "mask": mask}

  dataset = _pipeline(load_rows, 0, num_batches * local_batch, local_batch, num_threads,
                      prefetch_batches, rows_per_task)
  return EvalIterator(iter(dataset), num_batches)
