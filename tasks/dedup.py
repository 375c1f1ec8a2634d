"""Prefect task for the `dedup` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.data_process.dedup import dedup_corpus
from zero_chatgpt.tasks.parallel import prefect_map
from zero_chatgpt.tasks.stage import StageSpec, run_stage, stage_task

DEDUP = StageSpec("dedup", version="2", config_keys=("dedup",), upstream=("clean",))


@stage_task(DEDUP)
def dedup_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Drop exact and MinHash near-duplicate documents, keeping one per cluster."""
    cfg = PipelineConfig.model_validate(config)
    return run_stage(
        DEDUP,
        config,
        upstream,
        root,
        force,
        lambda out_dir: dedup_corpus(
            cfg.dedup, Path(upstream["clean"]["path"]), out_dir, cfg.run.seed, prefect_map(cfg.resources, "dedup")
        ),
    )
