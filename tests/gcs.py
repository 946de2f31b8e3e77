"""A local Google Cloud Storage server for tests: no network, no credentials.

`gcp-storage-emulator` (pure Python, in the ``test`` extra) serves the GCS JSON API from memory in
a subprocess on 127.0.0.1 (a subprocess, so a training subprocess can be SIGKILLed while the
server lives on, and the pytest process's GIL never stalls it). Two things real GCS does and the
emulator (2026.7.19) does not are added by :func:`_conform` (this file is the server's main):
generation preconditions (``ifGenerationMatch`` / ``ifGenerationNotMatch`` -> 412 / 304) and the
``x-goog-generation`` header on media reads. tensorstore's OCDBT (orbax's array format) updates its
manifest by a read + a conditional write on that generation; without them a save failed now and
then with "Error writing .../manifest.ocdbt: Malformed StorageGeneration".
:func:`start` points every client at the server through the environment of this process, which
subprocesses inherit:

=================================== ===========================================================
``STORAGE_EMULATOR_HOST``           gcsfs (so ``etils.epath``) and google-cloud-storage
``TENSORSTORE_GCS_HTTP_URL``        tensorstore (so orbax's array data)
``EPATH_USE_TF=false``              epath uses gcsfs even where TensorFlow is installed
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``  ``false``: gcsfs otherwise asks the storage-control gRPC API
                                    (which the emulator lacks, with Google credentials it cannot
                                    find) for the bucket type before operations, and warns
``FSSPEC_GCS_TOKEN=anon``           gcsfs does not look for credentials
=================================== ===========================================================

Usage (fixtures in tests/conftest.py)::

    def test_something(gcs_path):          # a fresh, empty "gs://jaxconv-test/<test>-<hex>"
        epath.Path(gcs_path, "x.txt").write_text("hi")
        subprocess.run([sys.executable, "-m", "experiments.train", "--workdir", gcs_path, ...])

    def test_other(gcs_bucket):            # "gs://jaxconv-test", shared by the whole session:
        ...                                # use a prefix of your own under it

The server lives for the whole pytest session (started by the first test that asks for it) and
its environment stays set until the session ends. Outside pytest: ``with gcs.emulator() as
bucket: ...``. The server's own log (request errors included) is in ``<tmp>/gcs_emulator.log``.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BUCKET = "jaxconv-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(url: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "FSSPEC_GCS_TOKEN": "anon",
            # array_record reads gs:// with its own GCS client, which ignores
            # STORAGE_EMULATOR_HOST and hangs looking for credentials without this.
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": url}


class Emulator:
    """A running emulator: ``url``, ``bucket`` ("gs://NAME"), ``env`` (what :func:`start` set),
    ``stop()`` (ends the server and restores the environment)."""

    def __init__(self, process, url, bucket, env, saved, log_path):
        self.process, self.url, self.bucket, self.env = process, url, bucket, env
        self._saved, self.log_path = saved, log_path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start(bucket: str = BUCKET, *, timeout: float = 60.0) -> Emulator:
    """Starts the emulator (in-memory, with ``bucket`` created) on a free port of 127.0.0.1 and
    sets the clients' environment in ``os.environ``; returns the :class:`Emulator`."""
    import importlib.util
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        raise RuntimeError("the gs:// tests need gcp-storage-emulator (in the test extra): "
                           "pip install -c constraints.txt -e '.[test]'")
    log_path = os.path.join(tempfile.gettempdir(), "gcs_emulator.log")
    for _ in range(3):  # a port taken between choosing it and binding it: try another
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(port), bucket],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            try:  # "/" is the emulator's health check
                with urllib.request.urlopen(url + "/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            process.kill()
            process.wait()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the GCS emulator did not answer on {url} within {timeout:.0f} s;"
                                   f" its log: {log_path}")
            continue  # exited: most likely the port was taken
        env = _env(url)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        return Emulator(process, url, f"gs://{bucket}", env, saved, log_path)
    raise RuntimeError(f"the GCS emulator failed to start three times; its log: {log_path}")


@contextlib.contextmanager
def emulator(bucket: str = BUCKET):
    """``with emulator() as "gs://BUCKET": ...``: a server for the block's duration."""
    server = start(bucket)
    try:
        yield server.bucket
    finally:
        server.stop()


# ---------------------------------------------------------------------------- the server process


def _conform(server, objects, exceptions) -> None:
    """Adds generation preconditions and the x-goog-generation header to the emulator's object
    routes (uploads, reads, deletes, compose), as the real GCS JSON API has them."""

    def generation(storage, bucket, name) -> int:
        try:
            return int(storage.get_file_obj(bucket, name)["generation"])
        except exceptions.NotFound:
            return 0  # GCS: ifGenerationMatch=0 means "the object must not exist"

    def wrap(handler):
        def conforming(request, response, storage, *args, **kwargs):
            bucket = request.params.get("bucket_name")
            name = request.params.get("object_id") or (request.query.get("name") or [None])[0]
            if not name and request.query.get("uploadType") == ["multipart"]:
                name = (request.data or {}).get("meta", {}).get("name")  # named in the body
            if bucket and name:
                current = generation(storage, bucket, name)
                match = request.query.get("ifGenerationMatch")
                not_match = request.query.get("ifGenerationNotMatch")
                if match and int(match[0]) != current:
                    response.status = server.HTTPStatus.PRECONDITION_FAILED
                    return None
                if not_match and int(not_match[0]) == current:
                    response.status = server.HTTPStatus.NOT_MODIFIED
                    return None
            result = handler(request, response, storage, *args, **kwargs)
            if bucket and name and response.status.value < 300:
                current = generation(storage, bucket, name)
                if current:
                    response["x-goog-generation"] = str(current)
                    response["x-goog-metageneration"] = "1"
            return result
        return conforming

    wrapped = (objects.insert, objects.get, objects.download, objects.delete, objects.compose)
    server.HANDLERS = tuple(
        (regex, {method: wrap(h) if h in wrapped else h for method, h in handlers.items()})
        for regex, handlers in server.HANDLERS)


def _serve(port: int, bucket: str) -> None:
    import logging

    from gcp_storage_emulator import exceptions, server
    from gcp_storage_emulator.handlers import objects
    logging.basicConfig(level=logging.WARNING)
    _conform(server, objects, exceptions)
    server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
