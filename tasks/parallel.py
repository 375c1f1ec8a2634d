"""The `parallel_map` that data stages get inside Prefect: one retried Prefect task per shard.

Each item runs as a task named `<stage>-shard-<i>`, so a failing shard is retried alone and every shard shows in
the UI. Where the work runs depends on `resources.task_runner`:

- `processes` (default): the tasks run on threads of this process and hand their item to a pool of plain worker
  processes (`ProcessMap`). Workers never import Prefect, so they never start a Prefect server of their own, and
  start in under a second at ~80 MB; only this process talks to the run's Prefect API.
- `threads`: the items run on threads of this process.
- `dask` / `ray`: the tasks run on the cluster's workers, which report to the run's Prefect API (its address is
  handed to them with the task's context, so none starts a temporary server of its own).

Use the map as a context manager around the stage (`with prefect_map(resources, "clean") as parallel_map:`): its
worker processes then start once and serve every call of the stage. Called outside a `with` block, each call
starts its own. Small maps run in-process: starting worker processes costs seconds.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.transactions import Transaction

from zero_chatgpt.config import ResourcesConfig
from zero_chatgpt.parallel import ProcessMap, serial_map


@task(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1)
def run_shard(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one shard of a data stage."""
    return fn(item)


class PrefectMap:
    """A `parallel_map` running each item as a `<stage>-shard` task on the configured task runner.

    Inside a `with` block the task runner (a thread pool feeding the worker processes, a Dask client or a Ray
    connection, and any local cluster they start) starts at the first call and serves every later one: a local
    Dask or Ray cluster takes seconds to start, and `shard` maps hundreds of batches.
    """

    def __init__(self, resources: ResourcesConfig, stage: str) -> None:
        self.resources = resources
        self.stage = stage
        self.workers = resources.data_workers()
        self.processes = ProcessMap(self.workers) if resources.task_runner == "processes" else None
        self._runner: TaskRunner | None = None
        self._open: contextlib.ExitStack | None = None
        self._depth = 0

    def __enter__(self) -> PrefectMap:
        self._depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._open is not None:
            opened, self._open, self._runner = self._open, None, None
            opened.__exit__(*exc_info)

    def _started_runner(self) -> TaskRunner:
        """The task runner, started on first use (a stage that maps nothing starts no cluster)."""
        if self._runner is None:
            with contextlib.ExitStack() as stack:
                if self.processes is not None:
                    stack.enter_context(self.processes)
                self._runner = stack.enter_context(self._task_runner())
                self._open = stack.pop_all()
        return self._runner

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1 or (self.workers <= 1 and not self.resources.address):
            return serial_map(fn, items)
        # Prefect's task runs, futures and states hold reference cycles that keep a batch's inputs and results
        # alive until a full collection, which Python seldom runs on its own: a stage mapping wave after wave
        # grew by a wave each time. Collected before (the previous wave, which the caller has let go of since)
        # and after each batch, about one wave is alive at a time. A collection costs ~0.1 s.
        gc.collect()
        try:
            return self._run_tasks(fn, items)
        finally:
            gc.collect()

    def _run_tasks(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        with self, _workers_report_to_this_api(self.resources), _outside_the_stage_transaction():
            runner = self._started_runner()
            futures = [
                runner.submit(
                    run_shard.with_options(name=f"{self.stage}-shard", task_run_name=f"{self.stage}-shard-{index}"),
                    parameters={"fn": self._where_to_run(fn), "item": item},
                )
                for index, item in enumerate(items)
            ]
            return [future.result() for future in futures]

    def _where_to_run(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """What the task calls: `fn` itself, or `fn` sent to a worker process."""
        return functools.partial(self.processes.run_one, fn) if self.processes is not None else fn

    def _task_runner(self) -> TaskRunner:
        if self.resources.task_runner in ("processes", "threads"):
            return ThreadPoolTaskRunner(max_workers=self.workers)
        if self.resources.task_runner == "dask":
            try:
                from prefect_dask import DaskTaskRunner
            except ImportError as err:
                raise RuntimeError("resources.task_runner=dask needs `pip install prefect-dask`") from err
            if self.resources.address:
                return DaskTaskRunner(address=self.resources.address)
            return DaskTaskRunner(
                cluster_kwargs={"n_workers": self.workers, "threads_per_worker": 1, "dashboard_address": None}
            )
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as err:
            raise RuntimeError("resources.task_runner=ray needs `pip install prefect-ray`") from err
        if self.resources.address:
            return RayTaskRunner(address=self.resources.address)
        # A local Ray instance as wide as `workers`, without the dashboard (a web server nobody asked for).
        return RayTaskRunner(init_kwargs={"num_cpus": self.workers, "include_dashboard": False})


def prefect_map(resources: ResourcesConfig, stage: str) -> PrefectMap:
    """A `parallel_map` running each item as a `<stage>-shard` task on the configured task runner."""
    return PrefectMap(resources, stage)


@contextlib.contextmanager
def _outside_the_stage_transaction() -> Iterator[None]:
    """Shard tasks submitted in this block run in no transaction of the stage task around them.

    Prefect makes a task's transaction a child of the active one, and a parent keeps its children (each with the
    task's parameters and result) until it ends: the stage's. `shard` grew by 4.6 KB per document that way
    (5.2 GB at 1M documents). A shard task caches nothing and has nothing to commit or roll back.
    """
    token = Transaction.__var__.set(None)  # the task runners copy this context into the tasks they start
    try:
        yield
    finally:
        Transaction.__var__.reset(token)


@contextlib.contextmanager
def _workers_report_to_this_api(resources: ResourcesConfig) -> Iterator[None]:
    """Tasks sent to Dask or Ray carry this run's Prefect API address in their context.

    Without it, a run on Prefect's temporary server (no PREFECT_API_URL set) would make every cluster worker
    start a temporary server of its own.
    """
    if resources.task_runner not in ("dask", "ray"):
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: str(get_client(sync_client=True).api_url).rstrip("/")}):
        yield
