"""The deployment path a user takes: `prefect server start`, `zero-chatgpt serve`, `prefect deployment run`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, seconds: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(1)
    pytest.fail(f"{what}: not ready after {seconds}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_deployment_run_completes_through_a_real_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    server = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=server_log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(healthy, 180, "prefect server", server, server_log)
        root = tmp_path / "runs"
        serve = subprocess.Popen(
            [sys.executable, "-m", "zero_chatgpt.cli", "serve", "--root", str(root)],
            env=env,
            stdout=serve_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )

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
        # `until` keeps this run to the data stages: the test is about the deployment path, not training.
        run = subprocess.run(
            [
                *PREFECT,
                "deployment",
                "run",
                "zero-chatgpt/full",
                "--param",
                "preset=tiny",
                "--param",
                "until=dedup",
                "--watch",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output + serve_log.read_text()[-3000:]
        assert "completed" in output.lower(), output
        assert (root / "latest.json").is_file(), serve_log.read_text()[-3000:]
    finally:
        if serve is not None:
            stop(serve)  # serve first, then the server it talks to
        stop(server)
