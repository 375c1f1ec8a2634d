"""Prefect task for the `pretrain` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.model.pretrain import pretrain
from zero_chatgpt.tasks.stage import StageSpec, stage_task
from zero_chatgpt.tasks.training import run_training_stage

PRETRAIN = StageSpec("pretrain", version="1", config_keys=("pretrain",), upstream=("shard", "train_tokenizer"))


@stage_task(PRETRAIN)
def pretrain_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Pretrain the LLaMA-style decoder on the token shards (resumes after a crash; several ranks if asked)."""
    cfg = PipelineConfig.model_validate(config)
    inputs = {"shard_dir": Path(upstream["shard"]["path"]), "tokenizer_dir": Path(upstream["train_tokenizer"]["path"])}
    return run_training_stage(PRETRAIN, config, upstream, root, force, pretrain, cfg.pretrain, inputs)
