"""Long-range sweep (issue 12): long convolutions vs attention vs TCN at growing sequence length.

The same tasks for every model: associative recall (safari's generator, vocabulary 20: the
test accuracy is the recall of the query's value) at L = 256 .. 8192 tokens, and the digits read
pixel by pixel (sMNIST-style, L = 64 and 1024). Models: TCN (Bai et al.), LongConv (Fu et al.
2023), SGConv (Li et al. 2022), Hyena (Poli et al. 2023), CKConv/CCNN (Romero et al.) when
registered, and a small causal transformer over `flash_attention` (seq_attention). Each is
fitted to the task by `seq_tasks.fit_model` (token vocabulary, per-position outputs, filter
length = L, causal). Rows record accuracy, parameters, FLOPs and train sequences/s, and the
report plots them against the length (`versus_length.png`, one line per model).

    python -m experiments.sweep --config experiments/configs/sweeps/long_range.py:runlocal \\
        --workdir runs/long_range_local --report

Default: the *_tiny models, associative recall at L = 256, 1024, 4096, 8192 and the two digit
lengths, 2000 steps of batch 32 each (an accelerator sweep: not measured). `:runlocal`: the
same models on associative recall with a vocabulary of 10 (4 keys, 4 values: chance 1/4) at
L = 64 and 256, 300 steps of batch 16. Expected time, measured on the shared 2-core CPU (jax 0.10.2, load
20-25 from other jobs): 12 runs, 38 min in all (40 s - 9 min per run, mostly compiles). Test
recall (256 queries; chance 0.25) at L = 64 / 256 after 300 steps, a smoke-scale comparison:

    seq_attention_tiny 0.54 / 0.49   hyena_lm_tiny 0.50 / 0.31   long_conv_tiny 0.44 / 0.33
    sgconv_tiny        0.41 / 0.32   ckconv_tiny   0.50 / 0.00   tcn_tiny       0.24 / 0.22

(tcn_tiny's receptive field is 15 steps; ckconv_tiny at 256 trains to 0.36 per-token accuracy
but scores 0 at test: see the issue-12 report). That run predates sequence inputs in
jaxconv.analysis, so its rows were marked failed after training; re-running the command (which
retries failed rows from their final checkpoints) now records their params and FLOPs too.
"""
from experiments.configs import seq_tasks
from jaxconv import data, registry
from jaxconv.train.sweep import chain

REPORT = {"versus": "label.length", "lines": "model", "metric": "best_eval_top1"}
ARGS = ("runlocal",)

# (model, tasks it runs): every model takes tokens and float sequences.
MODELS = ("tcn_tiny", "long_conv_tiny", "sgconv_tiny", "hyena_lm_tiny", "ckconv_tiny",
          "seq_attention_tiny")
LENGTHS = (256, 1024, 4096, 8192)
DIGITS = ("seq_digits", "seq_digits32")
LOCAL_LENGTHS = (64, 256)
LOCAL_VOCAB = 10  # 4 keys, 4 values: learnable in a few hundred CPU steps (chance 1/4)


def _models():
    # Models land from several helpers; the sweep runs those that are registered.
    return [m for m in MODELS if m in registry.list_models()]


def get_config(arg=None):
    if arg not in (None, *ARGS):
        raise ValueError(f"unknown sweep argument {arg!r}; valid: {ARGS}")
    c = seq_tasks.get_config("assoc_recall,runlocal" if arg else "assoc_recall")
    c.model = "tcn_tiny"
    c.model_overrides = type(c.model_overrides)()  # per-run overrides come from the grid
    c.batch_size = 16 if arg else 32
    c.num_train_steps = 300 if arg else 2000
    c.warmup_steps = 30 if arg else 100
    c.learning_rate = 2e-3
    c.weight_decay = 0.0
    c.log_every_steps = 50 if arg else 100
    c.eval_every_steps = 0 if arg else 500
    c.checkpoint_every_steps = c.num_train_steps
    c.eval_split = "test[:256]" if arg else None
    return c


def _point(model: str, dataset: str) -> dict:
    """One run: the model fitted to the dataset (its overrides become swept fields)."""
    config = get_config()
    config.model, config.dataset = model, dataset
    seq_tasks.fit_model(config)
    length = data.dataset_info(dataset).image_shape[0]
    return {"model": model, "dataset": dataset,
            **{f"model_overrides.{k}": v for k, v in config.model_overrides.items()},
            "label.length": length}


def get_sweep(arg=None):
    if arg:
        datasets = [f"assoc_recall_{n}_v{LOCAL_VOCAB}" for n in LOCAL_LENGTHS]
    else:
        datasets = [f"assoc_recall_{n}" for n in LENGTHS] + list(DIGITS)
    return chain([_point(m, d) for m in _models() for d in datasets])
