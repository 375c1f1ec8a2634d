"""Prefect task for the `pretrain` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.pretrain import pretrain
from tasks.stage import StageSpec, resume_dir, run_stage, stage_task
from zero_chatgpt.config import PipelineConfig

PRETRAIN = StageSpec("pretrain", version="1", config_keys=("pretrain",),
                     upstream=("shard", "train_tokenizer"))


@stage_task(PRETRAIN)
def pretrain_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Pretrain the LLaMA-style decoder on the token shards (resumes after a crash)."""
    cfg = PipelineConfig.model_validate(config)
    return run_stage(PRETRAIN, config, upstream, root, force, lambda out_dir: pretrain(
        cfg.pretrain, Path(upstream["shard"]["path"]), Path(upstream["train_tokenizer"]["path"]), out_dir,
        cfg.run.seed, cfg.run.device, checkpoint_dir=resume_dir(PRETRAIN, config, upstream, root)))
