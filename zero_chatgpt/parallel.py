"""How library stages fan work out without knowing who runs it.

A data stage takes a `parallel_map(fn, items) -> results` argument. Library code and tests pass
`serial_map`; the Prefect tasks pass a map that runs each item as a retried Prefect task on the configured
task runner (processes, Dask or Ray). `fn` must be a module-level function and items must pickle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class ParallelMap(Protocol):
    """`parallel_map(fn, items)` returns `[fn(item) for item in items]`, in order, possibly in parallel."""

    def __call__(self, fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]: ...


def serial_map(fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """Run every item here, one after another (tests, debugging, one-core machines)."""
    return [fn(item) for item in items]


def process_pool_map(workers: int) -> ParallelMap:
    """A plain process-pool map, for scripts and benchmarks that run a stage outside Prefect."""

    def run(fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        if workers <= 1 or len(items) <= 1:
            return serial_map(fn, items)
        with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
            return list(pool.map(fn, items))

    return run
