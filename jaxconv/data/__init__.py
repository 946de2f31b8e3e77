"""Datasets and input pipelines.

    from jaxconv import data
    info = data.dataset_info("cifar10")                 # registered: static, no I/O (a folder
                                                        # made by prepare_images: reads its JSON)
    src = data.get_source("cifar10", "train")            # src[i] -> {"image", "label"}
    it = data.train_iterator(src, global_batch_size=128, seed=0, start_step=step,
                             augment=data.AugmentConfig(crop_padding=4, flip=True))
    # ImageNet recipes (ConvNeXt): host-side RandAugment + random erasing, see data.autoaugment
    recipe = data.AugmentConfig(flip=True, randaugment="rand-m9-mstd0.5-inc1",
                                random_erasing=0.25)
    for batch in data.eval_iterator(data.get_source("cifar10", "test"), global_batch_size=500):
        ...  # batch["mask"] marks real rows

Offline datasets ("digits", "mnist1d") need no files and no network; tfds datasets are read from
prepared ArrayRecord files (see `sources.py`). grain and tensorflow_datasets are imported only when
a pipeline or a tfds dataset is used.
"""

from jaxconv.data.augment import AugmentConfig
from jaxconv.data.info import DatasetInfo, dataset_info, list_datasets
from jaxconv.data.pipeline import (EvalIterator, epoch_permutation, eval_iterator,
                                   steps_per_epoch, train_iterator)
from jaxconv.data.sources import (ArraySource, DatasetNotPreparedError, SubsetSource, TfdsSource,
                                  default_cache_dir, default_data_dir, get_source)

__all__ = [
    "AugmentConfig", "DatasetInfo", "dataset_info", "list_datasets", "get_source",
    "train_iterator", "eval_iterator", "EvalIterator", "steps_per_epoch", "epoch_permutation",
    "ArraySource", "SubsetSource", "TfdsSource", "DatasetNotPreparedError", "default_data_dir",
    "default_cache_dir",
]
