"""Conversation shapes: OpenAI and ShareGPT messages, HH-RLHF transcripts and pairs, and the errors that name
the turn that is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zero_chatgpt.data_process.conversations import (
    ConversationError,
    compact_prompt,
    conversation,
    hh_preference,
    last_user_turn,
    normalise_messages,
    parse_hh_transcript,
    prompt_key,
    prompt_messages,
)

SHARED_PREF = Path(__file__).resolve().parents[2] / "shared" / "data" / "en_pref.jsonl"


def test_openai_and_sharegpt_shapes_give_the_same_messages():
    openai = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    sharegpt = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
    ]
    assert normalise_messages(openai) == normalise_messages(sharegpt) == openai


@pytest.mark.parametrize(
    ("turns", "named"),
    [
        ([], "non-empty list"),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "turn 2: unknown speaker 'robot'"),
        ([{"role": "user", "content": 3}], "turn 1: content must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "turn 2: expected a assistant turn"),
        ([{"role": "assistant", "content": "a"}], "turn 1: expected a user turn"),
        ([{"role": "system", "content": "s"}], "no user turn"),
        ("just text", "non-empty list"),
    ],
)
def test_bad_conversations_name_the_turn(turns, named):
    with pytest.raises(ConversationError, match=named):
        normalise_messages(turns)


def test_hh_transcript_turns_and_multiline_content():
    text = "\n\nHuman: Two lines:\nfirst\n\nsecond?\n\nAssistant: Sure.\n\nHuman: Thanks\n\nAssistant: Bye"
    # "second?" follows a blank line but is no speaker mark, so it stays in the human turn.
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "Two lines:\nfirst\n\nsecond?"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Bye"},
    ]
    with pytest.raises(ConversationError, match="must start with 'Human:'"):
        parse_hh_transcript("preamble\n\nHuman: hi")


def test_hh_pairs_share_their_prefix_or_are_refused():
    prefix = "\n\nHuman: Can you help?\n\nAssistant: Yes.\n\nHuman: Name a colour."
    prompt, chosen, rejected = hh_preference(prefix + "\n\nAssistant: Blue.", prefix + "\n\nAssistant: No.")
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"] and (chosen, rejected) == ("Blue.", "No.")
    other = "\n\nHuman: Can you help?\n\nAssistant: Maybe.\n\nHuman: Name a colour.\n\nAssistant: Red."
    with pytest.raises(ConversationError, match="differ at turn 2"):
        hh_preference(prefix + "\n\nAssistant: Blue.", other)
    with pytest.raises(ConversationError, match="end with an assistant turn"):
        hh_preference(prefix, prefix + "\n\nAssistant: No.")


def test_prompts_are_plain_text_or_messages_and_compact_back():
    assert prompt_messages("What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]
    # A plain string is never parsed: a question may well start with "Human:".
    assert prompt_messages("Human: a\n\nAssistant: b") == [{"role": "user", "content": "Human: a\n\nAssistant: b"}]
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert compact_prompt(prompt_messages("q")) == "q"
    assert compact_prompt(turns) == turns and prompt_messages(turns) == turns
    assert conversation("q", "r")[-1] == {"role": "assistant", "content": "r"}
    assert prompt_key(turns) != prompt_key("c") and last_user_turn(turns) == "c"
    with pytest.raises(ConversationError, match="end with a user turn"):
        prompt_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


@pytest.mark.skipif(not SHARED_PREF.is_file(), reason="../shared/data is not present")
def test_real_hh_rows_read_as_the_messages_they_carry():
    rows = [json.loads(line) for line in SHARED_PREF.read_text(encoding="utf-8").splitlines()[:200]]
    for row in rows:
        messages = parse_hh_transcript(row["prompt"])
        assert messages[-1]["role"] == "user"
        assert [m["content"] for m in messages] == [m["content"].strip() for m in row["prompt_messages"]]
