"""Prefect task for the `build_prefs` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.stage import StageSpec, model_loading, run_stage, stage_task

BUILD_PREFS = StageSpec(
    "build_prefs",
    version="4",
    config_keys=("build_prefs", "data.pref_sources", "data.demo", "base_model.dtype"),
    upstream=("sft",),
)


@stage_task(BUILD_PREFS)
def build_prefs_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Pair reference answers (chosen) with the SFT model's own samples (rejected), plus user pairs (or user pairs
    alone: `samples_per_prompt: 0`); split them into training and held-out pairs and mine extra negatives for the
    training side."""
    # Imported on call: it loads torch/transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.model.build_prefs import build_prefs

    cfg = PipelineConfig.model_validate(config)
    return run_stage(
        BUILD_PREFS,
        config,
        upstream,
        root,
        force,
        lambda out_dir: build_prefs(
            cfg.build_prefs,
            cfg.data.pref_sources,
            cfg.data.demo,
            Path(upstream["sft"]["path"]),
            out_dir,
            cfg.run.seed,
            cfg.run.device,
            **model_loading(cfg),
        ),
    )
