"""Writes timm_recipe.npz: timm's own numbers for the recipe tests (test_recipe_step.py).

Run in the torch + timm venv (the project never imports torch):

    /work/torchvenv/bin/python tests/train/recipe_fixtures/make_fixtures.py

Contents: ModelEmaV3.get_decay(step) with and without warm-up; CutMix boxes and corrected
lambdas of timm.data.mixup.cutmix_bbox_and_lam with the box centres it drew; mixup_target; timm's
BinaryCrossEntropy (with and without target_thresh) and SoftTargetCrossEntropy on soft targets;
torch's KL divergence of temperature-scaled logits (batchmean) for the distillation loss.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import mixup
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.utils.model_ema import ModelEmaV3

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_recipe.npz")


def main():
    out = {}
    steps = np.array(list(range(0, 40)) + [100, 1000, 10**4, 10**5, 10**6, 10**7])
    out["ema_steps"] = steps
    model = torch.nn.Linear(2, 2)
    for decay in (0.9999, 0.99):
        for warmup in (False, True):
            ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
            out[f"ema_decay_{decay}_{int(warmup)}"] = np.array(
                [ema.get_decay(int(s)) for s in steps], np.float64)

    # CutMix boxes: timm draws cy, then cx, with np.random.randint; replay the same seed to
    # record the centres it used.
    rows = []
    for seed, (lam, h, w) in enumerate([(0.3, 32, 32), (0.7, 32, 32), (0.05, 8, 8),
                                        (0.5, 7, 13), (0.99, 224, 224), (0.0, 16, 16),
                                        (0.42, 5, 9), (0.9, 8, 8)] * 4):
        np.random.seed(seed)
        cy, cx = np.random.randint(0, h), np.random.randint(0, w)
        np.random.seed(seed)
        (yl, yh, xl, xh), lam_c = mixup.cutmix_bbox_and_lam((1, 3, h, w), lam)
        rows.append([lam, h, w, cy, cx, yl, yh, xl, xh, lam_c])
    out["cutmix"] = np.array(rows, np.float64)

    labels = torch.tensor([0, 3, 1, 4, 4, 2])
    lam = torch.tensor([0.3, 0.9, 1.0, 0.5, 0.2, 0.75]).unsqueeze(1)
    out["mix_labels"] = labels.numpy()
    out["mix_lam"] = lam.numpy()[:, 0]
    out["mix_target_smooth0.1"] = mixup.mixup_target(labels, 5, lam, smoothing=0.1).numpy()
    out["mix_target_smooth0"] = mixup.mixup_target(labels, 5, 0.35, smoothing=0.0).numpy()

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g) * 2
    teacher = torch.randn(6, 5, generator=g) * 2
    targets = out["mix_target_smooth0.1"]
    out["logits"], out["teacher_logits"] = logits.numpy(), teacher.numpy()
    t = torch.from_numpy(targets)
    out["bce"] = BinaryCrossEntropy(smoothing=0.0)(logits, t).numpy()
    out["bce_thresh0.2"] = BinaryCrossEntropy(smoothing=0.0, target_threshold=0.2)(
        logits, t).numpy()
    out["soft_ce"] = SoftTargetCrossEntropy()(logits, t).numpy()
    for temp in (1.0, 4.0):
        kl = F.kl_div(F.log_softmax(logits / temp, -1), F.log_softmax(teacher / temp, -1),
                      reduction="batchmean", log_target=True)
        out[f"kl_T{temp}"] = kl.numpy()
    np.savez(OUT, **out)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
