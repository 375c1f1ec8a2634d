"""Prefect task for the `sft` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.sft import sft
from tasks.stage import StageSpec, resume_dir, run_stage, stage_task
from zero_chatgpt.config import PipelineConfig

SFT = StageSpec("sft", version="1", config_keys=("sft", "data.sft_sources", "data.demo"), upstream=("pretrain",))


@stage_task(SFT)
def sft_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Fine-tune the pretrained model on chat rows, loss on the response tokens only."""
    cfg = PipelineConfig.model_validate(config)
    return run_stage(SFT, config, upstream, root, force, lambda out_dir: sft(
        cfg.sft, cfg.data.sft_sources, cfg.data.demo, Path(upstream["pretrain"]["path"]), out_dir, cfg.run.seed,
        cfg.run.device, checkpoint_dir=resume_dir(SFT, config, upstream, root)))
