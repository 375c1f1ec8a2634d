"""The `parallel_map` that data stages get inside Prefect: one retried Prefect task per shard.

Each item runs as a task named `<stage>-shard` on the task runner that `resources` picks (a local process
pool by default; Dask or Ray when an address is configured), so a failing shard is retried alone and every
shard shows in the UI. Small maps run in-process: starting worker processes costs seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from zero_chatgpt.config import ResourcesConfig
from zero_chatgpt.parallel import ParallelMap, serial_map


@task(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1)
def run_shard(fn: Callable[[Any], Any], item: Any) -> Any:
    """Run one shard of a data stage."""
    return fn(item)


def _task_runner(resources: ResourcesConfig, items: int):
    workers = min(resources.data_workers(), items)
    if resources.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if resources.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise RuntimeError("resources.task_runner=dask needs `pip install prefect-dask`") from err
        if resources.address:
            return DaskTaskRunner(address=resources.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    if resources.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as err:
            raise RuntimeError("resources.task_runner=ray needs `pip install prefect-ray`") from err
        return RayTaskRunner(address=resources.address) if resources.address else RayTaskRunner()
    return ProcessPoolTaskRunner(max_workers=workers)


def prefect_map(resources: ResourcesConfig, stage: str) -> ParallelMap:
    """A `parallel_map` running each item as a `<stage>-shard` task on the configured task runner."""
    shard_task = run_shard.with_options(name=f"{stage}-shard")

    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1 or (resources.data_workers() <= 1 and not resources.address):
            return serial_map(fn, items)
        with _task_runner(resources, len(items)) as runner:
            futures = [
                runner.submit(
                    shard_task.with_options(task_run_name=f"{stage}-shard-{index}"), parameters={"fn": fn, "item": item}
                )
                for index, item in enumerate(items)
            ]
            return [future.result() for future in futures]

    return run
