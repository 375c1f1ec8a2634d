"""The run's stage table: every stage of the route as pending, running, done, cached or failed, with its seconds
and artifact, kept current in one Prefect table artifact of the flow run (key `run-stages`).

The flow marks each stage as it starts and finishes (`StageTable.start` / `finish`); `failures_recorded` around
the route marks the running stage failed with its error's first line and the file holding the full traceback,
publishes that, and lets the error go on. The table is a view: an API error while publishing it is logged once
and the run goes on without it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGE_TABLE_KEY = "run-stages"
# What a finished stage's record status ("ran" or "cached") is called in the table.
FINISHED_STATUS = {"ran": "done", "cached": "cached"}

Publish = Callable[[list[dict[str, Any]], str], None]


@dataclass
class StageRow:
    """One stage of the run as the table shows it."""

    stage: str
    status: str = "pending"
    seconds: float | None = None
    artifact: str = ""
    error: str = ""


class StageTable:
    """The stages of one run, in route order, published (`publish(rows, description)`) at every change."""

    def __init__(self, stages: Sequence[str], publish: Publish) -> None:
        self.rows = {stage: StageRow(stage) for stage in stages}
        self.publish = publish
        self.failure = ""
        self._started: dict[str, float] = {}

    def start(self, stage: str) -> None:
        self._row(stage).status = "running"
        self._started[stage] = time.perf_counter()
        self._publish()

    def finish(self, stage: str, status: str, artifact: str) -> None:
        """`stage` ended with its record's `status` (ran or cached) and artifact path."""
        row = self._row(stage)
        row.status, row.seconds, row.artifact = FINISHED_STATUS.get(status, status), self._seconds(stage), artifact
        self._publish()

    def fail(self, err: BaseException, traceback_file: Path | None) -> None:
        """The running stage (if any) failed with `err`, whose full traceback is in `traceback_file`."""
        where = f"traceback: {traceback_file}" if traceback_file is not None else "traceback: this flow run's logs"
        message = f"{first_line(err)} ({where})"
        running = [row for row in self.rows.values() if row.status == "running"]
        for row in running:
            row.status, row.seconds, row.error = "failed", self._seconds(row.stage), message
        stage = f" at `{running[0].stage}`" if running else ""
        self.failure = f"**Failed**{stage}: {message}"
        self._publish()

    def table(self) -> list[dict[str, Any]]:
        return [asdict(row) for row in self.rows.values()]

    def summary(self) -> str:
        """One markdown line: the failure, or the running stage and how many are finished."""
        if self.failure:
            return self.failure
        statuses = [row.status for row in self.rows.values()]
        counts = ", ".join(f"{statuses.count(status)} {status}" for status in ("done", "cached") if status in statuses)
        finished = sum(status in FINISHED_STATUS.values() for status in statuses)
        progress = f"{finished} of {len(statuses)} stages finished" + (f" ({counts})" if counts else "")
        running = [row.stage for row in self.rows.values() if row.status == "running"]
        return f"Running `{running[0]}`; {progress}" if running else progress

    def _row(self, stage: str) -> StageRow:
        return self.rows.setdefault(stage, StageRow(stage))

    def _seconds(self, stage: str) -> float | None:
        started = self._started.get(stage)
        return round(time.perf_counter() - started, 1) if started is not None else None

    def _publish(self) -> None:
        self.publish(self.table(), self.summary())


class PrefectTableArtifact:
    """A `Publish` to one Prefect table artifact under `key`: created on the first call and updated in place
    after, so a run adds one version of the key, not one per change. Gives up (saying so once) on an API error."""

    def __init__(self, key: str = STAGE_TABLE_KEY) -> None:
        self.key = key
        self.artifact_id = None
        self.broken = False

    def __call__(self, rows: list[dict[str, Any]], description: str) -> None:
        from prefect.artifacts import create_table_artifact
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        if self.broken:
            return
        try:
            if self.artifact_id is None:
                self.artifact_id = create_table_artifact(table=rows, key=self.key, description=description)
            else:
                update = ArtifactUpdate(data=json.dumps(rows), description=description)
                get_client(sync_client=True).update_artifact(self.artifact_id, update)
        except Exception as err:  # the table is a view of the run: never fail the run for it
            logger.warning("the %s table artifact is not updated any more: %s", self.key, err)
            self.broken = True


def first_line(err: BaseException) -> str:
    """`ValueError: the first line of its message` (the type alone when it has no message)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def save_traceback(err: BaseException, folder: Path) -> Path | None:
    """Write `err`'s full traceback to a new file in `folder`; its path, or None when it cannot be written."""
    path = Path(folder) / f"zero-chatgpt-flow-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(err)), encoding="utf-8")
    except OSError as write_error:
        logger.warning("could not save the traceback to %s: %s", path, write_error)
        return None
    return path


@contextmanager
def failures_recorded(table: StageTable, log_dir: Path) -> Iterator[None]:
    """An error inside marks the running stage of `table` failed, with its first line and the file in `log_dir`
    holding its traceback, then propagates."""
    try:
        yield
    except BaseException as err:
        table.fail(err, save_traceback(err, log_dir))
        raise
