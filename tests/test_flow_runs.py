"""A flow run whose process was killed is marked CRASHED by the next run on the same root, not left RUNNING."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Running

from zero_chatgpt.flow_runs import mark_orphaned_flow_runs, record_path, register_flow_run

pytestmark = pytest.mark.usefixtures("prefect_api")


@flow(name="zero-chatgpt-test-victim")
def victim() -> None:
    """Never called: its runs are created by hand in the RUNNING state."""


def running_flow_run(client) -> str:
    return str(client.create_flow_run(victim, state=Running()).id)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_run_whose_process_died_is_marked_crashed_and_a_live_one_is_left_alone(tmp_path):
    with get_client(sync_client=True) as client:
        killed, alive = running_flow_run(client), running_flow_run(client)
        record = record_path(tmp_path, killed)
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
        register_flow_run(tmp_path, alive)  # this test's own process: alive

        assert mark_orphaned_flow_runs(tmp_path, client) == [killed]
        crashed = client.read_flow_run(killed).state
        assert crashed.is_crashed() and "died without reporting" in crashed.message
        assert client.read_flow_run(alive).state.is_running()
        assert not record.exists() and record_path(tmp_path, alive).exists()
        assert mark_orphaned_flow_runs(tmp_path, client) == []  # nothing twice


def test_records_of_other_hosts_and_unreadable_ones_are_skipped(tmp_path):
    with get_client(sync_client=True) as client:
        other = running_flow_run(client)
        record_path(tmp_path, other).parent.mkdir(parents=True)
        record_path(tmp_path, other).write_text(json.dumps({"host": "another-machine", "pid": dead_pid()}))
        record_path(tmp_path, "garbage").write_text("{not json")
        assert mark_orphaned_flow_runs(tmp_path, client) == []
        assert client.read_flow_run(other).state.is_running()
