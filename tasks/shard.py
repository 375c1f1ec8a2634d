"""Prefect task for the `shard` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.data_process.shard import shard_corpus
from zero_chatgpt.tasks.parallel import prefect_map
from zero_chatgpt.tasks.stage import StageSpec, run_stage, stage_task

SHARD = StageSpec("shard", version="1", config_keys=("shard",), upstream=("dedup", "train_tokenizer"))


@stage_task(SHARD)
def shard_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Tokenise the deduplicated corpus into train/val `.bin` shards."""
    cfg = PipelineConfig.model_validate(config)

    def build(out_dir: Path) -> dict:
        # One pool of workers for every wave of batches, not one per wave.
        with prefect_map(cfg.resources, "shard") as parallel_map:
            return shard_corpus(
                cfg.shard,
                Path(upstream["dedup"]["path"]),
                Path(upstream["train_tokenizer"]["path"]),
                out_dir,
                cfg.run.seed,
                parallel_map,
            )

    return run_stage(SHARD, config, upstream, root, force, build)
