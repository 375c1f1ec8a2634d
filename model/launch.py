"""Run a training stage on several ranks: the launcher subprocess (parent side) and the entry point the
ranks run (`python -m zero_chatgpt.model.launch <spec.json>`, child side).

Parent: `launch_stage` writes a JSON spec (stage name, the stage's config section, the stage function's
other inputs, output dir, seed, device, checkpoint dir, engine), starts torchrun or the deepspeed launcher
in the caller's working directory and a new session, streams
every output line to a callback (a task passes Prefect's run logger), and kills the whole process group
if it is interrupted (exception, Ctrl-C, SIGTERM). It returns the metrics rank 0 wrote.

Child: `main` joins the process group, calls the SAME stage function a one-process run calls, with a
`parallel` argument for this rank (`model.distributed`), and exits explicitly (see `shutdown_and_exit`).
The entry point is the same on CPU (gloo, `DS_ACCELERATOR=cpu`) and GPU (NCCL, one GPU per rank).
"""

from __future__ import annotations

import atexit
import collections
import functools
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from zero_chatgpt.config import ResourcesConfig
from zero_chatgpt.metric_streams import MetricStreams, current_streams, streaming_metrics
from zero_chatgpt.model.distributed import (
    free_port,
    init_process_group,
    make_parallel,
    rank_device,
    shutdown_and_exit,
    training_engine,
)

logger = logging.getLogger(__name__)

# The CPU accelerator compiles a small communication extension on first use (~20 s): a stable cache dir
# means a machine pays for it once, not on every launch.
DEFAULT_TORCH_EXTENSIONS_DIR = Path.home() / ".cache" / "zero-chatgpt" / "torch_extensions"
RESULT_FILE = "result.json"
TAIL_LINES = 40

# Stage name -> (module, function, config class in zero_chatgpt.config). Each function has the signature
# `fn(cfg, **inputs, out_dir, seed, device, checkpoint_dir, parallel) -> metrics` and returns its metrics;
# its type annotations say how each input is read back from the JSON spec (see `decode_inputs`).
STAGE_FUNCTIONS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("zero_chatgpt.model.pretrain", "pretrain", "PretrainConfig"),
    "sft": ("zero_chatgpt.model.sft", "sft", "SftConfig"),
    "train_rm": ("zero_chatgpt.model.train_rm", "train_reward_model", "TrainRmConfig"),
    "ppo": ("zero_chatgpt.model.ppo.stage", "ppo", "PpoConfig"),
}


class LaunchError(RuntimeError):
    """The launched ranks failed; the message holds the exit code and the last lines of their output."""


# ------------------------------------------------------------------------------------------- parent side


def launcher_command(resources: ResourcesConfig, spec_path: Path, master_port: int) -> list[str]:
    """The command that starts `resources.ranks` ranks per node, each running `-m zero_chatgpt.model.launch spec`."""
    master_addr = resources.master_addr or "127.0.0.1"
    if resources.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(resources.ranks),
            "--nnodes",
            str(resources.nodes),
            "--node_rank",
            str(resources.node_rank),
            "--master_addr",
            master_addr,
            "--master_port",
            str(master_port),
            *resources.launcher_args,
            "-m",
            "zero_chatgpt.model.launch",
            str(spec_path),
        ]
    command = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(resources.ranks),
        "--num_nodes",
        str(resources.nodes),
        "--master_addr",
        master_addr,
        "--master_port",
        str(master_port),
        "--no_local_rank",  # ranks read LOCAL_RANK from the environment, as under torchrun
    ]
    if resources.hostfile:
        command += ["--hostfile", resources.hostfile]
    elif resources.nodes > 1:
        # No hostfile: the pipeline is started on every node, each launching only its own ranks.
        command += ["--no_ssh", "--node_rank", str(resources.node_rank)]
    return command + [*resources.launcher_args, "--module", "zero_chatgpt.model.launch", str(spec_path)]


def launcher_env(device: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The launcher's environment: unbuffered output, no progress bars, the CPU
    accelerator for CPU runs, one OpenMP thread per rank unless set, and a stable extension cache."""
    import torch

    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["TQDM_DISABLE"] = "1"  # the core's log lines stream well; carriage-return bars do not
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_TORCH_EXTENSIONS_DIR))
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu:
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def run_launcher(
    command: list[str], env: dict[str, str], on_line: Callable[[str], Any], cwd: Path | None = None
) -> int:
    """Run `command` in a new session, passing each output line (stdout and stderr) to `on_line`.

    On any exception (including KeyboardInterrupt, and SIGTERM, which is turned into one while this runs
    in the main thread) the whole process group is killed: the launcher and every rank it started.
    Returns the exit code. Raises `LaunchError` with the output's tail when it is not 0.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    previous_handler = _raise_on_sigterm()
    # Off the main thread (a Prefect worker thread) no signal handler can be installed; when the process
    # then exits on a cancellation, this still takes the ranks down with it.
    kill_at_exit = functools.partial(_kill_group, process, 2.0)
    atexit.register(kill_at_exit)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)
        code = process.wait()
    except BaseException:
        _kill_group(process)
        raise
    finally:
        atexit.unregister(kill_at_exit)
        if previous_handler is not _NOT_INSTALLED:
            signal.signal(signal.SIGTERM, previous_handler)
    if code != 0:
        raise LaunchError(f"launcher exited with code {code}; last output:\n" + "\n".join(tail))
    return code


class _Terminated(KeyboardInterrupt):
    """SIGTERM received while the launcher ran (a cancelled flow run)."""


_NOT_INSTALLED = object()


def _raise_on_sigterm():
    """Make SIGTERM raise in the main thread; returns the previous handler (`_NOT_INSTALLED` off the main
    thread, where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED

    def handler(signum, frame):
        raise _Terminated(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def _kill_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the launcher's process group, then SIGKILL what is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            # The launcher may be gone while ranks linger in the group: one more SIGKILL to the group.
            if sig == signal.SIGTERM:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def encode_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The stage function's inputs as JSON values: `Path`s made absolute (ranks may start elsewhere),
    pydantic models (config sections, source lists) dumped, plain values as they are."""

    def encode(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value.resolve())
        if isinstance(value, (list, tuple)):
            return [encode(item) for item in value]
        return to_jsonable_python(value)

    return {name: encode(value) for name, value in inputs.items()}


def decode_inputs(stage_fn: Callable[..., Any], encoded: dict[str, Any]) -> dict[str, Any]:
    """Inputs from the spec, validated against `stage_fn`'s annotations: a `Path` input comes back as a
    `Path`, a `list[SftSource]` as source objects, and a value that does not fit is an error naming it."""
    hints = typing.get_type_hints(stage_fn)
    decoded = {}
    for name, value in encoded.items():
        if name not in hints:
            raise TypeError(f"{stage_fn.__module__}.{stage_fn.__name__} has no annotated parameter {name!r}")
        decoded[name] = TypeAdapter(hints[name]).validate_python(value)
    return decoded


def launch_stage(
    stage: str,
    section: BaseModel,
    inputs: dict[str, Any],
    out_dir: str | Path,
    seed: int,
    device: str,
    checkpoint_dir: str | Path,
    resources: ResourcesConfig,
    on_line: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Run training stage `stage` on `resources.ranks` ranks per node through the launcher; return its metrics.

    `section` is the stage's config section (e.g. `PretrainConfig`); `inputs` are the stage function's other
    keyword arguments: input dirs as `Path`s (`{"shard_dir": ..., "tokenizer_dir": ...}` for pretrain) and any
    JSON-able values or pydantic objects (sft's `sft_sources` and `demo`), see `encode_inputs`. Output lines
    go to `on_line` (default: this module's logger). The ranks run in this process's working directory, so
    relative paths inside config values (source globs) mean the same there; all paths must be visible to
    every node of a multi-node job.
    """
    if stage not in STAGE_FUNCTIONS:
        raise ValueError(f"stage {stage!r} cannot run through the launcher; known: {sorted(STAGE_FUNCTIONS)}")
    out_dir, checkpoint_dir = Path(out_dir).resolve(), Path(checkpoint_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Beside the output (not in it: the artifact keeps only the stage's files), on the same filesystem.
    work_dir = Path(tempfile.mkdtemp(prefix=f".launch-{stage}-", dir=out_dir.parent))
    try:
        spec = {
            "stage": stage,
            "config": section.model_dump(mode="json"),
            "inputs": encode_inputs(inputs),
            "out_dir": str(out_dir),
            "seed": seed,
            "device": device,
            "checkpoint_dir": str(checkpoint_dir),
            "engine": training_engine(resources),
            "zero_stage": resources.zero_stage,
            "result_path": str(work_dir / RESULT_FILE),
            "metric_streams": streams.to_json() if (streams := current_streams()) else None,
        }
        spec_path = work_dir / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        port = resources.master_port or free_port()
        command = launcher_command(resources, spec_path, port)
        logger.info(
            "launching %s on %d rank(s) x %d node(s) (%s, %s engine, ZeRO %d): %s",
            stage,
            resources.ranks,
            resources.nodes,
            resources.launcher,
            spec["engine"],
            resources.zero_stage,
            " ".join(command),
        )
        run_launcher(command, launcher_env(device), on_line or (lambda line: logger.info("%s", line)), cwd=Path.cwd())
        result_path = work_dir / RESULT_FILE
        if not result_path.is_file():
            if resources.nodes > 1 and resources.node_rank != 0:
                return {}  # rank 0 (and its metrics) live on node 0
            raise LaunchError(f"{stage}: the launcher exited 0 but rank 0 wrote no {result_path.name}")
        return json.loads(result_path.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


# -------------------------------------------------------------------------------------------- child side


def run_rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Join the process group and run the spec's stage on this rank; rank 0 writes the metrics file."""
    module_name, function_name, config_class = STAGE_FUNCTIONS[spec["stage"]]
    stage_fn = getattr(importlib.import_module(module_name), function_name)
    config_module = importlib.import_module("zero_chatgpt.config")
    cfg = getattr(config_module, config_class).model_validate(spec["config"])

    info = init_process_group(spec["engine"], rank_device(spec["device"], int(os.environ.get("LOCAL_RANK", 0))))
    device = rank_device(spec["device"], info.local_rank)
    parallel = make_parallel(spec["engine"], info, int(spec["zero_stage"]))
    # Rank 0 logs the metrics, so it alone streams them where the parent stage would have.
    streams = MetricStreams.from_json(spec.get("metric_streams")) if info.is_main_process else None
    with streaming_metrics(streams):
        metrics = stage_fn(
            cfg,
            **decode_inputs(stage_fn, spec["inputs"]),
            out_dir=Path(spec["out_dir"]),
            seed=int(spec["seed"]),
            device=device,
            checkpoint_dir=Path(spec["checkpoint_dir"]),
            parallel=parallel,
        )
    if info.is_main_process:
        metrics = {**metrics, "ranks": info.world_size, "engine": spec["engine"], "zero_stage": spec["zero_stage"]}
        Path(spec["result_path"]).write_text(json.dumps(metrics), encoding="utf-8")
    return metrics


def _configure_rank_logging(rank: int) -> None:
    """Rank 0 logs at INFO; other ranks only warnings (they would repeat rank 0's lines)."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Entry point of every rank: `python -m zero_chatgpt.model.launch <spec.json>`. Never returns."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m zero_chatgpt.model.launch <spec.json> (written by launch_stage)", file=sys.stderr)
        shutdown_and_exit(2)
    _configure_rank_logging(int(os.environ.get("RANK", 0)))
    code = 1
    try:
        run_rank(json.loads(Path(args[0]).read_text(encoding="utf-8")))
        code = 0
    except BaseException:  # noqa: BLE001 - logged with its traceback, then the exit code says it failed
        logger.exception("rank %s failed", os.environ.get("RANK", "0"))
    finally:
        shutdown_and_exit(code)


if __name__ == "__main__":
    main()
