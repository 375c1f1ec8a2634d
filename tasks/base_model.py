"""Prefect task for the `base_model` stage: an existing Hugging Face model as the pipeline's input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.model.base_model import import_base_model
from zero_chatgpt.tasks.stage import StageSpec, run_stage, source_hashes, stage_task

# The fingerprint follows the model's content: `base_model` in the config carries its files' hashes (or the hub
# commit), see `tasks.stage.with_source_versions`.
BASE_MODEL = StageSpec("base_model", version="1", config_keys=("base_model",))


@stage_task(BASE_MODEL)
def base_model_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Check the configured base model and publish it as an artifact the later stages load from."""
    cfg = PipelineConfig.model_validate(config)
    return run_stage(
        BASE_MODEL,
        config,
        upstream,
        root,
        force,
        lambda out_dir: import_base_model(cfg.base_model, Path(out_dir), source_hashes(root)),
    )
