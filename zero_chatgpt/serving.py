"""`zero-chatgpt serve`: the flow as a Prefect deployment, served by one process at a time.

Two serves of one deployment would take its runs in turn, each with the code it loaded, and the second would
re-register the deployment with its own default root. So `serve` refuses when another one is serving: one on
this machine holds a lock under PREFECT_HOME for as long as it lives (the OS frees it when the process dies,
however it dies); one elsewhere shows on the server as an unpaused deployment polled moments ago (a serve that
stops cleanly pauses its deployment). The default root is kept unless `--root` names another one, and then
the change is said.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

FLOW_NAME = "zero-chatgpt"


class ServeRefused(RuntimeError):
    """This deployment cannot be served now; the message says why in one line."""


def serve_pipeline(deployment: str, root: str | None) -> None:
    """Serve flow `zero-chatgpt` as `deployment` until interrupted, with `root` (or the deployment's own default
    root, else ./runs) as the default root of its runs."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    api_url = settings.api.url
    if not api_url:
        raise ServeRefused(
            "PREFECT_API_URL is not set, so runs could not reach this serve: start `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (your port) in this shell"
        )
    name = f"{FLOW_NAME}/{deployment}"
    with _serve_lock(Path(settings.home), api_url, name):
        existing = asyncio.run(_read_deployment(name))
        if existing is not None:
            _refuse_if_served_elsewhere(name, existing, settings.runner.poll_frequency)
        default_root = _default_root(name, root, existing)
        from zero_chatgpt.flows.pipeline import zero_chatgpt  # loads Prefect's flow machinery: after the checks

        zero_chatgpt.serve(name=deployment, parameters={"root": default_root})


@contextmanager
def _serve_lock(prefect_home: Path, api_url: str, name: str):
    """Held while this process serves `name` on the server at `api_url`; a second serve here fails to take it."""
    digest = hashlib.sha256(f"{api_url} {name}".encode()).hexdigest()[:16]
    lock_path = prefect_home / "zero-chatgpt" / f"serve-{digest}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path = lock_path.with_suffix(".pid")
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = pid_path.read_text(encoding="utf-8").strip() if pid_path.is_file() else "?"
        raise ServeRefused(
            f"{name} is already being served by process {holder} on this machine (against {api_url}); "
            "stop it first (Ctrl-C in its terminal), then serve again"
        ) from None
    try:
        pid_path.write_text(str(os.getpid()), encoding="utf-8")
        yield
    finally:
        lock.release()


async def _read_deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            return await client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _refuse_if_served_elsewhere(name: str, deployment: Any, poll_seconds: float) -> None:
    """A serve polls its deployment every `poll_seconds` and pauses it when it stops; one that was killed stops
    counting once it has missed a few polls."""
    if deployment.paused or deployment.last_polled is None:
        return
    polled_ago = (datetime.now(timezone.utc) - deployment.last_polled).total_seconds()
    recent = max(30.0, 3 * poll_seconds)
    if polled_ago < recent:
        raise ServeRefused(
            f"{name} is being served from elsewhere (the server saw it polled {polled_ago:.0f}s ago); stop that "
            f"serve first, or if it was killed, serve again in {recent - polled_ago:.0f}s"
        )


def _default_root(name: str, asked: str | None, deployment: Any) -> str:
    """The root runs of the deployment default to: `asked`, else the one it has, else ./runs (absolute paths)."""
    current = (deployment.parameters or {}).get("root") if deployment is not None else None
    if asked is None:
        return current or str(Path("runs").resolve())
    root = str(Path(asked).resolve())
    if current and current != root:
        print(f"zero-chatgpt: {name}: default root changes from {current} to {root}", file=sys.stderr)
    return root
