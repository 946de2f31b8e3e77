"""PyTorch / timm weights -> jaxconv variables, and the seeded-weights parity harness.

Use::

    from jaxconv.convert import from_timm, load_state_dict
    state_dict = load_state_dict("model.safetensors")      # or an .npz; {key: np.ndarray}
    variables = from_timm("resnet50", state_dict)           # {"params", "batch_stats"}
    logits = jaxconv.create_model("resnet50").apply(variables, x_nhwc)

``from_timm(name, state_dict, model=None)`` takes the model's abstract variables
(``jax.eval_shape`` of ``init``: nothing runs), names the timm key of every leaf, and copies the
arrays in with the layout changes PyTorch needs: conv ``OIHW -> HWIO`` (a grouped depthwise
``nn.Conv``: ``[C, 1, kh, kw] -> [kh, kw, 1, C]``; every :class:`jaxconv.layers.DepthwiseConv2D`,
found by module type while ``init`` is traced: ``[C, 1, kh, kw] -> [kh, kw, C]``), linear ``[out, in] -> [in, out]``, a linear weight that
feeds a conv kernel (or a 1x1 conv that feeds a linear) reshaped, BatchNorm
``weight/bias/running_mean/running_var -> scale/bias/mean/var`` (copied as is: eval mode
divides by ``sqrt(var + eps)`` in both; only their training updates differ, PyTorch averaging the
unbiased batch variance, Flax the biased one), ``num_batches_tracked`` ignored. A state_dict that does not match the
model exactly is refused with one ``ValueError`` listing every missing, unexpected and wrongly
shaped key (expected vs got, PyTorch layout). ``timm_key_map(name)`` shows the expected keys.
Models with a ``scan_blocks`` layout are converted through their unrolled twin and then stacked.

How to add a family
-------------------
1. Name the Flax modules after timm's: module ``a.b.3.c`` is Flax ``a/b_3/c`` (``nn.Sequential``
   indices become ``_<int>`` suffixes of the parent's name, attributes become nested modules),
   and use ``kernel``/``bias``/``scale`` and BatchNorm's ``mean``/``var`` leaves (``nn.Conv``,
   ``nn.Dense``, ``nn.BatchNorm`` do). Then the default rule needs no configuration.
2. Register the family (its registry ``family=`` name) in the table at the end of
   ``jaxconv/convert/timm.py``, where every family's rule lives (model files import nothing
   from this package, so a copied model file cannot change a rule); for a family outside
   jaxconv, call it from your own code::

       from jaxconv.convert.timm import TimmFamily, register_timm_family
       register_timm_family("mynet")                             # default rule
       register_timm_family("mynet2", TimmFamily(
           renames=((r"shortcut_conv$", "shortcut.0"),),         # Flax path regex -> timm name
           ignore=(r"\\.attn_mask$",)))                           # timm buffers to drop

   A family that already has a different rule is refused unless ``replace=True``.

   ``index_suffixes=False`` keeps names that end in numbers (Inception's ``branch3x3_1``);
   ``unrolled``/``to_model_layout`` handle a layout that differs from timm's (see ``"resnet"``
   at the end of ``timm.py``: ``scan_blocks=True`` models); for anything else subclass
   :class:`TimmFamily` and override ``module_key``.
3. Add the model to ``FIXTURES`` in ``tests/models/timm_fixtures/make_fixtures.py`` and run it in
   the timm venv (the command is in its docstring): it writes ``<name>.npz`` (a few KB: keys,
   shapes, seed, input seed, timm's logits). ``tests/convert/test_timm_parity.py`` picks up every
   ``.npz`` there, rebuilds the same weights with :mod:`jaxconv.convert.seeded` (NumPy only),
   converts them with ``from_timm`` and compares logits; nothing else to edit.
"""

from jaxconv.convert.io import load_state_dict
from jaxconv.convert.timm import TimmFamily, from_timm, register_timm_family, timm_key_map

__all__ = ["TimmFamily", "from_timm", "load_state_dict", "register_timm_family", "timm_key_map"]
