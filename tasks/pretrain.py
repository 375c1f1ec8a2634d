"""Prefect task for the `pretrain` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.distributed import needs_launcher
from model.launch import launch_stage
from model.pretrain import pretrain
from tasks.stage import StageSpec, stage_logger, resume_dir, run_stage, stage_task
from zero_chatgpt.config import PipelineConfig

PRETRAIN = StageSpec("pretrain", version="1", config_keys=("pretrain",),
                     upstream=("shard", "train_tokenizer"))


@stage_task(PRETRAIN)
def pretrain_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Pretrain the LLaMA-style decoder on the token shards (resumes after a crash)."""
    cfg = PipelineConfig.model_validate(config)
    shard_dir, tokenizer_dir = Path(upstream["shard"]["path"]), Path(upstream["train_tokenizer"]["path"])
    checkpoint_dir = resume_dir(PRETRAIN, config, upstream, root)

    def body(out_dir: Path) -> dict[str, Any]:
        if needs_launcher(cfg.resources):
            # Several ranks: a launcher subprocess whose output streams into this task's log.
            return launch_stage("pretrain", cfg.pretrain, {"shard_dir": shard_dir, "tokenizer_dir": tokenizer_dir},
                                out_dir, cfg.run.seed, cfg.run.device, checkpoint_dir, cfg.resources,
                                on_line=stage_logger().info)
        return pretrain(cfg.pretrain, shard_dir, tokenizer_dir, out_dir, cfg.run.seed, cfg.run.device,
                        checkpoint_dir=checkpoint_dir)

    return run_stage(PRETRAIN, config, upstream, root, force, body)
