"""Prefect task for the `ppo` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.model.ppo.stage import ppo
from zero_chatgpt.tasks.stage import StageSpec, stage_task
from zero_chatgpt.tasks.training import run_training_stage

PPO = StageSpec("ppo", version="2", config_keys=("ppo",), upstream=("sft", "train_rm", "shard"))


@stage_task(PPO)
def ppo_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Optimise the SFT policy against the reward model with PPO (KL-penalised, resumable; several ranks if asked)."""
    cfg = PipelineConfig.model_validate(config)
    inputs = {
        "sft_dir": Path(upstream["sft"]["path"]),
        "rm_dir": Path(upstream["train_rm"]["path"]),
        "shard_dir": Path(upstream["shard"]["path"]),
    }
    return run_training_stage(PPO, config, upstream, root, force, ppo, cfg.ppo, inputs)
