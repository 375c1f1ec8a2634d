"""Prefect task for the `sft` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, model_loading, stage_task
from zero_chatgpt.tasks.training import run_training_stage

SFT = StageSpec(
    "sft",
    version="5",
    config_keys=("sft", "data.sft_sources", "data.demo", "base_model.dtype"),
    upstream=("pretrain",),
)


@stage_task(SFT)
def sft_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Fine-tune the pretrained model on chat conversations, loss on the assistant's tokens only."""
    # Imported on call: it loads torch/transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.sft import sft

    cfg = PipelineConfig.model_validate(config)
    inputs = {
        "sft_sources": cfg.data.sft_sources,
        "demo": cfg.data.demo,
        "pretrain_dir": Path(upstream["pretrain"]["path"]),
        **model_loading(cfg),
    }
    return run_training_stage(SFT, config, upstream, root, force, sft, cfg.sft, inputs)
