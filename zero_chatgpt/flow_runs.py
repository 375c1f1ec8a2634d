"""Flow runs whose process died without telling the Prefect server (SIGKILL, the OOM killer, a lost machine).

Such a run stays RUNNING in the server for ever. Each flow run therefore leaves a small record under its root,
`<root>/.flow-runs/<flow run id>.json` with its host and pid, removed when the flow ends in any way Python sees.
The next flow run on the same root finds records whose process is gone and marks those runs CRASHED in the server,
with a message saying what happened.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

RECORDS_DIR = ".flow-runs"


def record_path(root: Path, flow_run_id: str) -> Path:
    return Path(root) / RECORDS_DIR / f"{flow_run_id}.json"


def register_flow_run(root: Path, flow_run_id: str) -> Path:
    """Write this process's record for `flow_run_id` (host and pid); returns its path, for `forget_flow_run`."""
    path = record_path(root, flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")
    return path


def forget_flow_run(path: Path) -> None:
    path.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the pid: alive, not ours to judge
        return True
    return True


def mark_orphaned_flow_runs(root: Path, client=None) -> list[str]:
    """Mark CRASHED every flow run recorded under `root` on this host whose process is gone and that the server
    still shows as running; returns their ids. Records of other hosts are left alone (their pids mean nothing
    here), as are runs the server already shows finished."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    records = sorted((Path(root) / RECORDS_DIR).glob("*.json"))
    if not records:
        return []
    marked = []
    own_client = client is None
    client = client or get_client(sync_client=True)
    try:
        for path in records:
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
                pid, host = int(info["pid"]), str(info["host"])
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("ignoring an unreadable flow-run record %s", path)
                continue
            if host != socket.gethostname() or process_alive(pid):
                continue
            flow_run_id = path.stem
            try:
                run = client.read_flow_run(flow_run_id)
            except Exception as err:  # a record from another server (the root moved between servers)
                logger.info("flow run %s of %s is unknown to this server (%s); forgetting it", flow_run_id, path, err)
                forget_flow_run(path)
                continue
            if run.state is not None and run.state.is_running():
                message = f"its process (pid {pid} on {host}) died without reporting: killed or out of memory"
                client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
                logger.warning("flow run %s (%s) marked crashed: %s", run.name, flow_run_id, message)
                marked.append(flow_run_id)
            forget_flow_run(path)
    finally:
        if own_client:
            client.__exit__(None, None, None)
    return marked


@contextmanager
def watched_flow_run(root: Path) -> Iterator[None]:
    """Inside a flow: mark the root's orphaned flow runs crashed, then keep this run's record while the body runs."""
    from prefect.runtime import flow_run

    flow_run_id = flow_run.get_id()
    if flow_run_id is None:  # the flow function called outside a flow run: nothing to watch
        yield
        return
    try:
        mark_orphaned_flow_runs(root)
    except Exception as err:  # tidying the server's records must never stop a run
        logger.warning("could not check for crashed flow runs under %s: %s", root, err)
    path = register_flow_run(root, str(flow_run_id))
    try:
        yield
    finally:
        forget_flow_run(path)
