"""Local helper processes (a Prefect server, `zero-chatgpt serve`) as the screenshot script, the benches and the
tests start them: a free port, a process in its own session logging to a file, a health check, and a stop that
takes the whole process group with it (a server's workers included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_logged(
    command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """`command` in a new session (so `stop_group` reaches its children), stdout and stderr into `log`."""
    with open(log, "w", encoding="utf-8") as output:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Ctrl-C to the process's group (a serve pauses its deployment on it), SIGKILL after `grace_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """True when `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(check: Callable[[], bool], seconds: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll `check` until it holds; TimeoutError after `seconds`, RuntimeError at once if `process` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {seconds:.0f}s")
