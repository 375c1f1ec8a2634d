"""Prefect task for the `ppo` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, model_loading, stage_task
from zero_chatgpt.tasks.training import run_training_stage

# The token shards are an optional upstream: PPO-ptx reads them, and a base model aligned without continued
# pretraining has none (the stage then refuses ptx_coef > 0, naming the key).
PPO = StageSpec("ppo", version="3", config_keys=("ppo", "base_model.dtype"), upstream=("sft", "train_rm"))


@stage_task(PPO)
def ppo_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Optimise the SFT policy against the reward model with PPO (KL-penalised, resumable; several ranks if asked)."""
    # Imported on call: it loads torch/transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.ppo.stage import ppo

    cfg = PipelineConfig.model_validate(config)
    shard = upstream.get("shard")
    inputs = {
        "sft_dir": Path(upstream["sft"]["path"]),
        "rm_dir": Path(upstream["train_rm"]["path"]),
        "shard_dir": Path(shard["path"]) if shard else None,
        **model_loading(cfg),
    }
    return run_training_stage(PPO, config, upstream, root, force, ppo, cfg.ppo, inputs)
