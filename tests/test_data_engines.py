"""Every data stage runs on a local Dask cluster and on a local Ray cluster by config alone, and writes the same
bytes as the default process runner: clean (spans of several files), dedup (signature and band jobs),
train_tokenizer (the sample's part jobs) and shard (tokenizer batches)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from zero_chatgpt.artifacts import read_manifest
from zero_chatgpt.cli import main

# Slow: three runs of the data half (~4 minutes on 2 cores), in the suite that runs beside the fast one.
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

DATA_STAGES = ("clean", "dedup", "train_tokenizer", "shard")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three JSONL files of word documents, with exact and near copies planted across files; the run adds the
    demo corpus (Chinese and English) as a second source."""
    data = tmp_path_factory.mktemp("engines-data")
    rng = random.Random(3)
    vocabulary = ["".join(rng.choices("abcdefghijklmnop", k=rng.randint(2, 8))) for _ in range(400)]
    docs = [" ".join(rng.choices(vocabulary, k=rng.randint(40, 120))) for _ in range(240)]
    for number in range(40):
        words = docs[number * 3].split()
        words[rng.randrange(len(words))] = "edited"
        docs.append(" ".join(words) if number % 2 else docs[number * 3])
    rng.shuffle(docs)
    for number in range(3):
        rows = docs[number::3]
        (data / f"part{number}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return data


def run_data_half(tmp_path: Path, corpus: Path, resources: str) -> dict[str, Path]:
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "base: tiny\n"
        f"resources: {resources}\n"
        f"data: {{sources: [{{kind: demo}}, {{kind: jsonl, path: {json.dumps(str(corpus / '*.jsonl'))}}}]}}\n"
        # Small shards and batches, so every stage maps several jobs.
        "clean: {docs_per_shard: 200}\n"
        "dedup: {docs_per_shard: 100}\n"
        "train_tokenizer: {vocab_size: 1000}\n"
        "shard: {docs_per_batch: 100}\n",
        encoding="utf-8",
    )
    root = tmp_path / "root"
    assert main(["run", "--preset", str(preset), "--root", str(root), "--until", "shard"]) == 0
    latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
    return {stage: Path(latest[stage]["path"]) for stage in DATA_STAGES}


def artifact_bytes(path: Path) -> dict[str, bytes]:
    """Every file of an artifact but its manifest (which records timings), by relative path."""
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != "manifest.json"
    }


@pytest.fixture(scope="module")
def on_processes(tmp_path_factory, corpus) -> dict[str, Path]:
    return run_data_half(tmp_path_factory.mktemp("processes"), corpus, "{task_runner: processes, workers: 2}")


def assert_same_artifacts(expected: dict[str, Path], actual: dict[str, Path]) -> None:
    for stage in DATA_STAGES:
        # Resources are no part of a fingerprint: the same artifact names, and the same bytes in them.
        assert expected[stage].name == actual[stage].name, stage
        want, got = artifact_bytes(expected[stage]), artifact_bytes(actual[stage])
        assert sorted(got) == sorted(want), stage
        differing = [name for name in want if want[name] != got[name]]
        assert not differing, f"{stage}: {differing} differ"
        assert read_manifest(actual[stage])["files"] == read_manifest(expected[stage])["files"], stage


def test_the_process_runner_maps_several_jobs_per_stage(on_processes):
    clean = read_manifest(on_processes["clean"])
    assert len([name for name in clean["files"] if name.startswith("part_")]) >= 4
    dedup = read_manifest(on_processes["dedup"])["metrics"]
    assert dedup["exact_duplicates"] >= 20 and dedup["near_duplicates"] >= 20, dedup


def test_every_data_stage_on_a_local_dask_cluster_writes_the_process_runners_bytes(tmp_path, corpus, on_processes):
    pytest.importorskip("prefect_dask")
    # No address: each stage starts a local two-worker cluster of its own, as a user's config would.
    on_dask = run_data_half(tmp_path, corpus, "{task_runner: dask, workers: 2}")
    assert_same_artifacts(on_processes, on_dask)


def test_every_data_stage_on_a_local_ray_cluster_writes_the_process_runners_bytes(tmp_path, corpus, on_processes):
    pytest.importorskip("prefect_ray")
    import ray

    psutil = pytest.importorskip("psutil")

    # One local two-CPU Ray instance for the run (the runner joins it, as it would a cluster named by address).
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        on_ray = run_data_half(tmp_path, corpus, "{task_runner: ray, workers: 2}")
        # Ray keeps its workers alive, and a Prefect temporary server lives as long as the process that started
        # it: any worker that had started one would still show it here, beside the tests' own server.
        servers = [p for p in psutil.Process().children(recursive=True) if "uvicorn" in " ".join(p.cmdline())]
    finally:
        ray.shutdown()
    assert len(servers) == 1, f"{len(servers)} Prefect servers: the tests' own and {len(servers) - 1} of Ray workers"
    assert_same_artifacts(on_processes, on_ray)
