"""What the training-stage tasks share: run the stage function here on one rank, or on many through the launcher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, resume_dir, run_stage, stage_logger


def run_training_stage(
    spec: StageSpec,
    config: dict[str, Any],
    upstream: dict[str, dict],
    root: str,
    force: bool,
    stage_fn: Callable[..., dict[str, Any]],
    section: BaseModel,
    inputs: dict[str, Any],
) -> dict[str, Any]:
    """Build a training stage's artifact with `stage_fn(section, **inputs, out_dir=, seed=, device=,
    checkpoint_dir=)`: in this process, or — when `resources` asks for several ranks — through the launcher,
    whose ranks call the same function and whose output streams into this task's log."""
    # Imported on call: they load torch, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.distributed import needs_launcher
    from zero_chatgpt.model.launch import launch_stage

    cfg = PipelineConfig.model_validate(config)
    checkpoint_dir = resume_dir(spec, config, upstream, root)

    def body(out_dir: Path) -> dict[str, Any]:
        if needs_launcher(cfg.resources):
            return launch_stage(
                spec.name,
                section,
                inputs,
                out_dir,
                cfg.run.seed,
                cfg.run.device,
                checkpoint_dir,
                cfg.resources,
                on_line=stage_logger().info,
            )
        return stage_fn(
            section, **inputs, out_dir=out_dir, seed=cfg.run.seed, device=cfg.run.device, checkpoint_dir=checkpoint_dir
        )

    return run_stage(spec, config, upstream, root, force, body)
