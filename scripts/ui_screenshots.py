"""Screenshots of the Prefect UI as a user sees a zero-chatgpt run: the run page, the artifacts page, the report
card and the deployment's parameters form.

It does what the README's "Prefect server" section says, on a port of its own: `prefect server start`,
`zero-chatgpt serve`, `prefect deployment run zero-chatgpt/full` (the tiny preset with short training, so the
whole route runs in a few minutes), then one deliberately failing run, and photographs the pages with headless
Chromium (Debian package `chromium`; installed with apt-get when missing and running as root).

    python scripts/ui_screenshots.py --out ui-screenshots
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zero_chatgpt import processes

# Short training: the pictures are about what the UI shows, not about model quality.
SHORT_RUN = {
    "pretrain": {"optim": {"max_steps": 40, "eval_every": 10, "checkpoint_every": 20}},
    "sft": {"optim": {"max_steps": 20, "eval_every": 5}},
    "build_prefs": {"max_prompts": 24, "max_new_tokens": 12},
    "train_rm": {"optim": {"max_steps": 20, "eval_every": 5}, "judge_optim": {"max_steps": 4}},
    "ppo": {"optim": {"max_steps": 6}, "rollout_batch_size": 8, "max_new_tokens": 8, "num_eval_prompts": 8},
    "evaluate": {"max_prompts": 8, "max_questions": 8, "max_new_tokens": 8, "num_samples": 1},
    "resources": {"torch_threads": 1},
}
# A run that fails in sft: its learning rate is not finite.
FAILING_RUN = {**SHORT_RUN, "sft": {"optim": {"max_steps": 20, "lr": 1.0e9, "grad_clip": 0}}}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("headless Chromium is needed: apt-get install chromium (as root)")
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, stdout=subprocess.DEVNULL)
    if not shutil.which("chromium"):
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("chromium") or sys.exit("apt-get did not install chromium")


def deployed() -> bool:
    try:
        return bool(asyncio.run(deployment_id()))
    except Exception:  # not served yet
        return False


async def deployment_id() -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return str((await client.read_deployment_by_name("zero-chatgpt/full")).id)


async def run_and_wait(overrides: dict, timeout_s: float) -> str:
    from prefect.deployments import run_deployment

    flow_run = await run_deployment(
        "zero-chatgpt/full", parameters={"preset": "tiny", "overrides": overrides}, timeout=timeout_s
    )
    print(f"  run {flow_run.name}: {flow_run.state.name if flow_run.state else '?'}")
    return str(flow_run.id)


async def newest_artifact_id(key: str) -> str:
    """The id of the newest artifact under `key` (its page shows the content; the key's page lists versions)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return str(artifacts[0].id)


def screenshot(browser: str, url: str, path: Path, height: int = 1400) -> None:
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size=1600,{height}",
            "--virtual-time-budget=20000",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    print(f"  {path}  <- {url}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ui-screenshots", help="folder for the PNGs (default: ui-screenshots)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()

    port = processes.free_port()
    home = Path(tempfile.mkdtemp(prefix="zero-chatgpt-ui-"))
    ui, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    os.environ.update(env)
    server = processes.start_logged(
        [sys.executable, "-m", "prefect", "server", "start", "--port", str(port)], out / "server.log", env
    )
    serve = None
    try:
        processes.wait_until(lambda: processes.answers(f"{api}/health"), 180, "prefect server", server)
        serve = processes.start_logged(
            [sys.executable, "-m", "zero_chatgpt.cli", "serve", "--root", str(home / "runs")], out / "serve.log", env
        )
        processes.wait_until(deployed, 180, "deployment zero-chatgpt/full", serve)
        print("runs:")
        good = asyncio.run(run_and_wait(SHORT_RUN, args.timeout))
        failed = asyncio.run(run_and_wait(FAILING_RUN, args.timeout))
        deployment = asyncio.run(deployment_id())
        (out / "ids.json").write_text(
            json.dumps({"run": good, "failed_run": failed, "deployment": deployment}, indent=2)
        )
        print("screenshots:")
        screenshot(browser, f"{ui}/runs/flow-run/{good}", out / "run.png")
        screenshot(browser, f"{ui}/runs/flow-run/{failed}", out / "failed-run.png")
        screenshot(browser, f"{ui}/artifacts", out / "artifacts.png")
        # The newest version of each: the stage table of the failed run, the report card and progress of the other.
        for key, name, height in [
            ("run-stages", "failed-run-stage-table", 1800),
            ("zero-chatgpt-report-card", "report-card", 4200),
            ("progress-ppo", "progress-ppo", 900),
            ("zero-chatgpt-config", "config", 1800),
        ]:
            artifact = asyncio.run(newest_artifact_id(key))
            screenshot(browser, f"{ui}/artifacts/artifact/{artifact}", out / f"{name}.png", height)
        screenshot(browser, f"{ui}/deployments/deployment/{deployment}/run", out / "parameters-form.png", 4200)
    finally:
        if serve is not None:
            processes.stop_group(serve)
        processes.stop_group(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
