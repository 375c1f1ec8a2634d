"""Prefect task for the `pretrain` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, model_loading, stage_task
from zero_chatgpt.tasks.training import run_training_stage

# `base_model` joins the upstream for continued pretraining: the model then starts from its weights.
PRETRAIN = StageSpec("pretrain", version="2", config_keys=("pretrain",), upstream=("shard", "train_tokenizer"))


@stage_task(PRETRAIN)
def pretrain_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Pretrain the LLaMA-style decoder on the token shards, or continue pretraining a base model on them
    (resumes after a crash; several ranks if asked)."""
    # Imported on call: it loads torch/transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.pretrain import pretrain

    cfg = PipelineConfig.model_validate(config)
    inputs = {"shard_dir": Path(upstream["shard"]["path"]), "tokenizer_dir": Path(upstream["train_tokenizer"]["path"])}
    if upstream.get("base_model") is not None:
        inputs.update(init_dir=Path(upstream["base_model"]["path"]), **model_loading(cfg))
    return run_training_stage(PRETRAIN, config, upstream, root, force, pretrain, cfg.pretrain, inputs)
