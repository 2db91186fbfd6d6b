"""Start moto's S3 server (``moto[server]``) on 127.0.0.1 for the object-storage tests.

moto runs in a thread of the test process and listens on the loopback address only, so it works
the same inside ``tools/run-in-netns.sh`` (where only ``lo`` exists) and outside it. Dask workers
in other processes reach it on the same address. No pytest import here: usable from benchmarks.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

ACCESS_KEY = "fhirimg-test-key"
SECRET_KEY = "fhirimg-test-secret"  # moto accepts any; never a real credential
START_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_moto() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=2.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not answer on {endpoint}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.stop()
