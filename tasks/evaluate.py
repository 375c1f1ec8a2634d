"""Prefect task for the `evaluate` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, model_loading, run_stage, stage_task

# `pretrain` is the model SFT started from: the pretrain artifact, or the base_model one when pretraining is skipped.
EVALUATE = StageSpec(
    "evaluate",
    version="4",
    config_keys=("evaluate", "data.demo", "base_model.dtype"),
    upstream=("pretrain", "sft", "train_rm", "ppo"),
)


@stage_task(EVALUATE)
def evaluate_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Judge PPO against SFT (train_rm's two reward models), exact match on qa_sources, text statistics and
    likelihood tasks."""
    # Imported on call: it loads torch/transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.evaluate import evaluate

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
            **model_loading(cfg),
        ),
    )
