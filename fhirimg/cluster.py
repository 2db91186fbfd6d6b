"""``convert --engine dask``: the Dask cluster, and the read and write tasks of
:mod:`fhirimg.convert` on it instead of the local process pool.

Files go through the shuffle of :mod:`fhirimg.shuffle` (records grouped by study on the
workers, never through the client), which only uses :func:`start` and the client. What follows
is the earlier way, still taken with ``--deidentify``, the study filters and object-storage
inputs: the cluster as an executor.

Reading a file (:func:`fhirimg.scan.read_file`) is a pure function of its path, and writing a study
(``convert._write_study``) a pure function of its records, with an atomic write to a name derived
from the Study Instance UID. So a cluster is a change of executor: :class:`ClusterExecutor` is a
:class:`concurrent.futures.Executor` over a ``distributed.Client``, handed to the same pipeline.
What follows from that:

- **the same output**: the grouping by study (the keyed reduce, spilled to SQLite in the output
  folder's private state), duplicate SOP Instance UIDs, the catalog and ``report.json`` are the
  client's, exactly as with ``--engine local``; bundles are byte-identical;
- **a lost worker costs nothing**: the scheduler runs a dead worker's tasks again elsewhere
  (``distributed.scheduler.allowed-failures``); a task run twice writes the same bytes to the same
  name, atomically, so a retried write is idempotent;
- **memory is flat**: a worker holds one batch of headers (64 files) or one study at a time; the
  client holds the tasks in flight (a window of twice the workers' threads) and keeps the records
  in its SQLite index on disk, not in memory.

Workers read the input paths and write into the output folder themselves, so on a real cluster
both must be the same path on every node (a shared file system; docs/scale-out.md). Dask is an
optional extra (``pip install 'fhirimg[dask]'``), imported only here, only when used.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from fhirimg.errors import ClusterError
from fhirimg.safetext import redact_url

log = logging.getLogger(__name__)

INSTALL_HINT = "--engine dask needs the dask extra: pip install 'fhirimg[dask]'"
DEFAULT_WORKERS = 2
"""Workers of the local cluster started when no scheduler is given."""

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class ClusterOptions:
    """Where the tasks run: the scheduler at ``scheduler`` (``tcp://HOST:PORT``), or, without
    one, a local cluster of ``workers`` processes (one thread each)."""

    scheduler: str | None = None
    workers: int | None = None
    connect_timeout: float = 5.0
    """Seconds to wait for the scheduler to answer (and, for a local cluster, to start)."""

    def describe(self) -> str:
        if self.scheduler:
            return f"the Dask scheduler at {redact_url(self.scheduler)}"
        return f"a local Dask cluster of {self.workers or DEFAULT_WORKERS} worker processes"


class ClusterExecutor(Executor):
    """A ``concurrent.futures`` executor whose tasks run on a Dask cluster; :meth:`shutdown`
    closes the client and the local cluster it started, if any."""

    def __init__(self, client: Any, cluster: Any | None) -> None:
        self.client: Any = client  # a distributed.Client
        self._cluster = cluster
        # pure=False: a random key per task, no hashing of its arguments (a study's records)
        self._executor: Executor = client.get_executor(pure=False)

    @property
    def address(self) -> str:
        """The scheduler's address (``tcp://HOST:PORT``)."""
        return str(self.client.scheduler.address)

    @property
    def threads(self) -> int:
        """Task slots on the cluster now (the sum of the workers' threads), at least 1."""
        info = self.client.scheduler_info(n_workers=-1)
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            self._executor.shutdown(wait=wait and not cancel_futures)
        finally:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()


def start(options: ClusterOptions) -> ClusterExecutor:
    """Connect to the scheduler, or start a local cluster; raise :class:`ClusterError` when Dask
    is not installed or the scheduler does not answer within ``connect_timeout``."""
    try:
        # Any: distributed is untyped; only this function touches its API.
        dist: Any = importlib.import_module("distributed")
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    # distributed logs its life at INFO and WARNING (workers started, lost, killed at close);
    # fhirimg's default output is about the conversion: its warnings only with -v.
    verbose = logging.getLogger(__name__).getEffectiveLevel() < logging.WARNING
    logging.getLogger("distributed").setLevel(logging.WARNING if verbose else logging.ERROR)
    timeout = f"{options.connect_timeout}s"
    if options.scheduler:
        try:
            client = dist.Client(options.scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            why = str(exc).replace(options.scheduler, redact_url(options.scheduler))
            raise ClusterError(f"cannot reach {options.describe()}: {why}") from None
        log.info("tasks run on %s", options.describe())
        return ClusterExecutor(client, None)
    cluster = dist.LocalCluster(
        n_workers=options.workers or DEFAULT_WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",  # the scheduler and workers listen on loopback only
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False},  # no HTTP server nobody asked for
    )
    try:
        client = dist.Client(cluster, timeout=timeout, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    log.info("tasks run on %s", options.describe())
    return ClusterExecutor(client, cluster)
