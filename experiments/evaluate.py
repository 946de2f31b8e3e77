"""Top-1 / top-5 of pretrained or trained weights on a prepared dataset split.

    python -m experiments.evaluate --model resnet50 --weights resnet50.safetensors \
        --dataset imagenet2012 [--data_dir D] [--split validation] [--crop_pct 0.95 \
        --interpolation bicubic --image_size 224] [--batch_size 64]
    python -m experiments.evaluate --weights RUN [--dataset NAME --split S] [--ema]

--weights is one of:
  * a timm state dict, FILE.npz (np.savez of `{k: v.numpy()}`) or FILE.safetensors, converted with
    `jaxconv.convert.from_timm` into `create_model(--model, num_classes=<the dataset's>)`;
  * a workdir of `experiments.train` (config.json + orbax checkpoints): the model, overrides,
    dtype, dataset, data_dir and eval split come from its config.json (flags override the data
    ones); `--ema` evaluates the EMA weights of a run trained with `config.ema_decay`.

Preprocessing (--preprocess):
  * timm (default for state dicts): timm's eval transform (`jaxconv.data.eval_preprocess`):
    resize the shorter side to floor(image_size / crop_pct) with --interpolation, centre crop,
    x/255, normalize with --mean/--std. Unset flags take timm's default pretrained config of
    --model (`eval_preprocess.TIMM_PRETRAINED_EVAL`), else timm's generic defaults (bicubic,
    0.875, ImageNet mean/std, the model's input size).
  * dataset (default for workdirs): exactly the training loop's evaluation, the dataset's own
    normalization and size (and the run's `config.image_size` resize on device), so a run's
    top-1 here equals the `eval_top1` its training logged.
Prints one JSON row (top1, top5 -- topK for K < 5 classes --, count, settings, images/s,
device); --output also writes it (local or gs://). Bad flags fail before any weights or data are read, naming the flag.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "registered model name (a workdir's config has it)")
_WEIGHTS = flags.DEFINE_string("weights", None, "FILE.npz | FILE.safetensors (timm state dict) "
                               "or a training workdir")
_DATASET = flags.DEFINE_string("dataset", None, "dataset name (default: imagenet2012, or the "
                               "workdir's dataset)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir (default $TFDS_DATA_DIR; a "
                                "workdir's config.data_dir)")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (default: the dataset's eval "
                             "split, or the workdir's); slices such as validation[:1000] work")
_PREPROCESS = flags.DEFINE_enum("preprocess", None, ["timm", "dataset"], "timm's eval transform "
                                "(default for state dicts) or the dataset's own (workdirs)")
_CROP_PCT = flags.DEFINE_float("crop_pct", None, "timm: shorter side = image_size / crop_pct")
_INTERPOLATION = flags.DEFINE_string("interpolation", None, "timm: nearest | bilinear | bicubic "
                                     "| box | hamming | lanczos")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "square input size")
_MEAN = flags.DEFINE_list("mean", None, "timm: 3 per-channel means, 0..1 scale")
_STD = flags.DEFINE_list("std", None, "timm: 3 per-channel stds, 0..1 scale")
# allow_override: experiments.quantize defines --batch_size too, and a test process may import
# both modules (each command line imports only one).
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "evaluation batch size", allow_override=True)
_EMA = flags.DEFINE_bool("ema", False, "workdir: evaluate the EMA weights")
_OUTPUT = flags.DEFINE_string("output", None, "also write the JSON row to this file")
_THREADS = flags.DEFINE_integer("num_threads", None, "data loading threads (default: CPU count)")

STATE_DICT_SUFFIXES = (".npz", ".safetensors")


@dataclasses.dataclass
class _Plan:
  """Everything checked before weights or data are read."""
  model: str
  weights: str
  workdir_config: dict | None
  dataset: str
  data_dir: str | None
  split: str
  preprocess: str
  settings: object | None          # eval_preprocess.EvalSettings for timm preprocessing
  image_size: int | None           # dataset preprocessing: on-device resize (as training)
  batch_size: int
  ema: bool


def _floats(flag: str, values):
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected 3 comma-separated numbers") from None


def plan(*, model=None, weights=None, dataset=None, data_dir=None, split=None, preprocess=None,
         crop_pct=None, interpolation=None, image_size=None, mean=None, std=None,
         batch_size=64, ema=False) -> _Plan:
  """Checks the arguments (ValueError naming the flag, the value and the valid choices) and
  resolves the defaults, reading nothing but a workdir's config.json and dataset metadata."""
  import jaxconv  # pylint: disable=g-import-not-at-top
  from jaxconv import data  # pylint: disable=g-import-not-at-top
  from jaxconv.data import eval_preprocess  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not weights:
    raise ValueError("--weights is required: FILE.npz | FILE.safetensors | a training workdir")
  path = epath.Path(weights)
  config = None
  if path.is_dir():
    config_path = path / "config.json"
    if not config_path.exists():
      raise ValueError(f"--weights={weights!r} is a folder without config.json: not a training "
                       "workdir (state dicts must be .npz or .safetensors files)")
    config = json.loads(config_path.read_text())
    if model is not None and model != config["model"]:
      raise ValueError(f"--model={model!r} differs from the workdir's model {config['model']!r} "
                       "(leave --model out for a workdir)")
    model = config["model"]
  elif not path.exists():
    raise ValueError(f"--weights={weights!r} does not exist")
  elif not str(weights).lower().endswith(STATE_DICT_SUFFIXES):
    raise ValueError(f"--weights={weights!r}: expected a state dict {STATE_DICT_SUFFIXES} or a "
                     "training workdir (convert .pth files with numpy, see "
                     "jaxconv.convert.load_state_dict)")
  if not model:
    raise ValueError("--model is required with a state-dict --weights file")
  jaxconv.model_info(model)  # unknown model: ValueError naming close matches
  if ema and config is None:
    raise ValueError("--ema applies to training workdirs only (a state dict has one set of "
                     "weights)")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"--batch_size={batch_size!r} must be a positive int")
  dataset = dataset or (config["dataset"] if config else "imagenet2012")
  if data_dir is None and config is not None:
    data_dir = config.get("data_dir")
  info = data.dataset_info(dataset, data_dir=data_dir)  # unknown dataset: ValueError
  if info.is_sequence or info.task != "classification":
    raise ValueError(f"--dataset={dataset!r} is a {info.task} sequence dataset; evaluate "
                     "reports top-1/top-5 of image classifiers")
  if split is None:
    split = (config.get("eval_split") if config else None) or info.eval_split
  from jaxconv.data.sources import _parse_split  # pylint: disable=g-import-not-at-top
  try:
    _parse_split(split, info)
  except ValueError as e:
    raise ValueError(f"--split: {e}") from None
  preprocess = preprocess or ("dataset" if config is not None else "timm")
  if preprocess not in ("timm", "dataset"):
    raise ValueError(f"--preprocess={preprocess!r} is not one of ['timm', 'dataset']")
  mean, std = _floats("mean", mean), _floats("std", std)
  settings = None
  if preprocess == "timm":
    settings = eval_preprocess.timm_eval_settings(
        model, image_size=image_size, crop_pct=crop_pct, interpolation=interpolation,
        mean=mean, std=std)
    image_size = None
  else:
    given = [f"--{k}" for k, v in (("crop_pct", crop_pct), ("interpolation", interpolation),
                                   ("mean", mean), ("std", std)) if v is not None]
    if given:
      raise ValueError(f"{', '.join(given)} apply to --preprocess=timm; --preprocess=dataset "
                       "uses the dataset's own normalization and crop")
    if image_size is None and config is not None:
      image_size = config.get("image_size")
    if image_size is not None and (isinstance(image_size, bool) or image_size < 1):
      raise ValueError(f"--image_size={image_size!r} must be a positive int")
  return _Plan(model, os.fspath(weights), config, dataset, data_dir, split, preprocess,
               settings, image_size, batch_size, bool(ema))


class _TimmPreprocessed:
  """A source whose images are timm-preprocessed float32 [S, S, 3]; its info normalizes with
  mean 0 / std 1, so the pipeline passes them through unchanged (x - 0) / 1."""

  def __init__(self, src, settings):
    from jaxconv import data  # pylint: disable=g-import-not-at-top
    self._src = src
    self._settings = settings
    s, base = settings.image_size, src.info
    self.info = data.DatasetInfo(
        name=base.name, num_classes=base.num_classes, image_shape=(s, s, 3),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), splits=base.splits,
        train_split=base.train_split, eval_split=base.eval_split, image_dtype="float32")

  def __len__(self):
    return len(self._src)

  def __getitem__(self, index):
    from jaxconv.data.eval_preprocess import timm_eval_transform  # pylint: disable=g-import-not-at-top
    example = self._src[index]
    return {"image": timm_eval_transform(example["image"], self._settings),
            "label": example["label"]}


def _load_model_and_variables(p: _Plan, num_classes: int):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxconv  # pylint: disable=g-import-not-at-top
  if p.workdir_config is None:
    from jaxconv.convert import from_timm, load_state_dict  # pylint: disable=g-import-not-at-top
    model = jaxconv.create_model(p.model, num_classes=num_classes)
    return model, from_timm(p.model, load_state_dict(p.weights), model=model), None
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxconv import data  # pylint: disable=g-import-not-at-top
  from jaxconv.train.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top
  from jaxconv.train.loop import build_model  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(p.workdir_config)
  # The run's own model (its dtype, overrides, QAT wrapper) with the run's dataset's classes.
  model = build_model(config, data.dataset_info(config.dataset, data_dir=p.data_dir))
  step, state = load_checkpoint(p.weights)
  weights = state
  if p.ema:
    if not state.get("ema"):
      raise ValueError(f"--ema: the checkpoint of {p.weights} has no EMA weights (train with "
                       "config.ema_decay set)")
    weights = state["ema"]
  variables = {"params": weights["params"], **weights.get("model_state", {})}
  return model, jax.tree.map(jnp.asarray, variables), step


def evaluate(p: _Plan, *, num_threads: int | None = None, log=print) -> dict:
  """Runs the evaluation planned by `plan(...)`; returns the JSON row."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxconv import data  # pylint: disable=g-import-not-at-top
  from jaxconv.layers.conv import cpu_compiler_options  # pylint: disable=g-import-not-at-top
  from jaxconv.train.steps import resize_images  # pylint: disable=g-import-not-at-top

  src = data.get_source(p.dataset, p.split, data_dir=p.data_dir)
  info = src.info
  model, variables, step = _load_model_and_variables(p, info.num_classes)
  if p.preprocess == "timm":
    src = _TimmPreprocessed(src, p.settings)
  k = min(5, info.num_classes)
  image_size = p.image_size

  @functools.partial(jax.jit, compiler_options=cpu_compiler_options())
  def counts(variables, images, labels, mask):
    logits = model.apply(variables, resize_images(images, image_size), train=False)
    if isinstance(logits, (tuple, list)):
      logits = logits[0]
    if logits.shape[-1] != info.num_classes:
      raise ValueError(f"the model gives {logits.shape[-1]} logits, the dataset has "
                       f"{info.num_classes} classes")
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    hit = top == labels[:, None]
    mask = mask.astype(jnp.float32)
    return (jnp.sum(hit[:, 0] * mask), jnp.sum(jnp.any(hit, axis=1) * mask), jnp.sum(mask))

  totals = np.zeros(3)
  start = time.perf_counter()
  for batch in data.eval_iterator(src, global_batch_size=p.batch_size, num_threads=num_threads):
    out = counts(variables, jnp.asarray(batch["image"]), jnp.asarray(batch["label"]),
                 jnp.asarray(batch["mask"]))
    totals += np.array([float(v) for v in out])
  elapsed = time.perf_counter() - start
  count = int(totals[2])
  row = {"model": p.model, "weights": p.weights, "dataset": p.dataset, "split": p.split,
         "count": count, "top1": float(totals[0]) / max(count, 1),
         f"top{k}": float(totals[1]) / max(count, 1),
         "preprocess": p.preprocess, "images_per_sec": count / elapsed if elapsed else None,
         "device": str(jax.devices()[0].device_kind), "batch_size": p.batch_size}
  if step is not None:
    row.update(step=step, ema=p.ema)
  if p.settings is not None:
    row.update(dataclasses.asdict(p.settings))
  elif p.image_size is not None:
    row["image_size"] = p.image_size
  return row


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.WARNING)   # orbax's per-read INFO lines
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  try:
    p = plan(model=_MODEL.value, weights=_WEIGHTS.value, dataset=_DATASET.value,
             data_dir=_DATA_DIR.value, split=_SPLIT.value, preprocess=_PREPROCESS.value,
             crop_pct=_CROP_PCT.value, interpolation=_INTERPOLATION.value,
             image_size=_IMAGE_SIZE.value, mean=_MEAN.value, std=_STD.value,
             batch_size=_BATCH_SIZE.value, ema=_EMA.value)
    row = evaluate(p, num_threads=_THREADS.value)
  except (ValueError, FileNotFoundError) as err:  # bad flags, unprepared data: the message
    print(f"evaluate: error: {err}", file=sys.stderr)
    return 1
  text = json.dumps(row, indent=2, sort_keys=True)
  print(text)
  if _OUTPUT.value:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(_OUTPUT.value).write_text(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
