"""LoRA on every family users align: adapters land on the block's linear layers (not the output layer), training
changes only them, and the merged export is a plain model with the adapted model's outputs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.foreign_models import FAMILIES, tiny_causal_lm, tiny_config
from zero_chatgpt.model.lora import merged, trainable_parameter_count, with_lora


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_adapters_only_and_merges_into_a_plain_causal_lm(family, tmp_path):
    model = with_lora(tiny_causal_lm(family), rank=4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable), sorted(trainable)[:5]
    assert not any("lm_head" in name for name in trainable)
    assert trainable_parameter_count(model) < sum(p.numel() for p in model.parameters()) / 4

    ids = torch.randint(0, 320, (2, 12))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    plain = merged(model)
    plain.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, adapted, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_on_a_scalar_head_keeps_the_head_trainable(family):
    config = tiny_config(family, 320)
    config.num_labels = 1
    config.pad_token_id = 0
    torch.manual_seed(0)
    model = with_lora(AutoModelForSequenceClassification.from_config(config), rank=4, task_type="SEQ_CLS")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in name for name in trainable)
    assert any("score" in name for name in trainable), trainable  # the new head learns in full


def test_unknown_target_modules_name_the_key():
    with pytest.raises(ValueError, match="lora.target_modules"):
        with_lora(tiny_causal_lm("gpt2"), rank=4, target_modules=["q_proj"])
