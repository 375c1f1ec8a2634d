"""Prefect task for the `train_rm` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, model_loading, stage_task
from zero_chatgpt.tasks.training import run_training_stage

# The base model is an optional upstream: the flow passes it when one is configured (`train_rm.init: base`).
TRAIN_RM = StageSpec(
    "train_rm", version="6", config_keys=("train_rm", "base_model.dtype"), upstream=("sft", "build_prefs")
)


@stage_task(TRAIN_RM)
def train_rm_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Train the scalar-head reward model (and the independent judge) on the preference pairs."""
    # Imported on call: it loads torch/transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.train_rm import train_reward_model

    cfg = PipelineConfig.model_validate(config)
    base = upstream.get("base_model")
    inputs = {
        "sft_dir": Path(upstream["sft"]["path"]),
        "prefs_dir": Path(upstream["build_prefs"]["path"]),
        "base_dir": Path(base["path"]) if base else None,
        **model_loading(cfg),
    }
    return run_training_stage(TRAIN_RM, config, upstream, root, force, train_reward_model, cfg.train_rm, inputs)
