"""How library stages fan work out without knowing who runs it.

A data stage takes a `parallel_map(fn, items) -> results` argument. Library code and tests pass
`serial_map`; scripts pass a `ProcessMap`; the Prefect tasks pass a map that runs each item as a retried
Prefect task on the configured task runner (processes, Dask or Ray). `fn` must be a module-level function and
items must pickle.

Worker processes are plain Python started with `spawn`: each imports `fn`'s module and what that imports, never
Prefect or the training stack, so a worker starts in under a second at ~80 MB. (Not `fork`: the parent runs
Prefect's threads, and a forked child would inherit their locks mid-use.) What a job logs on the project's
loggers travels back with its result and is logged again in the parent, where Prefect shows it under the job's
task run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

import cloudpickle

Item = TypeVar("Item")
Result = TypeVar("Result")


class ParallelMap(Protocol):
    """`parallel_map(fn, items)` returns `[fn(item) for item in items]`, in order, possibly in parallel."""

    def __call__(self, fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]: ...


def serial_map(fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """Run every item here, one after another (tests, debugging, one-core machines)."""
    return [fn(item) for item in items]


class ProcessMap:
    """A `parallel_map` on `workers` worker processes.

    Inside `with ProcessMap(n) as parallel_map:` one pool serves every call, so a stage that maps in waves
    starts its workers once; a call outside a `with` block starts and stops a pool of its own. `run_one` runs
    a single item on the pool (the Prefect map calls it from one thread per worker).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._entered = 0
        self._lock = threading.Lock()

    def __enter__(self) -> ProcessMap:
        with self._lock:
            self._entered += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._entered -= 1
            pool, self._pool = (self._pool, None) if self._entered == 0 else (None, self._pool)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        if self.workers <= 1 or len(items) <= 1:
            return serial_map(fn, items)
        with self:
            futures = [self._submit(fn, item)[1] for item in items]
            return [_unpacked(future.result()) for future in futures]

    def run_one(self, fn: Callable[[Item], Result], item: Item) -> Result:
        """`fn(item)` in a worker process; a pool broken by a dead worker is replaced for the next call."""
        pool, future = self._submit(fn, item)
        try:
            return _unpacked(future.result())
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _submit(self, fn: Callable[[Item], Result], item: Item) -> tuple[ProcessPoolExecutor, Future]:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            pool = self._pool
        # cloudpickle both ways, so functions and classes of a module a worker cannot import by name (a test's)
        # still travel.
        return pool, pool.submit(_call_pickled, cloudpickle.dumps((fn, item)))


def process_pool_map(workers: int) -> ProcessMap:
    """A plain process-pool map, for scripts and benchmarks that run a stage outside Prefect."""
    return ProcessMap(workers)


def _call_pickled(payload: bytes) -> bytes:
    fn, item = cloudpickle.loads(payload)
    with _kept_log_records() as records:
        result = fn(item)
    return cloudpickle.dumps((result, records))


def _unpacked(payload: bytes) -> object:
    """A job's result; the log records it brought are logged here, on the loggers that made them."""
    result, records = cloudpickle.loads(payload)
    for name, level, message in records:
        logging.getLogger(name).log(level, message)
    return result


class _RecordKeeper(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


@contextlib.contextmanager
def _kept_log_records() -> Iterator[list[tuple[str, int, str]]]:
    """(logger name, level, message) of what the project's loggers say at INFO and above in this block."""
    project = logging.getLogger("zero_chatgpt")
    keeper, level, propagate = _RecordKeeper(), project.level, project.propagate
    project.addHandler(keeper)
    project.setLevel(logging.INFO)
    project.propagate = False  # the parent logs them; a worker printing them too would say everything twice
    try:
        yield keeper.records
    finally:
        project.removeHandler(keeper)
        project.setLevel(level)
        project.propagate = propagate
