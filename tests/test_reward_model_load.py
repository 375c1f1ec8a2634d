"""Loading a reward model from a causal LM: the new head is expected and silent, any other gap is a warning."""

from __future__ import annotations

import logging

from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tests.foreign_models import tiny_config
from zero_chatgpt.model.reward_model import load_reward_model


def save_tiny_causal_lm(path):
    config = tiny_config("llama", vocab_size=64)
    config.pad_token_id = 0
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_the_new_score_head_loads_without_transformers_load_report(tmp_path, capfd, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_reward_model(save_tiny_causal_lm(tmp_path / "lm"), pad_id=0)
    out, err = capfd.readouterr()
    assert model.score.out_features == 1
    assert "LOAD REPORT" not in out + err + caplog.text
    assert not [record for record in caplog.records if record.name.startswith("zero_chatgpt")]


def test_a_backbone_weight_missing_from_the_checkpoint_is_named_in_a_warning(tmp_path, caplog):
    path = save_tiny_causal_lm(tmp_path / "lm")
    weights = load_file(path / "model.safetensors")
    dropped = next(key for key in weights if key.endswith("mlp.up_proj.weight"))
    save_file({key: value for key, value in weights.items() if key != dropped}, path / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="zero_chatgpt.model.reward_model"):
        load_reward_model(path, pad_id=0)
    assert "initialised at random" in caplog.text and dropped.removeprefix("model.") in caplog.text
