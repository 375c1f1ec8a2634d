"""The base-model routes through the flow: which stages run, and what swapping the base model reruns."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterLevel
from prefect.logging.handlers import APILogWorker

from tests.foreign_models import tiny_causal_lm
from tests.foreign_tokenizers import llama3_style_tokenizer
from zero_chatgpt.cli import main

pytestmark = pytest.mark.usefixtures("prefect_api")

CONTINUE = [
    "base_model.continue_pretraining=true",
    # Longer than the base's 128 positions: pretrain warns (a library logger) and uses 128.
    "pretrain.model.max_seq_len=256",
    "pretrain.optim.max_steps=4",
    "pretrain.optim.eval_every=2",
    "pretrain.optim.checkpoint_every=4",
    "pretrain.optim.eval_batches=2",
]


def make_base(path: Path, seed: int) -> Path:
    tokenizer = llama3_style_tokenizer()
    tiny_causal_lm("llama", vocab_size=len(tokenizer), seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run(root: Path, base: Path, *settings: str, until: str) -> dict[str, str]:
    options = [f"--set={s}" for s in (f"base_model.path={base}", *settings)]
    assert main(["run", "--preset", "tiny", "--root", str(root), "--until", until, *options]) == 0
    latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
    return {stage: entry["status"] for stage, entry in latest.items()}


def test_swapping_the_base_model_reruns_the_stages_after_it_and_nothing_before(tmp_path):
    first, second = make_base(tmp_path / "base-a", seed=0), make_base(tmp_path / "base-b", seed=1)
    root = tmp_path / "root"
    # Continued pretraining: the corpus is tokenised with the base's own tokenizer; no tokenizer is trained.
    assert run(root, first, *CONTINUE, until="pretrain") == dict.fromkeys(
        ["base_model", "clean", "dedup", "shard", "pretrain"], "ran"
    )
    pretrain = json.loads((root / "latest.json").read_text())["pretrain"]["path"]
    metrics = json.loads((Path(pretrain) / "manifest.json").read_text())["metrics"]
    assert metrics["val_loss"] < metrics["base_val_loss"]  # it continued the base, and learned
    assert (root / ".flow-runs").is_dir() and not list((root / ".flow-runs").iterdir())  # a finished run forgets itself
    APILogWorker.drain_all(timeout=10)  # logs go to the API in batches
    with get_client(sync_client=True) as client:  # library warnings reach the run's logs in the Prefect API
        warnings = client.read_logs(log_filter=LogFilter(level=LogFilterLevel(ge_=logging.WARNING)))
    assert any("exceeds the base model's context" in log.message for log in warnings), [w.message for w in warnings]

    assert run(root, first, *CONTINUE, until="pretrain") == dict.fromkeys(
        ["base_model", "clean", "dedup", "shard", "pretrain"], "cached"
    )
    assert run(root, second, *CONTINUE, until="pretrain") == {
        "base_model": "ran",
        "clean": "cached",
        "dedup": "cached",
        "shard": "ran",
        "pretrain": "ran",
    }


def test_a_stage_off_the_route_is_refused_by_name(tmp_path):
    base = make_base(tmp_path / "base", seed=0)
    code = main(["run", "--preset", "tiny", "--root", str(tmp_path / "r"), "--until", "pretrain",
                 f"--set=base_model.path={base}"])  # fmt: skip
    assert code == 2
