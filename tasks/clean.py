"""Prefect task for the `clean` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.data_process.clean import clean_corpus
from zero_chatgpt.tasks.parallel import prefect_map
from zero_chatgpt.tasks.stage import StageSpec, run_stage, stage_task

CLEAN = StageSpec("clean", version="2", config_keys=("clean", "data.sources", "data.demo"))


@stage_task(CLEAN)
def clean_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Read every text source, normalise it and drop rows by rule, keeping the rejects."""
    cfg = PipelineConfig.model_validate(config)

    def build(out_dir: Path) -> dict:
        # One pool of workers for both rounds of the stage (cleaning spans, writing parts).
        with prefect_map(cfg.resources, "clean") as parallel_map:
            return clean_corpus(cfg.data.sources, cfg.data.demo, cfg.clean, out_dir, cfg.run.seed, parallel_map)

    return run_stage(CLEAN, config, upstream, root, force, build)
