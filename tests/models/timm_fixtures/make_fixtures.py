"""Write timm parity fixtures: ``<name>.npz`` with timm's logits for seeded weights.

Runs in the timm venv (torch + timm, no JAX; recipe in /work/shared/ENVIRONMENT.md, "timm for
parity fixtures"), never in CI. From the repository root::

    /work/timm-venv/bin/python tests/models/timm_fixtures/make_fixtures.py all
    /work/timm-venv/bin/python tests/models/timm_fixtures/make_fixtures.py resnet18 vgg11_bn
    /work/timm-venv/bin/python tests/models/timm_fixtures/make_fixtures.py densenet121:64

Names come from :data:`FIXTURES` (``all``: every entry) or as ``NAME:SIZE`` for a model not in
the table. Per model: build ``timm.create_model(name)`` (default head), load the state_dict that
``jaxconv/convert/seeded.py`` (imported by file path: NumPy only) makes from its (key, shape) list
and :data:`SEED`, run eval mode on a seeded (2, 3, SIZE, SIZE) input and save, with
``seeded.write_fixture``: the (key, shape) list (num_batches_tracked too), the seeds, the input
shape, per-key sums of the seeded tensors (detect NumPy drift), timm's float32 logits, the
``slow`` flag (the parity test for it is marked slow) and the timm/torch/numpy versions.

A fixture is a few KB; ``tests/convert/test_timm_parity.py`` uses every ``.npz`` here.
About 1 min for ``all`` on a 2-core CPU (VGGs dominate: 140M seeded weights each).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np
import timm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SEED = 0
INPUT_SEED = 1
BATCH = 2

#: name -> (input side, slow). Sizes are small where the model allows it (parity does not
#: depend on resolution, and all weights are full size anyway). ``slow`` keeps the default test
#: run short (each VGG costs ~8 s for its 140M seeded weights): by default one model per
#: family and code path runs (resnet18 basic, resnet50 bottleneck, wide_resnet50_2,
#: vgg11_bn, mobilenetv1_100); ``pytest -m slow`` runs the rest. VGG sizes cover the three
#: paths of timm's pre_logits ConvMlp: final map < 7 (adaptive-average-pooled up to 7x7:
#: 32 -> 1x1, 64 -> 2x2, 96 -> 3x3), == 7 (224: the 7x7 conv sees exactly its window), and
#: > 7 (256 -> 8x8: the 7x7 conv gives 2x2, then global average pooling).
FIXTURES: dict[str, tuple[int, bool]] = {
    "resnet18": (64, False),
    "resnet34": (64, True),
    "resnet50": (64, False),
    "resnet101": (64, True),
    "resnet152": (64, True),
    "wide_resnet50_2": (64, False),
    "wide_resnet101_2": (64, True),
    "vgg11": (64, True),
    "vgg11_bn": (96, False),
    "vgg13": (32, True),
    "vgg13_bn": (224, True),
    "vgg16": (256, True),
    "vgg16_bn": (224, True),
    "vgg19": (64, True),
    "vgg19_bn": (256, True),
    "mobilenetv1_100": (64, False),
    # DenseNets: 72 gives a 9x9 map into the last transition (floor-mode 2x2 average pool).
    "densenet121": (64, False),
    "densenet169": (72, True),
    "densenet201": (64, True),
    # Inception v3 needs >= 75; 107 leaves 2x2 after Mixed_7c and odd sizes before it.
    "inception_v3": (107, False),
    # Modern ConvNets (issue 6). 64 leaves 2x2 maps in the last stage (stride 32).
    "convnext_tiny": (64, False),
    "convnext_small": (64, True),
    "convnext_base": (64, True),
    "inception_next_tiny": (64, False),
    "inception_next_small": (64, True),
    "inception_next_base": (64, True),
    # 72: the avg-pool shortcuts see odd maps (9x9 into layer3, 5x5 into layer4: ceil mode).
    "ecaresnet50d": (72, False),
    # CoAtNet (issue 7): the relative position tables cover the whole 14x14 / 7x7 maps of
    # timm's default 224 model, so its fixed input size 224 is the only one that fits them.
    "coatnet_0_rw_224": (224, False),
    "coatnet_0_224": (224, True),
}


def _load_seeded():
    path = os.path.join(ROOT, "jaxconv", "convert", "seeded.py")
    spec = importlib.util.spec_from_file_location("jaxconv_seeded", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_fixture(name: str, size: int, slow: bool, seeded) -> str:
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    floats = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    state = seeded.seeded_state_dict(entries, SEED)
    if set(state) != floats:
        raise SystemExit(f"{name}: seeded keys differ from the float tensors of the state_dict")
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise SystemExit(f"{name}: load_state_dict: missing {missing}, unexpected {unexpected}")
    input_shape = (BATCH, 3, size, size)
    x = torch.from_numpy(seeded.seeded_input(input_shape, INPUT_SEED))
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float32)
    out = os.path.join(HERE, f"{name}.npz")
    seeded.write_fixture(
        out, entries=entries, state_dict=state, seed=SEED, input_seed=INPUT_SEED,
        input_shape=input_shape, logits=logits, slow=slow,
        versions=f"timm={timm.__version__}, torch={torch.__version__}, numpy={np.__version__}",
    )
    return out


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    requests = []
    for arg in argv:
        if arg == "all":
            requests += [(n, s, slow) for n, (s, slow) in FIXTURES.items()]
        elif ":" in arg:
            name, size = arg.split(":")
            requests.append((name, int(size), FIXTURES.get(name, (0, False))[1]))
        elif arg in FIXTURES:
            requests.append((arg, *FIXTURES[arg]))
        else:
            raise SystemExit(f"{arg!r} is not in FIXTURES {sorted(FIXTURES)}; pass NAME:SIZE")
    torch.set_num_threads(2)
    seeded = _load_seeded()
    for name, size, slow in requests:
        start = time.perf_counter()
        out = make_fixture(name, size, slow, seeded)
        print(f"{name}: {size}x{size} -> {os.path.relpath(out, ROOT)} "
              f"({os.path.getsize(out) / 1024:.1f} KB, {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
