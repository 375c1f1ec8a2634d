"""Weights damaged after they were written: truncated files rebuild their stage, overwritten ones (same size, so
the default check passes) stop the next load with one line naming the dir, never train as NaN."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tests.foreign_models import tiny_config
from zero_chatgpt.artifacts import build_artifact
from zero_chatgpt.model.base_model import BaseModelError, load_causal_lm
from zero_chatgpt.model.reward_model import load_reward_model


def save_tiny_model(out_dir: Path) -> dict:
    config = tiny_config("llama", vocab_size=64)
    config.pad_token_id = 0
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    return {"layers": config.num_hidden_layers}


def overwrite_middle(path: Path, size: int) -> None:
    """`size` bytes of 0xFF (a NaN bit pattern in every float dtype) written over the middle of `path`."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + size] = b"\xff" * min(size, len(data) - start)
    path.write_bytes(bytes(data))


def build(root: Path, calls: list) -> Path:
    def body(out_dir):
        calls.append(out_dir)
        return save_tiny_model(out_dir)

    return Path(build_artifact("sft", "1", {}, {}, 0, root, body).path)


def test_truncated_weights_rebuild_the_stage(tmp_path):
    calls = []
    weights = build(tmp_path, calls) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rebuilt = build(tmp_path, calls)
    assert len(calls) == 2
    assert load_causal_lm(rebuilt).config.num_hidden_layers == 2


@pytest.mark.parametrize("loader", [load_causal_lm, lambda path: load_reward_model(path, pad_id=0)])
def test_overwritten_weights_fail_the_load_naming_the_dir(tmp_path, loader):
    model_dir = build(tmp_path, [])
    overwrite_middle(model_dir / "model.safetensors", 4096)
    with pytest.raises(BaseModelError) as caught:
        loader(model_dir)
    message = str(caught.value)
    assert str(model_dir) in message and "NaN or inf" in message and "verify" in message
    assert "\n" not in message
