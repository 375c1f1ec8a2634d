"""Data stages fan out through Prefect: every shard is a task on a process pool, and a failing shard is retried
alone, without rerunning the others."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import pytest
from prefect import flow

from zero_chatgpt.config import ResourcesConfig
from zero_chatgpt.tasks.parallel import prefect_map

# The worker processes cannot import this test module by name: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("prefect_api")


def flaky_shard(job: tuple[str, int]) -> tuple[int, int]:
    """Times ten; shard 2 fails on its first attempt. Every attempt leaves a file naming its shard and pid."""
    calls_dir, shard = Path(job[0]), job[1]
    (calls_dir / f"{shard}-{os.getpid()}-{len(list(calls_dir.iterdir()))}").touch()
    if shard == 2 and not (calls_dir.parent / "failed-once").exists():
        (calls_dir.parent / "failed-once").touch()
        raise RuntimeError("shard 2 breaks the first time")
    return shard * 10, os.getpid()


@flow(name="parallel-map-test")
def map_shards(calls_dir: str, shards: int, resources: dict) -> list[tuple[int, int]]:
    run = prefect_map(ResourcesConfig.model_validate(resources), "test")
    return run(flaky_shard, [(calls_dir, shard) for shard in range(shards)])


def test_a_failing_shard_is_retried_alone_on_a_process_pool(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    results = map_shards(str(calls), 4, {"task_runner": "processes", "workers": 2})
    assert [value for value, _ in results] == [0, 10, 20, 30]
    assert all(pid != os.getpid() for _, pid in results), "shards must run in worker processes"
    attempts = {shard: sum(1 for f in calls.iterdir() if f.name.startswith(f"{shard}-")) for shard in range(4)}
    assert attempts == {0: 1, 1: 1, 2: 2, 3: 1}


def test_a_dask_address_runs_the_same_shard_tasks_on_that_cluster(tmp_path):
    pytest.importorskip("prefect_dask")
    from distributed import Client, LocalCluster

    calls = tmp_path / "calls"
    calls.mkdir()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
        results = map_shards(str(calls), 4, {"task_runner": "dask", "address": cluster.scheduler_address})
    assert [value for value, _ in results] == [0, 10, 20, 30]
    assert {pid for _, pid in results} <= worker_pids, "shards must run on the cluster's workers"
    attempts = {shard: sum(1 for f in calls.iterdir() if f.name.startswith(f"{shard}-")) for shard in range(4)}
    assert attempts == {0: 1, 1: 1, 2: 2, 3: 1}
