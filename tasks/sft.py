"""Prefect task for the `sft` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.distributed import needs_launcher
from model.launch import launch_stage
from model.sft import sft
from tasks.stage import StageSpec, resume_dir, run_stage, stage_logger, stage_task
from zero_chatgpt.config import PipelineConfig

SFT = StageSpec("sft", version="1", config_keys=("sft", "data.sft_sources", "data.demo"), upstream=("pretrain",))


@stage_task(SFT)
def sft_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Fine-tune the pretrained model on chat rows, loss on the response tokens only."""
    cfg = PipelineConfig.model_validate(config)
    pretrain_dir = Path(upstream["pretrain"]["path"])
    checkpoint_dir = resume_dir(SFT, config, upstream, root)

    def body(out_dir: Path) -> dict[str, Any]:
        if needs_launcher(cfg.resources):
            # Several ranks: a launcher subprocess whose output streams into this task's log.
            inputs = {"sft_sources": cfg.data.sft_sources, "demo": cfg.data.demo, "pretrain_dir": pretrain_dir}
            return launch_stage("sft", cfg.sft, inputs, out_dir, cfg.run.seed, cfg.run.device, checkpoint_dir,
                                cfg.resources, on_line=stage_logger().info)
        return sft(cfg.sft, cfg.data.sft_sources, cfg.data.demo, pretrain_dir, out_dir, cfg.run.seed,
                   cfg.run.device, checkpoint_dir=checkpoint_dir)

    return run_stage(SFT, config, upstream, root, force, body)
