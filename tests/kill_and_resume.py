"""Kill a training stage with SIGKILL part-way, run it again, and compare with a run never interrupted.

A stage runs in a child process (`python -c CHILD`) as `module:function(**arguments)`, with JSON arguments.
The killed child dies at a known point, not at whatever moment a parent's poll happens to notice a file:
right after the metrics record of a chosen step reaches a chosen `metrics.jsonl`. Pick a step past a
checkpoint and before the next one, and the killed run leaves records the resumed run must drop and
rewrite, so a history with gaps or duplicates shows.

Shared by tests/test_resume_after_kill.py (sft, train_rm, ppo) and tests/test_pretrain.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CHILD_TIMEOUT_S = 600

CHILD = textwrap.dedent("""
    import importlib, json, logging, os, signal, sys
    from zero_chatgpt.model.training import MetricsLog

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    target, arguments, kill_log, kill_after_step = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    if kill_log:
        write = MetricsLog.write

        def write_then_die(self, record):
            write(self, record)
            if str(self.path) == kill_log and record["step"] == kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)

        MetricsLog.write = write_then_die
    module, function = target.split(":")
    metrics = getattr(importlib.import_module(module), function)(**arguments)
    print("METRICS " + json.dumps(metrics))
""")


def _run_child(target: str, arguments: dict[str, Any], kill_log: str = "", kill_after_step: int = 0) -> tuple[int, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),  # the target may live in a test module
        "PYTHONUNBUFFERED": "1",  # a killed child's log must not die in its stdout buffer
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, target, json.dumps(arguments), kill_log, str(kill_after_step)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    return child.returncode, child.stdout


def run_killed(target: str, arguments: dict[str, Any], metrics_log: Path, after_step: int) -> str:
    """Run `target(**arguments)` in a child that SIGKILLs itself once the record of step `after_step` is written
    to `metrics_log`; returns the child's output (stdout and stderr)."""
    returncode, output = _run_child(target, arguments, str(metrics_log), after_step)
    assert returncode == -signal.SIGKILL, f"the child was to die at step {after_step}:\n{output}"
    return output


def run_to_end(target: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run `target(**arguments)` in a child to the end; returns the metrics it returned and its output."""
    returncode, output = _run_child(target, arguments)
    assert returncode == 0, output
    return json.loads(output.split("METRICS ", 1)[1].splitlines()[0]), output


def read_history(metrics_log: Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`, in order."""
    return [json.loads(line) for line in Path(metrics_log).read_text(encoding="utf-8").splitlines()]


# A resumed run replays the uninterrupted run's ops in the same order on one thread: its figures come out
# the same, and this leaves room only for float noise, far below what a changed data order or RNG stream gives.
SAME_RUN_REL = 1e-6
# Wall-clock figures differ between any two runs.
TIMING_KEYS = frozenset({"tokens_per_s", "step_seconds", "generate_share"})


def same_figure(value: Any) -> Any:
    """What a figure of the resumed run must equal: a float up to `SAME_RUN_REL`, anything else exactly."""
    return pytest.approx(value, rel=SAME_RUN_REL, abs=1e-9) if isinstance(value, float) else value


def assert_same_history(resumed: list[dict[str, Any]], straight: list[dict[str, Any]]) -> None:
    """The resumed run logged the uninterrupted run's records: the same steps in the same order (so none is
    missing or written twice) with the same keys and figures (timings aside)."""
    assert [record["step"] for record in resumed] == [record["step"] for record in straight]
    for got, want in zip(resumed, straight):
        assert got.keys() == want.keys(), got["step"]
        for key in want.keys() - TIMING_KEYS:
            assert got[key] == same_figure(want[key]), (got["step"], key)


def assert_same_metrics(resumed: dict[str, Any], straight: dict[str, Any]) -> None:
    """A stage's returned metrics agree (where it resumed from and timings aside)."""
    assert resumed.keys() == straight.keys()
    for key in straight.keys() - TIMING_KEYS - {"resumed_from"}:
        assert resumed[key] == same_figure(straight[key]), key
