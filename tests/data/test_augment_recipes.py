"""Recipe augmentations (jaxconv.data.autoaugment): parity with timm/torchvision fixtures, policy
parsing, random erasing statistics, determinism, repeated augmentation, bad values.

The fixtures come from tests/data/augment_fixtures/make_fixtures.py (run with the torch+timm
venv); see its docstring.
"""

import itertools
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from jaxconv import data
from jaxconv.data import augment as aug_lib
from jaxconv.data import autoaugment as aa
from jaxconv.data import pipeline

FIXTURES = os.path.join(os.path.dirname(__file__), "augment_fixtures")
RGB_FILL, L_FILL, TRANSLATE_CONST = (124, 116, 104), 128, 8  # as make_fixtures.py


@pytest.fixture(scope="module")
def images():
  with np.load(os.path.join(FIXTURES, "images.npz")) as f:
    return {k: f[k] for k in f.files}


def _load(name):
  with np.load(os.path.join(FIXTURES, name)) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def policies():
  with open(os.path.join(FIXTURES, "policies.json")) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# per-op parity


def test_timm_ops_equal_fixtures(images):
  expected = _load("timm_ops.npz")
  assert len(expected) > 200
  names = set()
  for key, want in expected.items():
    image, name, m, negate = key.split("|")
    names.add(name)
    img = Image.fromarray(images[image])
    got = aa.apply_named_op(
        img, name, float(m), negate=negate == "1",
        resample=Image.BILINEAR if image == "rgb" else Image.BICUBIC,
        fill=RGB_FILL if image == "rgb" else L_FILL, translate_const=TRANSLATE_CONST)
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
  assert names == set(aa.OP_NAMES)  # every op of the set, incl. the "Increasing" variants


def test_posterize_zero_bits_is_black(images):
  # Pillow >= 12 refuses bits=0, which timm's Posterize reaches at m < 2.5: keep 0 of 8 bits.
  img = Image.fromarray(images["rgb"])
  for name, m in [("Posterize", 2), ("PosterizeIncreasing", 10)]:
    assert not np.asarray(aa.apply_named_op(img, name, m)).any()


def test_trivialaugment_ops_equal_torchvision(images):
  expected = _load("tv_ops.npz")
  for name in aa.TRIVIAL_AUGMENT_OPS:
    bins = aa.trivial_magnitudes(name)
    if bins is not None:  # the magnitude tables, bit for bit
      np.testing.assert_array_equal(bins, expected[f"table|{name}"], err_msg=name)
  count = 0
  for key, want in expected.items():
    image, name, b, sign = key.split("|") + [None] * (4 - len(key.split("|")))
    if image == "table" or name == "jitter":
      continue
    bins = aa.trivial_magnitudes(name)
    m = 0.0 if bins is None else float(bins[int(b)]) * int(sign)
    channels = 1 if image == "gray" else 3
    got = aa.apply_trivial_op(Image.fromarray(images[image]), name, m,
                              fill=0 if channels == 1 else (0, 0, 0))
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
    count += 1
  assert count > 100


def test_color_jitter_ops_equal_torchvision(images):
  expected = _load("tv_ops.npz")

  class Fixed:  # draws: order contrast, brightness, saturation; factors 0.7, 1.3, 1.25
    def permutation(self, n):
      return np.array([1, 0, 2])

    def uniform(self, lo, hi, n):
      return np.array([0.7, 1.3, 1.25])

  for image in ("rgb", "gray"):
    got = aa.ColorJitter(0.4)(Image.fromarray(images[image]), Fixed())
    np.testing.assert_array_equal(np.asarray(got), expected[f"{image}|jitter"])


# ---------------------------------------------------------------------------------------------
# policies


def test_randaugment_parsing_equals_timm(policies):
  for policy, want in policies["randaugment"].items():
    ra = aa.RandAugment(policy)
    assert ra.num_layers == want["num_layers"], policy
    assert len(ra.ops) == len(want["ops"])
    for op, w in zip(ra.ops, want["ops"]):
      assert (op.name, op.prob, op.magnitude) == (w["name"], w["prob"], w["magnitude"]), policy
      assert op.magnitude_std == float(w["magnitude_std"])
      # timm clips at `magnitude_max or 10`
      assert op.magnitude_max == (w["magnitude_max"] or aa.LEVEL_DENOM)


def test_autoaugment_tables_equal_timm(policies):
  for policy, want in policies["autoaugment"].items():
    got = aa.autoaugment_policy(policy)
    assert [[(o.name, o.prob, o.magnitude, o.magnitude_std) for o in sub] for sub in got] == \
        [[(o["name"], o["prob"], o["magnitude"], float(o["magnitude_std"])) for o in sub]
         for sub in want], policy


def test_magnitude_noise_and_clipping():
  img = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
  seen = []
  original = aa.apply_named_op
  try:
    aa.apply_named_op = lambda img, name, m, **kw: seen.append(m) or img
    op = aa.AugOp("Rotate", prob=1.0, magnitude=9.0, magnitude_std=0.5)
    rng = np.random.default_rng(0)
    for _ in range(3000):
      op(img, rng, 0, 10)
    uniform = aa.AugOp("Rotate", 1.0, 9.0, math.inf)
    for _ in range(3000):
      uniform(img, rng, 0, 10)
  finally:
    aa.apply_named_op = original
  noisy, flat = np.array(seen[:3000]), np.array(seen[3000:])
  assert noisy.max() == 10.0 and noisy.min() >= 0          # clipped at mmax = 10
  assert abs(np.median(noisy) - 9.0) < 0.05                # Normal(9, 0.5), median unaffected
  assert abs(np.std(noisy[noisy < 10]) - 0.5) < 0.1 and 0 <= flat.min() and flat.max() <= 9
  assert abs(flat.mean() - 4.5) < 0.2                       # Uniform(0, 9)


def test_randaugment_choice_and_probability():
  ra = aa.RandAugment("rand-m5-n3-p0.8-inc1")
  calls = []

  class Spy:
    def __init__(self, k):
      self.k = k

    def __call__(self, img, rng, fill, tc):
      calls.append(self.k)
      return img

  ra.ops = tuple(Spy(k) for k in range(len(ra.ops)))
  rng = np.random.default_rng(1)
  for _ in range(2000):
    ra(None, rng, 0, 10)
  counts = np.bincount(calls, minlength=15)
  assert len(calls) == 6000 and counts.min() > 300  # 3 per image, uniform over 15 ops
  # probability p: with p=0.8 an op runs on ~80% of its draws
  op = aa.AugOp("Invert", prob=0.8, magnitude=5)
  img = Image.fromarray(np.full((2, 2), 10, np.uint8))
  changed = [np.asarray(op(img, rng, 0, 1))[0, 0] == 245 for _ in range(4000)]
  assert abs(np.mean(changed) - 0.8) < 0.03


def test_autoaugment_picks_subpolicies_uniformly_and_applies_both_in_order(monkeypatch):
  calls = []
  monkeypatch.setattr(aa, "apply_named_op",
                      lambda img, name, m, **kw: calls.append((name, m)) or img)
  policy = aa.AutoAugment("v0")
  policy.policy = tuple(tuple(aa.AugOp(o.name, 1.0, o.magnitude) for o in sub)
                        for sub in policy.policy)  # p = 1: every op runs
  rng = np.random.default_rng(4)
  for _ in range(2500):
    policy(None, rng, 0, 10)
  pairs = list(zip(calls[::2], calls[1::2]))
  table = {tuple((o.name, o.magnitude) for o in sub) for sub in policy.policy}
  assert set(pairs) == table  # each image: one whole sub-policy, its two ops in order
  counts = np.unique(pairs, axis=0, return_counts=True)[1]
  assert counts.min() > 50  # 25 sub-policies, ~100 each


def test_trivialaugment_draws(monkeypatch):
  calls = []
  monkeypatch.setattr(aa, "apply_trivial_op",
                      lambda img, name, m, **kw: calls.append((name, m)) or img)
  ta = aa.TrivialAugment()
  rng = np.random.default_rng(5)
  img = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
  for _ in range(7000):
    ta(img, rng)
  names = [n for n, _ in calls]
  assert set(names) == set(aa.TRIVIAL_AUGMENT_OPS)
  assert min(names.count(n) for n in aa.TRIVIAL_AUGMENT_OPS) > 400  # uniform: ~500 each
  rot = np.array([m for n, m in calls if n == "Rotate"])
  bins = aa.trivial_magnitudes("Rotate")
  assert set(np.abs(rot)) <= set(bins.tolist()) and len(set(np.abs(rot))) > 25
  assert 0.4 < np.mean(rot < 0) < 0.6  # random sign
  assert all(m >= 0 for n, m in calls if n in ("Posterize", "Solarize"))


def test_color_jitter_factor_range_and_order(monkeypatch):
  seen = []

  class Spy:
    def __init__(self, kind):
      self.kind = kind

    def __call__(self, img):
      outer = self

      class E:
        def enhance(self, factor):
          seen.append((outer.kind, factor))
          return img
      return E()

  jitter = aa.ColorJitter(0.4)
  jitter.enhancers = (Spy("b"), Spy("c"), Spy("s"))
  rng = np.random.default_rng(6)
  for _ in range(600):
    jitter(None, rng)
  factors = np.array([f for _, f in seen])
  assert factors.min() >= 0.6 and factors.max() <= 1.4 and abs(factors.mean() - 1) < 0.02
  orders = {tuple(k for k, _ in seen[i:i + 3]) for i in range(0, len(seen), 3)}
  assert len(orders) == 6  # all permutations of brightness/contrast/saturation


# ---------------------------------------------------------------------------------------------
# random erasing


@pytest.mark.parametrize("mode", aa.ERASING_MODES)
def test_random_erasing_geometry_and_modes(mode):
  h, w, c = 40, 50, 3
  erase = aa.RandomErasing(0.6, mode)
  rng = np.random.default_rng(2)
  applied, areas, aspects, values = 0, [], [], []
  for _ in range(1500):
    plan = erase.plan(rng, h, w, c)
    assert len(plan) <= 1
    if plan:
      applied += 1
      top, left, eh, ew, fill = plan[0]
      assert 0 <= top and top + eh <= h and 0 <= left and left + ew <= w and eh < h and ew < w
      areas.append(eh * ew / (h * w))
      aspects.append(eh / ew)
      x = np.full((h, w, c), 7.0, np.float32)
      aa.RandomErasing.apply(x, plan)
      box = x[top:top + eh, left:left + ew]
      assert (np.delete(x.reshape(-1, c), np.ravel_multi_index(np.mgrid[top:top + eh,
              left:left + ew].reshape(2, -1), (h, w)), axis=0) == 7.0).all()
      values.append(box.reshape(-1, c))
  assert abs(applied / 1500 - 0.6) < 0.04
  areas = np.array(areas)
  # rounding the sides moves the area a little outside [0.02, 1/3]
  assert areas.min() > 0.015 and areas.max() < 0.36 and abs(areas.mean() - (0.02 + 1 / 3) / 2) < 0.02
  assert min(aspects) > 0.25 and max(aspects) < 4.0  # log-uniform in [0.3, 3.33] (rounded)
  assert abs(np.mean(np.log(aspects))) < 0.1           # symmetric in log space
  if mode == "const":
    assert all((v == 0).all() for v in values)
  elif mode == "rand":  # one value per channel per box, standard normal across boxes
    firsts = np.array([v[0] for v in values])
    assert all((v == v[0]).all() for v in values)
    assert abs(firsts.std() - 1) < 0.1 and abs(firsts.mean()) < 0.1
  else:  # per-pixel standard normal
    flat = np.concatenate(values)
    assert abs(flat.std() - 1) < 0.02 and abs(flat.mean()) < 0.02
    assert all(len(np.unique(v)) > v.size // 2 for v in values if v.size > 20)


def test_random_erasing_count():
  erase = aa.RandomErasing(1.0, "const", count=3)
  rng = np.random.default_rng(3)
  counts = [len(erase.plan(rng, 64, 64, 1)) for _ in range(900)]
  assert set(counts) == {1, 2, 3} and all(c > 200 for c in np.bincount(counts)[1:])


# ---------------------------------------------------------------------------------------------
# pipeline: determinism, order, separate streams, repeats


def _uint8_source(n=8, shape=(20, 24, 3)):
  rng = np.random.default_rng(5)
  images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
  c = shape[2]
  info = data.DatasetInfo("tiny8", n, shape, mean=(120.0,) * c, std=(60.0,) * c)
  return data.ArraySource(images, np.arange(n), info)


RECIPES = [
    data.AugmentConfig(crop_padding=2, flip=True, randaugment="rand-m9-mstd0.5-inc1",
                       random_erasing=0.5, cutout=4),
    data.AugmentConfig(flip=True, autoaugment="original", random_erasing=0.5,
                       erasing_mode="rand", erasing_count=2),
    data.AugmentConfig(crop_padding=1, trivialaugment=True),
    data.AugmentConfig(flip=True, color_jitter=0.4, random_erasing=1.0, erasing_mode="const"),
]


@pytest.mark.parametrize("augment", RECIPES)
@pytest.mark.parametrize("shape", [(20, 24, 3), (12, 10, 1)])
def test_recipe_batches_equal_per_element_reference(augment, shape):
  src = _uint8_source(shape=shape)
  take = lambda it: list(itertools.islice(it, 3))
  batches = take(data.train_iterator(src, global_batch_size=4, seed=11, augment=augment,
                                     num_threads=2))
  transform = aug_lib.make_transform(src.info, augment, train=True)
  for step, batch in enumerate(batches):
    for row in range(4):
      position = step * 4 + row
      index = pipeline.example_index(11, position, len(src))
      assert batch["label"][row] == index
      expected = transform(src[index]["image"], pipeline._element_rng(11, position),
                           pipeline._aux_rng(11, position))
      np.testing.assert_array_equal(batch["image"][row], expected)
  # deterministic given (seed, step): a resumed iterator gives the same batches
  resumed = take(data.train_iterator(src, global_batch_size=4, seed=11, augment=augment,
                                     start_step=1, num_threads=0))
  for a, b in zip(batches[1:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  other = take(data.train_iterator(src, global_batch_size=4, seed=12, augment=augment))
  assert not np.array_equal(other[0]["image"], batches[0]["image"])


def test_recipe_ops_do_not_change_existing_draws():
  """The crop/flip draws are the same with and without the recipe ops (separate stream)."""
  src = _uint8_source()
  base = data.AugmentConfig(crop_padding=3, flip=True, cutout=5)
  with_erasing = data.AugmentConfig(crop_padding=3, flip=True, cutout=5, random_erasing=1.0,
                                    erasing_mode="const")
  a = next(data.train_iterator(src, global_batch_size=8, seed=0, augment=base))["image"]
  b = next(data.train_iterator(src, global_batch_size=8, seed=0, augment=with_erasing))["image"]
  differs = (a != b).any(-1)
  assert differs.any()
  assert (b[differs] == 0).all()  # only the erased (const 0) pixels differ
  # the policy sees exactly the crop+flip of the base pipeline: an op that changes nothing
  # (RandAugment with p=0) leaves the batch bitwise equal
  noop = data.AugmentConfig(crop_padding=3, flip=True, cutout=5, randaugment="rand-p0")
  c = next(data.train_iterator(src, global_batch_size=8, seed=0, augment=noop))["image"]
  np.testing.assert_array_equal(a, c)


def test_aug_repeats_positions_and_resume():
  n, r, batch = 10, 3, 6
  src = _uint8_source(n, (8, 8, 3))
  augment = data.AugmentConfig(flip=True, randaugment="rand-m9-mstd0.5-inc1", aug_repeats=r)
  batches = list(itertools.islice(
      data.train_iterator(src, global_batch_size=batch, seed=4, augment=augment), 5))
  labels = np.concatenate([b["label"] for b in batches])
  images = np.concatenate([b["image"] for b in batches])
  for epoch in range(3):
    epoch_labels = labels[epoch * n:(epoch + 1) * n]
    perm = data.epoch_permutation(4, epoch, n)
    # each example r times in a row; the epoch still has n positions, ceil(n / r) examples
    np.testing.assert_array_equal(epoch_labels, np.repeat(perm[:-(-n // r)], r)[:n])
  # the copies are different views
  assert not np.array_equal(images[0], images[1]) or not np.array_equal(images[1], images[2])
  resumed = list(itertools.islice(
      data.train_iterator(src, global_batch_size=batch, seed=4, augment=augment,
                          start_step=3), 2))
  for a, b in zip(batches[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # two processes see the halves of the one-process batch
  halves = [next(data.train_iterator(src, global_batch_size=batch, seed=4, augment=augment,
                                     process_index=p, process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), batches[0]["image"])


def test_variable_size_images_with_recipe():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for h, w in [(40, 30), (20, 50), (64, 64), (33, 31)]]
  info = data.DatasetInfo("var", 4, (16, 16, 3), mean=(120.0,) * 3, std=(60.0,) * 3,
                          variable_size=True)
  src = data.ArraySource(images, np.arange(4), info)
  augment = data.AugmentConfig(flip=True, randaugment="rand-m9-mstd0.5-inc1",
                               random_erasing=0.25)
  a = next(data.train_iterator(src, global_batch_size=4, seed=0, augment=augment))
  b = next(data.train_iterator(src, global_batch_size=4, seed=0, augment=augment, num_threads=0))
  assert a["image"].shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(a["image"], b["image"])


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("kwargs,needle", [
    (dict(randaugment="rand-m9-x3"), "'x3'"),
    (dict(randaugment="rand-m9-n0"), "'n0'"),
    (dict(randaugment="rand-mfoo"), "'mfoo'"),
    (dict(randaugment="rnd-m9"), "'rnd'"),
    (dict(randaugment="rand-m9-inc2"), "'inc2'"),
    (dict(randaugment="rand-m9-p1.5"), "'p1.5'"),
    (dict(randaugment="rand-m9-m8"), "'m8'"),
    (dict(autoaugment="imagenet"), "'imagenet'"),
    (dict(autoaugment="v0-foo"), "'foo'"),
    (dict(randaugment="rand-m9", autoaugment="v0"), "mutually exclusive"),
    (dict(autoaugment="v0", trivialaugment=True), "mutually exclusive"),
    (dict(trivialaugment=1), "trivialaugment"),
    (dict(color_jitter=-0.1), "color_jitter"),
    (dict(random_erasing=1.5), "random_erasing"),
    (dict(random_erasing=True), "random_erasing"),
    (dict(erasing_mode="zero"), "'const', 'rand', 'pixel'"),
    (dict(erasing_count=0), "erasing_count"),
    (dict(mixup_alpha=-1.0), "mixup_alpha"),
    (dict(cutmix_alpha=float("nan")), "cutmix_alpha"),
    (dict(mix_prob=2.0), "mix_prob"),
    (dict(mix_switch_prob=-0.5), "mix_switch_prob"),
    (dict(mix_mode="row"), "'batch', 'pair', 'elem'"),
    (dict(aug_repeats=0), "aug_repeats"),
    (dict(aug_repeats=2.0), "aug_repeats"),
])
def test_bad_values(kwargs, needle):
  with pytest.raises(ValueError, match="config.augment") as e:
    data.AugmentConfig(**kwargs)
  assert needle in str(e.value)
  if "randaugment" in kwargs and len(kwargs) == 1:
    assert "config.augment.randaugment" in str(e.value) and "rand-mM-nN" in str(e.value)


def test_enabled_and_host_op_choice():
  assert not data.AugmentConfig().enabled
  assert data.AugmentConfig(randaugment="", autoaugment="None") == data.AugmentConfig()
  for kw in [dict(mixup_alpha=0.8), dict(cutmix_alpha=1.0), dict(aug_repeats=2),
             dict(random_erasing=0.1), dict(color_jitter=0.4), dict(trivialaugment=True)]:
    assert data.AugmentConfig(**kw).enabled, kw
  info = data.dataset_info("digits")
  t = aug_lib.make_transform(info, data.AugmentConfig(randaugment="rand-m9", color_jitter=0.4),
                             train=True)
  assert isinstance(t.host_op, aa.RandAugment)  # color jitter ignored under a policy (timm)
  t = aug_lib.make_transform(info, data.AugmentConfig(color_jitter=0.4), train=True)
  assert isinstance(t.host_op, aa.ColorJitter)
  float_info = data.DatasetInfo("f", 2, (4, 4, 3), mean=(0.0,) * 3, std=(1.0,) * 3,
                                image_dtype="float32")
  with pytest.raises(ValueError, match="uint8"):
    aug_lib.make_transform(float_info, data.AugmentConfig(trivialaugment=True), train=True)


def test_bench_recipe_suite_runs(capsys):
  from jaxconv.data import bench
  rows, theirs = bench.recipe_suite(type("Args", (), dict(recipe_images=32, jpeg_count=2,
                                                           torch_python=None, repeats=1))())
  assert [label for label, _ in rows] == ["decode", "decode+rrc+flip+normalize", "full"]
  assert theirs is None and all(rate > 0 for _, rate in rows)
  assert "(32, 224, 224, 3)" in capsys.readouterr().out


def test_the_training_config_lists_exactly_the_augment_config_fields():
  # config.py is loaded by path for --help and cannot import the dataclass: keep them in step.
  import dataclasses
  from jaxconv.train.config import default_config
  assert set(default_config().augment.keys()) == {
      f.name for f in dataclasses.fields(data.AugmentConfig)}
