"""model.generation: token-exact against HF greedy generate, EOS stopping and masks, seeded sampling, top-p."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from zero_chatgpt.model.generation import (
    left_pad,
    next_token_distribution_filter,
    positions_from_mask,
    response_texts,
    sample,
)

VOCAB, PAD_ID, EOS_ID = 64, 2, 1
PROMPTS = [[5, 9, 11, 20, 7, 33], [40, 41], [12, 30, 17, 8]]


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        bos_token_id=None,
    )
    net = LlamaForCausalLM(config)
    # Sharpen the random model's output so greedy choices are not near-ties that float noise could flip.
    with torch.no_grad():
        net.lm_head.weight.mul_(8.0)
    return net.eval()


def test_left_pad_and_positions():
    ids, mask = left_pad([[7, 8, 9], [4]], pad_id=PAD_ID)
    assert ids.tolist() == [[7, 8, 9], [PAD_ID, PAD_ID, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        left_pad([[1], []], pad_id=PAD_ID)


def test_greedy_matches_hf_generate(model):
    max_new_tokens = 12
    # An EOS id the random model never prefers, so no row stops early and all tokens are compared.
    never = VOCAB - 1
    rollout = sample(model, PROMPTS, max_new_tokens, eos_id=never, pad_id=PAD_ID, temperature=0.0)
    ids, mask = left_pad(PROMPTS, PAD_ID)
    expected = model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            eos_token_id=never,
            pad_token_id=PAD_ID,
        ),
    )
    assert rollout.sequences.shape == (3, 6 + max_new_tokens)
    assert torch.equal(rollout.sequences, expected)
    assert rollout.prompt_length == 6
    assert rollout.response_mask.all()
    assert torch.equal(rollout.attention_mask[:, :6], mask)


def test_padded_row_equals_unpadded_row(model):
    batched = sample(model, PROMPTS, 8, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
    alone = sample(model, [PROMPTS[1]], 8, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
    assert torch.equal(batched.responses[1], alone.responses[0])


def test_stops_at_eos_and_masks_after_it(model):
    # Make the greedy choice after the first generated token EOS for one row: use that row's own first token.
    free = sample(model, PROMPTS, 6, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
    eos = int(free.responses[0, 1])  # row 0 emits this at step 2
    rollout = sample(model, PROMPTS, 6, eos_id=eos, pad_id=PAD_ID, temperature=0.0)
    row = rollout.responses[0]
    stop = int((row == eos).nonzero()[0])
    assert stop <= 1
    assert rollout.response_mask[0, : stop + 1].all()
    assert not rollout.response_mask[0, stop + 1 :].any()
    assert (row[stop + 1 :] == PAD_ID).all()
    assert not rollout.attention_mask[0, rollout.prompt_length + stop + 1 :].any()
    # The attention mask over generated columns is the response mask.
    assert torch.equal(rollout.attention_mask[:, rollout.prompt_length :].bool(), rollout.response_mask)


def test_ends_early_when_all_rows_finish(model):
    first = sample(model, [PROMPTS[0]], 1, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
    eos = int(first.responses[0, 0])
    rollout = sample(model, [PROMPTS[0]], 10, eos_id=eos, pad_id=PAD_ID, temperature=0.0)
    assert rollout.responses.shape == (1, 1)
    assert rollout.response_mask.tolist() == [[True]]


def test_seeded_generator_reproduces_samples(model):
    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sample(
            model, PROMPTS, 10, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=1.5, generator=generator
        ).sequences

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_tiny_top_p_is_greedy(model):
    greedy = sample(model, PROMPTS, 10, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
    generator = torch.Generator().manual_seed(0)
    nucleus = sample(
        model, PROMPTS, 10, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=2.0, top_p=1e-6, generator=generator
    )
    assert torch.equal(greedy.sequences, nucleus.sequences)


def test_top_p_keeps_the_smallest_covering_set():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = next_token_distribution_filter(logits, temperature=1.0, top_p=0.7)
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(next_token_distribution_filter(logits, 1.0, 1.0), logits.exp())
    # Higher temperature flattens the distribution.
    hot = next_token_distribution_filter(logits, temperature=5.0, top_p=1.0)
    assert hot[0, 3] > 0.05 and hot[0, 0] < 0.5


def test_sample_restores_training_mode(model):
    model.train()
    try:
        sample(model, PROMPTS, 2, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
        assert model.training
    finally:
        model.eval()


class _CharTokenizer:
    """Just enough of a tokenizer for `response_texts`: one id per character."""

    special = {PAD_ID, EOS_ID}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(96 + i) for i in ids if not (skip_special_tokens and i in self.special))


def test_response_texts_drop_eos_and_padding(model):
    free = sample(model, [PROMPTS[0]], 3, eos_id=VOCAB - 1, pad_id=PAD_ID, temperature=0.0)
    eos = int(free.responses[0, 1])
    rollout = sample(model, PROMPTS, 5, eos_id=eos, pad_id=PAD_ID, temperature=0.0)
    tokenizer = _CharTokenizer()
    tokenizer.special = {PAD_ID, eos}
    texts = response_texts(tokenizer, rollout)
    row = rollout.responses[0].tolist()
    upto_eos = row[: row.index(eos) + 1] if eos in row else row
    assert texts[0] == tokenizer.decode(upto_eos, skip_special_tokens=True)
    assert len(upto_eos) <= 2  # row 0 stops by its second token
    assert len(texts) == 3
