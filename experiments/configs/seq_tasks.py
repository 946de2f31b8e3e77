"""Sequence tasks (issue 12): sequential digits, associative recall, ListOps, adding, copy memory.

    python -m experiments.train --config experiments/configs/seq_tasks.py:TASK[,MODEL][,runlocal] \\
        --workdir runs/seq_TASK

TASK picks the dataset and recipe, MODEL (any registered sequence model) the network; the
model is fitted to the dataset by `fit_model` (token vocabulary, per-position outputs,
`max_len`, causal). Everything is generated or read offline (jaxconv/data/sequences.py).

| TASK | dataset | default model | recipe (after the model's paper) |
| --- | --- | --- | --- |
| smnist | seq_digits32 (L=1024, pixel by pixel) | tcn_smnist | Adam 2e-3, batch 64, 20 epochs, clip 1 (Bai et al.) |
| psmnist | perm_digits32 (fixed permutation) | tcn_smnist | as smnist |
| assoc_recall | assoc_recall_256 (vocab 20) | hyena_lm_tiny | AdamW 5e-4, wd 0.1, batch 32, 200 epochs (safari) |
| listops | listops (LRA, L 500..2000) | sgconv_listops | AdamW 1e-3, wd 0.05, batch 32, 40 epochs |
| adding | adding_600 | tcn_adding | Adam 2e-3, batch 32, MSE, 10 epochs (Bai et al.) |
| copy_memory | copy_memory_1000 (L=1020) | tcn_copy_memory | Adam 5e-4, batch 32, clip 1, 20 epochs |

Change the length with ``--config.dataset=assoc_recall_1024`` (then ``--config.model_overrides.
max_len`` must follow for models that have it: fit it with ``fit_model`` in your own config, as
experiments/configs/sweeps/long_range.py does).

Expected time: not measured at full size (on an accelerator, hours per task). ``:TASK,runlocal``
is a CPU smoke test: the short variant of each dataset (seq_digits L=64, assoc_recall_64,
listops_100, adding_50, copy_memory_20), the task's tiny model (tcn_tiny, hyena_lm_tiny,
sgconv_tiny), batch 32, 150 steps. Measured: `:assoc_recall,runlocal` 2.0 min on the shared
2-core CPU (load ~12; 1 min of it compiling), test recall 0.15 (vocabulary 20, chance 0.11: a
smoke test; see the long_range sweep for more steps on an easier vocabulary).
"""
from __future__ import annotations

import dataclasses

import jaxconv
from jaxconv import data
from jaxconv.train.config import default_config

# task -> (dataset, model, optimizer fields, epochs); runlocal -> (dataset, model)
TASKS = {
    "smnist": ("seq_digits32", "tcn_smnist",
               dict(optimizer="adamw", learning_rate=2e-3, weight_decay=0.0, batch_size=64,
                    grad_clip_norm=1.0), 20.0),
    "psmnist": ("perm_digits32", "tcn_smnist",
                dict(optimizer="adamw", learning_rate=2e-3, weight_decay=0.0, batch_size=64,
                     grad_clip_norm=1.0), 20.0),
    "assoc_recall": ("assoc_recall_256", "hyena_lm_tiny",
                     dict(optimizer="adamw", learning_rate=5e-4, weight_decay=0.1,
                          batch_size=32), 200.0),
    "listops": ("listops", "sgconv_listops",
                dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, batch_size=32),
                40.0),
    "adding": ("adding_600", "tcn_adding",
               dict(optimizer="adamw", learning_rate=2e-3, weight_decay=0.0, batch_size=32),
               10.0),
    "copy_memory": ("copy_memory_1000", "tcn_copy_memory",
                    dict(optimizer="adamw", learning_rate=5e-4, weight_decay=0.0,
                         batch_size=32, grad_clip_norm=1.0), 20.0),
}
RUNLOCAL = {
    "smnist": ("seq_digits", "tcn_tiny"), "psmnist": ("perm_digits", "tcn_tiny"),
    "assoc_recall": ("assoc_recall_64", "hyena_lm_tiny"), "listops": ("listops_100", "sgconv_tiny"),
    "adding": ("adding_50", "tcn_tiny"), "copy_memory": ("copy_memory_20", "tcn_tiny"),
}


def _fields(model: str) -> dict:
    module = jaxconv.create_model(model)
    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name")}


def fit_model(config, dataset: str | None = None) -> None:
    """Sets ``config.model_overrides`` so ``config.model`` fits the dataset: ``num_classes``,
    ``vocab_size`` for
    token inputs, ``pool="none"`` for per-position labels (and "last" for a per-position model
    on a pooled task), ``max_len`` (filter length) = L and ``causal=True`` where the model has
    them. Overrides already set are kept. Raises ValueError for a model that cannot take tokens.
    """
    info = data.dataset_info(dataset or config.dataset)
    fields = _fields(config.model)
    wanted = {"num_classes": info.num_classes}  # explicit: model checks may compare it
    if info.vocab_size:
        if "vocab_size" not in fields:
            raise ValueError(f"model {config.model!r} has no vocab_size field: it cannot take the "
                             f"token ids of {info.name}")
        wanted["vocab_size"] = info.vocab_size
    if "pool" in fields:
        if info.task == "per_position":
            wanted["pool"] = "none"
        elif fields["pool"] == "none":
            wanted["pool"] = "last"
    if "max_len" in fields:
        wanted["max_len"] = info.image_shape[0]
    if "causal" in fields and info.task == "per_position":
        wanted["causal"] = True  # next-token / recall labels: no peeking at later inputs
    with config.unlocked():
        for key, value in wanted.items():
            if key not in config.model_overrides:
                config.model_overrides[key] = value


def get_config(arg: str | None = None):
    task, *rest = (arg or "smnist").split(",")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {sorted(TASKS)} (then optional ,MODEL "
                         "and ,runlocal)")
    runlocal = "runlocal" in rest
    models = [r for r in rest if r != "runlocal"]
    if len(models) > 1:
        raise ValueError(f"config argument {arg!r}: TASK[,MODEL][,runlocal] takes one model")
    dataset, model, recipe, epochs = TASKS[task]
    if runlocal:
        dataset, model = RUNLOCAL[task]
    c = default_config()
    c.model = models[0] if models else model
    c.dataset = dataset
    for key, value in recipe.items():
        c[key] = value
    c.num_epochs = epochs
    c.schedule = "cosine"
    c.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    if runlocal:
        c.batch_size = 32
        c.num_train_steps = 150
        c.warmup_steps = 15
        c.eval_every_steps = 0
        c.checkpoint_every_steps = 150
        c.eval_split = "test[:256]"
    jaxconv.create_model(c.model)  # unknown model -> ValueError naming close matches
    fit_model(c)
    return c
