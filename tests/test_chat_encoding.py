"""Loss masks under foreign chat templates: every supervised token is the assistant's, the first reply token and
the end-of-turn token are supervised, nothing of the prompt is; ChatML is added where a tokenizer has none."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.foreign_tokenizers import gpt2_style_tokenizer, llama3_style_tokenizer, qwen_style_tokenizer
from tests.model_fixtures import make_tokenizer_dir
from zero_chatgpt.tokenizer.chat_encoding import (
    IGNORE_INDEX,
    encode_conversation,
    encode_prompt,
    end_of_turn_id,
    ensure_chat_template,
)

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of Eldonia?"},
    {"role": "assistant", "content": "It is Varn."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue, thank you."},
]
END_OF_TURN = {"gpt2": "<|im_end|>", "llama3": "<|eot_id|>", "qwen": "<|im_end|>", "own": "<|im_end|>"}


@pytest.fixture(scope="module", params=["gpt2", "llama3", "qwen", "own"])
def family(request, tmp_path_factory):
    if request.param == "own":
        tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_dir(tmp_path_factory.mktemp("own")))
    else:
        tokenizer = {"gpt2": gpt2_style_tokenizer, "llama3": llama3_style_tokenizer, "qwen": qwen_style_tokenizer}[
            request.param
        ]()
    setup = ensure_chat_template(tokenizer)
    return request.param, tokenizer, setup


def supervised_runs(encoded) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are unshifted copies of the ids
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_chatml_is_added_only_where_the_tokenizer_has_no_template(family):
    name, tokenizer, setup = family
    if name == "gpt2":
        assert setup.origin == "chatml-added" and set(setup.added_tokens) == {"<|im_start|>", "<|im_end|>"}
        assert setup.vocab_size == len(tokenizer) and tokenizer.pad_token is not None
    else:
        assert setup.origin == "tokenizer" and setup.added_tokens == ()


@pytest.mark.parametrize("train_on", ["all", "last"])
def test_supervised_tokens_are_exactly_the_assistant_replies_and_their_end_of_turn(family, train_on):
    name, tokenizer, _ = family
    encoded = encode_conversation(tokenizer, CONVERSATION, max_seq_len=512, train_on=train_on)
    runs = supervised_runs(encoded)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    expected = replies if train_on == "all" else replies[-1:]
    assert len(runs) == len(expected)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN[name])
    for run, reply in zip(runs, expected):
        assert run[-1] == eot  # the end-of-turn token is learned, so generation stops
        assert tokenizer.decode(run[:-1]).strip() == reply  # first reply token on, nothing of the prompt
    assert end_of_turn_id(tokenizer) == eot
    assert not encoded.truncated


def test_the_prompt_ids_are_the_prefix_the_model_continues(family):
    _, tokenizer, _ = family
    encoded = encode_conversation(tokenizer, CONVERSATION[:3], max_seq_len=512)
    prompt = encode_prompt(tokenizer, CONVERSATION[:2], max_prompt_tokens=512)
    first_label = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert encoded.input_ids[:first_label] == prompt
    assert encode_prompt(tokenizer, CONVERSATION[:2], max_prompt_tokens=5) == prompt[-5:]


def test_truncation_keeps_the_end_of_the_prompt_and_the_reply(family):
    _, tokenizer, _ = family
    long_question = {"role": "user", "content": "Hello, how are you today? " * 40 + "What is the capital?"}
    messages = [long_question, {"role": "assistant", "content": "It is Varn."}]
    full = encode_conversation(tokenizer, messages, max_seq_len=10_000)
    cut = encode_conversation(tokenizer, messages, max_seq_len=48)
    assert cut.truncated and len(cut.input_ids) == 48
    assert cut.input_ids == full.input_ids[-48:]  # the whole reply fits, so the window ends with it
    assert supervised_runs(cut) == supervised_runs(full)


def test_a_template_that_rewrites_past_turns_is_refused_unless_only_the_last_is_trained():
    tokenizer = qwen_style_tokenizer()
    # Drops the content of earlier assistant turns, as reasoning templates drop their thinking.
    tokenizer.chat_template = (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'assistant' and not loop.last %}{{- '<|im_start|>assistant\\n<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
        "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    with pytest.raises(ValueError, match="train_on: last"):
        encode_conversation(tokenizer, CONVERSATION, max_seq_len=512, train_on="all")
    assert encode_conversation(tokenizer, CONVERSATION, max_seq_len=512, train_on="last") is not None
