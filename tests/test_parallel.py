"""Data stages fan out through Prefect: every shard is a task on a process pool, and a failing shard is retried
alone, without rerunning the others."""

from __future__ import annotations

import gc
import json
import os
import random
import sys
import time
import weakref
from pathlib import Path

import cloudpickle
import pytest
from prefect import flow, task

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


def test_a_failing_shard_is_retried_alone_on_a_local_ray_cluster(tmp_path):
    pytest.importorskip("prefect_ray")
    import ray
    from ray import cloudpickle as ray_cloudpickle

    ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray pickles with its own copy
    calls = tmp_path / "calls"
    calls.mkdir()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        results = map_shards(str(calls), 4, {"task_runner": "ray", "workers": 2})
    finally:
        ray.shutdown()
    assert [value for value, _ in results] == [0, 10, 20, 30]
    assert all(pid != os.getpid() for _, pid in results), "shards must run in Ray's worker processes"
    attempts = {shard: sum(1 for f in calls.iterdir() if f.name.startswith(f"{shard}-")) for shard in range(4)}
    assert attempts == {0: 1, 1: 1, 2: 2, 3: 1}


def dies_once(job: tuple[str, int]) -> int:
    """Times ten; the first attempt at shard 1 kills its worker process outright (as the OOM killer would)."""
    marker, shard = Path(job[0]), job[1]
    if shard == 1 and not marker.exists():
        marker.touch()
        os._exit(9)
    return shard * 10


@flow(name="worker-death-test")
def map_through_a_worker_death(marker: str) -> list[int]:
    with prefect_map(ResourcesConfig(task_runner="processes", workers=2), "test") as parallel_map:
        return parallel_map(dies_once, [(marker, shard) for shard in range(4)])


def test_a_worker_that_dies_is_replaced_and_its_shard_retried(tmp_path):
    assert map_through_a_worker_death(str(tmp_path / "died")) == [0, 10, 20, 30]
    assert (tmp_path / "died").exists()


def worker_imports(item: int) -> dict:
    """What a data worker process has loaded while it runs a job."""
    return {
        "pid": os.getpid(),
        "torch": "torch" in sys.modules,
        "transformers": "transformers" in sys.modules,
        "prefect": "prefect" in sys.modules,
    }


@flow(name="worker-imports-test")
def probe_workers(resources: dict) -> list[dict]:
    with prefect_map(ResourcesConfig.model_validate(resources), "probe") as parallel_map:
        first = parallel_map(worker_imports, list(range(4)))
        return first + parallel_map(worker_imports, list(range(4)))


def test_process_workers_import_neither_prefect_nor_the_training_stack_and_live_for_the_stage():
    results = probe_workers({"task_runner": "processes", "workers": 2})
    assert all(pid != os.getpid() for pid in {r["pid"] for r in results}), "jobs must run in worker processes"
    # A worker without Prefect cannot start a Prefect server; without torch it costs tens of MB, not hundreds.
    assert not any(r["torch"] or r["transformers"] or r["prefect"] for r in results), results
    # Both calls ran on the pool the `with` block opened: at most two worker processes in all.
    assert len({r["pid"] for r in results}) <= 2


def _busy_loop() -> None:
    while True:
        pass


@pytest.mark.parametrize("task_runner", ["processes", "dask"])
def test_a_multi_file_source_runs_with_one_prefect_server(tmp_path, task_runner):
    """The CLI without PREFECT_API_URL starts one temporary server; its data workers must not start their own
    (they once did, and under load one timed out in shard). Runs clean to shard on four files, next to a busy
    process, and watches the run's process tree for servers and workers. Dask workers run Prefect tasks: they
    report to that one server. (A local Ray instance is too heavy to start beside the busy process on a 2-core
    CI machine: `test_data_engines.py` checks Ray's workers, without the load.)"""
    import multiprocessing
    import subprocess
    import threading

    psutil = pytest.importorskip("psutil")
    if task_runner != "processes":
        pytest.importorskip(f"prefect_{task_runner}")
    data = tmp_path / "data"
    data.mkdir()
    words = random.Random(0)
    for number in range(4):
        texts = [" ".join("".join(words.choices("abcdefghij", k=5)) for _ in range(60)) for _ in range(60)]
        (data / f"part{number}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "base: tiny\n"
        f"resources: {{task_runner: {task_runner}, workers: 2}}\n"
        f"data: {{sources: [{{kind: jsonl, path: {json.dumps(str(data / '*.jsonl'))}}}]}}\n"
        "train_tokenizer: {vocab_size: 400}\n"
        "shard: {docs_per_batch: 20}\n",
        encoding="utf-8",
    )
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    command = [sys.executable, "-m", "zero_chatgpt.cli", "run", "--preset", str(preset), "--root", str(tmp_path / "r")]
    servers: set[int] = set()
    workers: set[int] = set()
    load = multiprocessing.get_context("spawn").Process(target=_busy_loop, daemon=True)
    load.start()
    try:
        run = subprocess.Popen(
            [*command, "--until", "shard"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        main = psutil.Process(run.pid)

        def watch() -> None:
            while run.poll() is None:
                try:
                    for process in main.children(recursive=True):
                        is_server = "uvicorn" in " ".join(process.cmdline())
                        (servers if is_server else workers).add(process.pid)
                except psutil.Error:
                    pass  # a process ended while being looked at

        watcher = threading.Thread(target=watch)
        watcher.start()
        output, _ = run.communicate(timeout=500)
        watcher.join()
    finally:
        load.terminate()
    assert run.returncode == 0, output.decode(errors="replace")[-3000:]
    assert len(servers) == 1, f"{len(servers)} Prefect servers started"
    assert workers, "the data stages ran no worker processes"
    latest = json.loads((tmp_path / "r" / "latest.json").read_text(encoding="utf-8"))
    assert list(latest) == ["clean", "dedup", "train_tokenizer", "shard"]


class Result:
    """What a job returns: an object a weak reference can follow."""

    def __init__(self, number: int) -> None:
        self.number = number


def make_result(number: int) -> Result:
    return Result(number)


@flow(name="batch-garbage-test")
def results_alive_after_waves(waves: int) -> list[int]:
    """How many results of each wave are still alive once the caller has let go of them and mapped again (for up
    to ten seconds: Prefect's threads may still be reporting on the wave's tasks)."""
    alive_after = []
    with prefect_map(ResourcesConfig(task_runner="processes", workers=2), "waves") as parallel_map:
        for wave in range(waves):
            results = parallel_map(make_result, list(range(wave * 8, wave * 8 + 8)))
            assert [result.number for result in results] == list(range(wave * 8, wave * 8 + 8))
            references = [weakref.ref(result) for result in results]
            del results
            deadline = time.monotonic() + 10
            while sum(reference() is not None for reference in references) and time.monotonic() < deadline:
                time.sleep(0.2)
                parallel_map(make_result, [-1, -2])
            alive_after.append(sum(reference() is not None for reference in references))
    return alive_after


def test_nothing_a_batch_creates_outlives_it():
    """Prefect's task runs hold their results in reference cycles; the map collects them, so a stage that maps
    wave after wave holds one wave at a time (it once grew by 215-300 MB a wave)."""
    # With Python's own collector off, only the map's collections can free those cycles.
    gc.disable()
    try:
        alive_after = results_alive_after_waves(3)
    finally:
        gc.enable()
    assert alive_after == [0, 0, 0]


@task
def stage_mapping_in_waves(waves: int) -> int:
    """Like a data stage's task: maps wave after wave; returns how many of all the waves' results are alive at
    the end, once Prefect's threads have finished with them (at most ten seconds)."""
    references = []
    with prefect_map(ResourcesConfig(task_runner="processes", workers=2), "waves") as parallel_map:
        for wave in range(waves):
            results = parallel_map(make_result, list(range(wave * 8, wave * 8 + 8)))
            references += [weakref.ref(result) for result in results]
            del results
        deadline = time.monotonic() + 10
        while sum(reference() is not None for reference in references) and time.monotonic() < deadline:
            time.sleep(0.2)
            gc.collect()
    return sum(reference() is not None for reference in references)


@flow(name="stage-garbage-test")
def run_stage_mapping_in_waves(waves: int) -> int:
    return stage_mapping_in_waves(waves)


def test_a_stage_task_does_not_keep_its_batches():
    """Prefect makes a task's transaction the child of the one around it, and the parent keeps its children with
    their parameters and results; shard tasks opt out, or a stage would hold every batch until it ends."""
    assert run_stage_mapping_in_waves(4) == 0


def logs_a_warning(number: int) -> int:
    import logging

    logging.getLogger("zero_chatgpt.data_process.test_job").warning("job %d in process %d", number, os.getpid())
    return number


def test_what_a_worker_logs_is_logged_again_in_the_parent(caplog):
    """Worker processes have no Prefect: their warnings reach the UI only if the parent logs them again."""
    from zero_chatgpt.parallel import ProcessMap

    with caplog.at_level("INFO", logger="zero_chatgpt"):
        assert ProcessMap(2)(logs_a_warning, [1, 2, 3]) == [1, 2, 3]
    said = [r.getMessage() for r in caplog.records if r.name == "zero_chatgpt.data_process.test_job"]
    assert [message.split()[1] for message in said] == ["1", "2", "3"]
    assert all(int(message.split()[-1]) != os.getpid() for message in said), "the jobs ran in worker processes"
