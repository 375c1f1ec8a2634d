"""Prefect task for the `train_rm` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.distributed import needs_launcher
from model.launch import launch_stage
from model.reward import train_reward_model
from tasks.stage import StageSpec, resume_dir, run_stage, stage_logger, stage_task
from zero_chatgpt.config import PipelineConfig

TRAIN_RM = StageSpec("train_rm", version="1", config_keys=("train_rm",), upstream=("sft", "build_prefs"))


@stage_task(TRAIN_RM)
def train_rm_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Train the scalar-head reward model on the preference pairs."""
    cfg = PipelineConfig.model_validate(config)
    sft_dir, prefs_dir = Path(upstream["sft"]["path"]), Path(upstream["build_prefs"]["path"])
    checkpoint_dir = resume_dir(TRAIN_RM, config, upstream, root)

    def body(out_dir: Path) -> dict[str, Any]:
        if needs_launcher(cfg.resources):
            # Several ranks: a launcher subprocess whose output streams into this task's log.
            return launch_stage("train_rm", cfg.train_rm, {"sft_dir": sft_dir, "prefs_dir": prefs_dir}, out_dir,
                                cfg.run.seed, cfg.run.device, checkpoint_dir, cfg.resources,
                                on_line=stage_logger().info)
        return train_reward_model(cfg.train_rm, sft_dir, prefs_dir, out_dir, cfg.run.seed, cfg.run.device,
                                  checkpoint_dir=checkpoint_dir)

    return run_stage(TRAIN_RM, config, upstream, root, force, body)
