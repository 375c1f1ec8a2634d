"""Prefect task for the `evaluate` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.model.evaluate import evaluate
from zero_chatgpt.tasks.stage import StageSpec, run_stage, stage_task

EVALUATE = StageSpec(
    "evaluate", version="3", config_keys=("evaluate", "data.demo"), upstream=("pretrain", "sft", "train_rm", "ppo")
)


@stage_task(EVALUATE)
def evaluate_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Judge PPO against SFT (train_rm's two reward models), score facts, text statistics and likelihood tasks."""
    cfg = PipelineConfig.model_validate(config)
    dirs = {name: Path(upstream[name]["path"]) for name in EVALUATE.upstream}
    return run_stage(
        EVALUATE,
        config,
        upstream,
        root,
        force,
        lambda out_dir: evaluate(
            cfg.evaluate,
            cfg.data.demo,
            dirs["pretrain"],
            dirs["sft"],
            dirs["train_rm"],
            dirs["ppo"],
            out_dir,
            cfg.run.seed,
            cfg.run.device,
        ),
    )
