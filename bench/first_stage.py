"""Benchmark: seconds from `prefect deployment run zero-chatgpt/full` to the first stage task starting.

Starts a throwaway `prefect server start` (own PREFECT_HOME, free port) and `zero-chatgpt serve`, then creates
`--runs` deployment runs of `preset=tiny until=clean`, one after another. For each it reports, from the wall clock
just before `prefect deployment run` is invoked:
  created      the run exists on the server (the CLI's own start-up and the API call)
  picked_up    the served runner took it (Pending): waiting for the runner's next poll
  flow_start   the flow began (Running): process spawn and the flow module's imports
  first_stage  the first task run entered Running (config resolution, source checks, storage block)
Timestamps are the server's records of those states; everything runs on this one machine and clock.

    python bench/first_stage.py --runs 3

The last line printed is one JSON object with the figures (the medians and every run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from zero_chatgpt import processes

PREFECT = [sys.executable, "-m", "prefect"]


async def run_timestamps(flow_run_id: str, seconds: float) -> dict[str, datetime]:
    """When a flow run was created, picked up, started, and started its first task, polled until it has."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + seconds
    async with get_client() as client:
        while time.monotonic() < deadline:
            flow_run = await client.read_flow_run(flow_run_id)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            started = [run.start_time for run in task_runs if run.start_time is not None]
            if started and flow_run.start_time is not None:
                states = await client.read_flow_run_states(flow_run.id)
                return {
                    "created": flow_run.created,
                    "picked_up": min(state.timestamp for state in states if state.type.value == "PENDING"),
                    "flow_start": flow_run.start_time,
                    "first_stage": min(started),
                }
            if flow_run.state is not None and flow_run.state.is_final():
                raise RuntimeError(f"flow run ended as {flow_run.state.name} before a stage started")
            await asyncio.sleep(0.2)
    raise TimeoutError(f"no stage started in flow run {flow_run_id} within {seconds}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="deployment runs to time (one after another)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zcg-first-stage-"))
    port = processes.free_port()
    os.environ.update(
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    server = processes.start_logged(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], work / "server.log"
    )
    serve = None
    try:
        processes.wait_until(
            lambda: processes.answers(f"http://127.0.0.1:{port}/api/health"), 240, "prefect server", server
        )
        serve = processes.start_logged(
            [sys.executable, "-m", "zero_chatgpt.cli", "serve", "--root", str(work / "runs")],
            work / "serve.log",
            cwd=work,
        )
        processes.wait_until(
            lambda: (
                subprocess.run([*PREFECT, "deployment", "inspect", "zero-chatgpt/full"], capture_output=True).returncode
                == 0
            ),
            240,
            "zero-chatgpt serve",
        )
        runs = []
        for _ in range(args.runs):
            clicked = time.time()
            created = subprocess.run(
                [*PREFECT, "deployment", "run", "zero-chatgpt/full", "--param", "until=clean"],
                capture_output=True,
                text=True,
                check=True,
            )
            flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1)
            moments = asyncio.run(run_timestamps(flow_run_id, 600))
            runs.append({event: round(moment.timestamp() - clicked, 2) for event, moment in moments.items()})
            print(runs[-1], flush=True)
            # The next run starts on an idle machine, after this one has finished.
            subprocess.run([*PREFECT, "flow-run", "watch", flow_run_id], capture_output=True)
        medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(json.dumps({"median_seconds": medians, "runs": runs, "logs": str(work)}))
    finally:
        if serve is not None:
            processes.stop_group(serve)
        processes.stop_group(server)


if __name__ == "__main__":
    main()
