"""`zero-chatgpt chat` and `generate`: streamed replies, multi-turn context, clean exit on EOF, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from model_fixtures import make_causal_lm_dir, make_tokenizer_dir

from zero_chatgpt.model.chat import ChatSession, generate_replies, load_chat_model, read_prompts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return make_causal_lm_dir(root, make_tokenizer_dir(root))


def test_streaming_never_splits_a_character_and_joins_to_the_answer(model_dir, monkeypatch):
    model, tokenizer = load_chat_model(model_dir, "cpu")
    text = "Rivers 龘 and 𠀀 hills"
    scripted = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(scripted) > len(text.split()), "the rare characters should arrive as several byte tokens"

    def scripted_sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature, top_p, generator, on_tokens):
        for token in [*scripted, eos_id]:
            on_tokens(torch.tensor([token]))

    monkeypatch.setattr("zero_chatgpt.model.chat.sample", scripted_sample)
    session = ChatSession(model, tokenizer, seed=0)
    pieces: list[str] = []
    answer = session.reply("Tell me about the river.", on_text=pieces.append)
    assert answer == text and "".join(pieces) == text
    assert len(pieces) > 3 and not any("\ufffd" in piece for piece in pieces)


def test_turns_accumulate_in_the_prompt(model_dir):
    model, tokenizer = load_chat_model(model_dir, "cpu")
    session = ChatSession(model, tokenizer, max_new_tokens=12, temperature=1.0, top_p=1.0, seed=3)
    session.reply("Tell me about the river.")
    session.reply("And the mountain?")
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    # Later turns see the earlier ones: the second prompt is longer than a fresh single-turn prompt.
    assert len(session._prompt_ids()) > len(ChatSession(model, tokenizer)._prompt_ids()) + 10
    session.reset()
    assert session.messages == []


def test_long_conversations_are_cut_to_the_context(model_dir):
    model, tokenizer = load_chat_model(model_dir, "cpu")
    session = ChatSession(model, tokenizer, max_new_tokens=16, temperature=0.0, seed=0)
    for turn in range(12):
        session.messages += [
            {"role": "user", "content": f"question {turn} " * 8},
            {"role": "assistant", "content": f"answer {turn} " * 8},
        ]
    session.messages.append({"role": "user", "content": "last question"})
    ids = session._prompt_ids()
    assert len(ids) <= session.context_tokens - session.max_new_tokens
    assert "last question" in tokenizer.decode(ids)


def test_chat_command_answers_from_stdin_and_exits_zero_on_eof(model_dir):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zero_chatgpt.cli",
            "chat",
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "8",
            "--seed",
            "1",
        ],
        input="What is the capital?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "the model should have said something"


def test_generate_is_batched_reproducible_and_reads_jsonl(model_dir, tmp_path):
    model, tokenizer = load_chat_model(model_dir, "cpu")
    prompts = ["alpha", "a much longer prompt about rivers and hills", "gamma"]
    first = generate_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    assert [row["prompt"] for row in first] == prompts
    assert first == generate_replies(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    file = tmp_path / "prompts.jsonl"
    file.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts) + "\n", encoding="utf-8")
    assert read_prompts(file) == prompts


def test_bad_prompt_files_and_model_dirs_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_prompts(bad)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_chat_model(tmp_path)
