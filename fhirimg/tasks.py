"""Batches and bounded submission: how the pipelines hand work to an executor.

A leaf (nothing of fhirimg imported): the local process pool and a Dask cluster both take tasks
through :func:`bounded`, so memory stays flat however many files or objects a run reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

__all__ = ["batched", "bounded"]

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter).

    >>> list(batched(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def bounded(
    executor: Executor | None, fn: Callable[..., T], jobs: Iterable[tuple[Any, ...]], window: int
) -> Iterator[T]:
    """Run ``fn(*args)`` for each args tuple, at most ``window`` in flight; results in order.

    Without an executor, runs inline. Bounded submission keeps memory flat however many tasks.
    """
    if executor is None:
        for args in jobs:
            yield fn(*args)
        return
    pending: deque[Future[T]] = deque()
    for args in jobs:
        pending.append(executor.submit(fn, *args))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
