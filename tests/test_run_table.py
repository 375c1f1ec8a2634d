"""The run's stage table: every planned stage pending, running, done, cached or failed, published at each change."""

from __future__ import annotations

from pathlib import Path

import pytest

from zero_chatgpt.run_table import StageTable, failures_recorded


class Published:
    """A `Publish` that keeps what it was given."""

    def __init__(self) -> None:
        self.versions: list[tuple[list[dict], str]] = []

    def __call__(self, rows, description):
        self.versions.append((rows, description))

    def statuses(self, index: int = -1) -> dict[str, str]:
        return {row["stage"]: row["status"] for row in self.versions[index][0]}


def test_stages_go_from_pending_to_running_to_done_or_cached():
    published = Published()
    table = StageTable(["clean", "dedup", "sft"], published)
    table.start("clean")
    assert published.statuses() == {"clean": "running", "dedup": "pending", "sft": "pending"}
    assert published.versions[-1][1] == "Running `clean`; 0 of 3 stages finished"
    table.finish("clean", "ran", "/root/clean/abc")
    table.start("dedup")
    table.finish("dedup", "cached", "/root/dedup/def")
    assert published.statuses() == {"clean": "done", "dedup": "cached", "sft": "pending"}
    rows, description = published.versions[-1]
    assert rows[0]["artifact"] == "/root/clean/abc" and rows[0]["seconds"] >= 0.0
    assert rows[2]["seconds"] is None and rows[2]["artifact"] == ""
    assert description == "2 of 3 stages finished (1 done, 1 cached)"
    assert len(published.versions) == 4  # one publication per change


def test_a_failing_stage_is_published_failed_with_its_first_line_and_traceback_file(tmp_path):
    published = Published()
    table = StageTable(["clean", "dedup", "sft"], published)
    with pytest.raises(ValueError, match="planted"):
        with failures_recorded(table, tmp_path / "logs"):
            table.start("clean")
            table.finish("clean", "ran", "/root/clean/abc")
            table.start("dedup")
            raise ValueError("planted failure\nsecond line not shown")
    assert published.statuses() == {"clean": "done", "dedup": "failed", "sft": "pending"}
    rows, description = published.versions[-1]
    error = rows[1]["error"]
    assert error.startswith("ValueError: planted failure (traceback: ") and "second line" not in error
    traceback_file = Path(error.split("(traceback: ")[1].rstrip(")"))
    assert traceback_file.parent == tmp_path / "logs"
    assert "second line not shown" in traceback_file.read_text(encoding="utf-8")
    assert description.startswith("**Failed** at `dedup`: ValueError: planted failure")


def test_a_failure_outside_any_stage_is_still_published(tmp_path):
    published = Published()
    table = StageTable(["clean"], published)
    with pytest.raises(KeyboardInterrupt):
        with failures_recorded(table, tmp_path):
            raise KeyboardInterrupt
    assert published.statuses() == {"clean": "pending"}
    assert published.versions[-1][1].startswith("**Failed**: KeyboardInterrupt (traceback: ")


def _run_stage_tables(root: Path) -> list:
    """The `run-stages` artifacts of the flow runs whose root is `root`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["run-stages"])))
        return [a for a in artifacts if client.read_flow_run(a.flow_run_id).parameters.get("root") == str(root)]


def test_a_failed_run_publishes_its_stage_table_naming_the_failed_stage(tmp_path, monkeypatch, prefect_api):
    import json

    import zero_chatgpt.tasks.dedup as dedup_task
    from zero_chatgpt.cli import main

    def planted(*args, **kwargs):
        raise RuntimeError("planted dedup failure")

    monkeypatch.setattr(dedup_task, "dedup_corpus", planted)
    root = (tmp_path / "root").resolve()
    assert main(["run", "--root", str(root), "--until", "train_tokenizer"]) == 1
    (artifact,) = _run_stage_tables(root)
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {row["stage"]: row["status"] for row in rows} == {
        "clean": "done",
        "dedup": "failed",
        "train_tokenizer": "pending",
    }
    assert rows[0]["artifact"].startswith(str(root / "clean"))
    failed = rows[1]
    assert failed["error"].startswith("RuntimeError: planted dedup failure (traceback: ")
    traceback_file = Path(failed["error"].split("(traceback: ")[1].rstrip(")"))
    assert traceback_file.parent == root / "logs" and "planted" in traceback_file.read_text(encoding="utf-8")
    assert artifact.description.startswith("**Failed** at `dedup`: RuntimeError: planted dedup failure")
