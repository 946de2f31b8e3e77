"""Shared fixtures."""

from __future__ import annotations

import pytest

# A real model on real data, as small as it gets: two residual layers of 4 channels, 12 steps.
TINY_SWEEP = '''
from jaxconv.train.config import default_config
from jaxconv.train.sweep import axis, product

REPORT = {{"compare": "model_overrides.layout"}}

def get_config(arg=None):
    c = default_config()
    c.model = "residual_stack"
    c.model_overrides.features = 4
    c.model_overrides.num_layers = 2
    c.dataset = "digits"
    c.data_dir = {data_dir!r}
    c.batch_size = 32
    c.num_train_steps = {steps}
    c.num_data_threads = 1
    c.log_every_steps = 2
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 3
    return c

def get_sweep(arg=None):
    return product(axis("dataset", {datasets!r}),
                   axis("model_overrides.layout", ["sequential", "parallel"]))
'''


def _write_sweep(tmp_path, datasets=("digits",), steps=12) -> str:
    path = tmp_path / "tiny_sweep.py"
    path.write_text(TINY_SWEEP.format(data_dir=str(tmp_path / "no_tfds"), steps=steps,
                                      datasets=list(datasets)))
    return str(path)


@pytest.fixture(scope="session")
def write_sweep():
    """``write_sweep(dir, datasets=("digits",), steps=12) -> path`` of a tiny sweep file: the
    residual_stack model (2 layers of 4 channels) in both layouts on each dataset."""
    return _write_sweep


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local GCS server (tests/gcs.py) for the whole session, with the clients' environment
    (STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL, ...) set in os.environ, so subprocesses
    reach it too; ``.bucket`` is "gs://jaxconv-test"."""
    from tests import gcs
    server = gcs.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_bucket(gcs_emulator) -> str:
    """``"gs://jaxconv-test"`` on the local emulator, shared by every test of the session."""
    return gcs_emulator.bucket


@pytest.fixture
def gcs_path(gcs_bucket, request) -> str:
    """A fresh prefix ``gs://jaxconv-test/<test name>-<hex>`` (nothing under it yet)."""
    import re
    import uuid
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return f"{gcs_bucket}/{name}-{uuid.uuid4().hex[:8]}"
