"""Prefect task for the `train_tokenizer` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.config import PipelineConfig
from zero_chatgpt.tasks.parallel import prefect_map
from zero_chatgpt.tasks.stage import StageSpec, run_stage, stage_task

TRAIN_TOKENIZER = StageSpec("train_tokenizer", version="1", config_keys=("train_tokenizer",), upstream=("dedup",))


@stage_task(TRAIN_TOKENIZER)
def train_tokenizer_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Train the sentencepiece BPE tokenizer and export it as a Hugging Face fast tokenizer."""
    # Imported on call: it loads transformers, which the flow (and its first stages) must not wait for.
    from zero_chatgpt.tokenizer.train import train_tokenizer

    cfg = PipelineConfig.model_validate(config)

    def build(out_dir: Path) -> dict:
        # Sampling reads the parts on the data workers; sentencepiece then trains here on its own threads.
        with prefect_map(cfg.resources, "train_tokenizer") as parallel_map:
            corpus = Path(upstream["dedup"]["path"])
            return train_tokenizer(cfg.train_tokenizer, corpus, out_dir, cfg.run.seed, parallel_map=parallel_map)

    return run_stage(TRAIN_TOKENIZER, config, upstream, root, force, build)
