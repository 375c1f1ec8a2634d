"""The deployment path a user takes: `prefect server start`, `zero-chatgpt serve`, `prefect deployment run`.

One real server and one serve are shared by the tests of this module (each takes a minute to start on a busy
laptop); the tests read what they check back from the server's REST API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zero_chatgpt import processes

PREFECT = [sys.executable, "-m", "prefect"]
SERVE = [sys.executable, "-m", "zero_chatgpt.cli", "serve"]


def wait_until(check, seconds: float, what: str, process: subprocess.Popen, log: Path) -> None:
    """`processes.wait_until`, failing the test with the tail of the process's log."""
    try:
        processes.wait_until(check, seconds, what, process)
    except (TimeoutError, RuntimeError) as err:
        pytest.fail(f"{err}:\n{log.read_text()[-3000:]}")


@dataclass
class Served:
    """A running `prefect server start` and `zero-chatgpt serve`, and how to reach them."""

    env: dict[str, str]
    api: str
    root: Path
    workdir: Path
    serve_log: Path

    def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or POST `body` to) the REST API; the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if data is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def flow_run_count(self) -> int:
        return self.call("/flow_runs/count", {})

    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*PREFECT, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def serve(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*SERVE, *args], env=env or self.env, capture_output=True, text=True, timeout=120, cwd=self.workdir
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("served")
    port = processes.free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = processes.start_logged(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_log, env
    )
    serve = None
    try:
        wait_until(
            lambda: processes.answers(f"http://127.0.0.1:{port}/api/health"), 180, "prefect server", server, server_log
        )
        root = tmp_path / "runs"
        serve = processes.start_logged([*SERVE, "--root", str(root)], serve_log, env, cwd=tmp_path)

        def deployed() -> bool:
            inspect = subprocess.run(
                [*PREFECT, "deployment", "inspect", "zero-chatgpt/full"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return inspect.returncode == 0

        wait_until(deployed, 180, "zero-chatgpt serve", serve, serve_log)
        yield Served(env, env["PREFECT_API_URL"], root, tmp_path, serve_log)
    finally:
        if serve is not None:
            processes.stop_group(serve)  # serve first, then the server it talks to
        processes.stop_group(server)


def test_importing_the_flow_loads_neither_torch_nor_transformers():
    # A deployment run imports the flow module before its first stage: torch alone would add seconds.
    probe = "import sys, zero_chatgpt.flows.pipeline; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"


def test_deployment_run_completes_through_a_real_server(served):
    # `until` keeps this run to the data stages: the test is about the deployment path, not training.
    run = served.prefect(
        "deployment",
        "run",
        "zero-chatgpt/full",
        "--param",
        "preset=tiny",
        "--param",
        "until=dedup",
        "--params",
        json.dumps({"overrides": {"clean": {"min_length": 5}}}),
        "--watch",
        timeout=900,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output + served.serve_log.read_text()[-3000:]
    assert "completed" in output.lower(), output
    latest = json.loads((served.root / "latest.json").read_text())
    assert list(latest) == ["clean", "dedup"]

    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)
    assert served.call(f"/flow_runs/{flow_run_id}")["name"] == "tiny→dedup +1 override"
    task_runs = served.call("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    # Stage tasks are named after their artifact; jobs a stage maps are `<stage>-shard-<i>` tasks beside them.
    stage_task_names = [run["name"] for run in task_runs if not re.fullmatch(r"\w+-shard-\d+", run["name"])]
    assert sorted(stage_task_names) == sorted(f"{stage} {entry['fingerprint'][:12]}" for stage, entry in latest.items())
    artifacts = served.call(
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["zero-chatgpt-config"]}, "flow_run_id": {"any_": [flow_run_id]}}},
    )
    assert len(artifacts) == 1
    assert "min_length: 5\n" in artifacts[0]["data"] and "max_steps:" in artifacts[0]["data"]


@pytest.mark.parametrize(
    "parameters, wrong",
    [
        ({"until": "pretrian"}, "pretrian"),
        ({"preset": "tinyy"}, "tinyy"),
        ({"force": ["sft", "ppoo"]}, "ppoo"),
        ({"overrides": {"pretrain": {"optim": {"max_step": 5}}}}, "max_step"),
        ({"overrides": {"pretrain": {"optim": {"max_steps": "many"}}}}, "many"),
    ],
)
def test_a_wrong_parameter_is_refused_when_the_run_is_created(served, parameters, wrong):
    before = served.flow_run_count()
    run = served.prefect("deployment", "run", "zero-chatgpt/full", "--params", json.dumps(parameters))
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "validation" in output.lower() and wrong in output, output
    assert served.flow_run_count() == before  # refused by the server: no run exists, so no stage can start


def test_a_second_serve_is_refused_and_leaves_the_default_root_alone(served, tmp_path):
    deployment = served.call("/deployments/name/zero-chatgpt/full")
    assert deployment["parameters"] == {"root": str(served.root)}

    # On this machine: the first serve holds the lock under PREFECT_HOME.
    here = served.serve("--root", str(tmp_path / "elsewhere"))
    assert here.returncode == 1
    assert here.stderr.strip().count("\n") == 0 and "already being served by process" in here.stderr, here.stderr

    # From another Prefect home (another machine, say): the server has seen the first serve poll just now.
    other_home = {**served.env, "PREFECT_HOME": str(tmp_path / "other-prefect-home")}
    there = served.serve("--root", str(tmp_path / "elsewhere"), env=other_home)
    assert there.returncode == 1
    assert there.stderr.strip().count("\n") == 0 and "being served from elsewhere" in there.stderr, there.stderr

    assert served.call("/deployments/name/zero-chatgpt/full")["parameters"] == {"root": str(served.root)}
