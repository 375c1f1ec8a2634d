"""Prefect task for the `ppo` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.ppo.stage import ppo
from tasks.stage import StageSpec, resume_dir, run_stage, stage_task
from zero_chatgpt.config import PipelineConfig

PPO = StageSpec("ppo", version="1", config_keys=("ppo",), upstream=("sft", "train_rm", "shard"))


@stage_task(PPO)
def ppo_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Optimise the SFT policy against the reward model with PPO (KL-penalised, resumable)."""
    cfg = PipelineConfig.model_validate(config)
    return run_stage(PPO, config, upstream, root, force, lambda out_dir: ppo(
        cfg.ppo, Path(upstream["sft"]["path"]), Path(upstream["train_rm"]["path"]), out_dir, cfg.run.seed,
        cfg.run.device, shard_dir=Path(upstream["shard"]["path"]),
        checkpoint_dir=resume_dir(PPO, config, upstream, root)))
