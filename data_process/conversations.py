"""Conversations as lists of messages: reading the shapes chat data comes in, and checking them.

A conversation is a list of `{"role", "content"}` messages with roles `system` (at most one, first), `user` and
`assistant`, users and assistants taking turns. Sources arrive as:

- OpenAI messages: `[{"role": "user", "content": ...}, ...]`;
- ShareGPT: `[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]`;
- Anthropic HH-RLHF transcripts: `"\\n\\nHuman: ...\\n\\nAssistant: ..."`, with the chosen and the rejected
  transcripts sharing everything before the last assistant turn.

Every reader raises `ConversationError` with a message that names the turn and what is wrong; the source readers
turn that into a quarantined row (file, line, reason), so a malformed conversation never crashes a stage.
"""

from __future__ import annotations

import re
from typing import Any

Message = dict[str, str]

ROLES = ("system", "user", "assistant")
# ShareGPT and other exports name the speakers in their own words.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}

HH_HUMAN = "Human:"
HH_ASSISTANT = "Assistant:"
# A speaker mark starts a turn only at the start of the text or after a blank line, as HH-RLHF writes them.
_HH_TURN_RE = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class ConversationError(ValueError):
    """A conversation that cannot be used; the message names the turn and the reason."""


def normalise_messages(value: Any) -> list[Message]:
    """OpenAI- or ShareGPT-shaped turns -> checked `{"role", "content"}` messages (see `check_turn_order`)."""
    if not isinstance(value, list) or not value:
        raise ConversationError(f"messages must be a non-empty list of turns, got {_describe(value)}")
    messages = []
    for index, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise ConversationError(f"turn {index}: expected an object, got {_describe(turn)}")
        speaker = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if not isinstance(speaker, str) or speaker.strip().lower() not in ROLE_ALIASES:
            raise ConversationError(
                f"turn {index}: unknown speaker {speaker!r}; expected one of {sorted(ROLE_ALIASES)} "
                "(in `role`, or ShareGPT's `from`)"
            )
        if not isinstance(content, str):
            raise ConversationError(
                f"turn {index}: content must be a string (`content` or `value`), got {_describe(content)}"
            )
        messages.append({"role": ROLE_ALIASES[speaker.strip().lower()], "content": content})
    check_turn_order(messages)
    return messages


def check_turn_order(messages: list[Message]) -> None:
    """Raise unless: an optional system message first, then user and assistant turns alternating from a user."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise ConversationError("the conversation has no user turn")
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            turn = index + 1 + (len(messages) - len(body))
            raise ConversationError(
                f"turn {turn}: expected a {expected} turn, got {message['role']}; turns must "
                "alternate user/assistant after an optional first system message"
            )


def parse_hh_transcript(text: str) -> list[Message]:
    """An HH-RLHF transcript (`"\\n\\nHuman: a\\n\\nAssistant: b"`) -> messages; the leading blank line is optional."""
    if not isinstance(text, str):
        raise ConversationError(f"an HH transcript must be a string, got {_describe(text)}")
    marks = list(_HH_TURN_RE.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise ConversationError("an HH transcript must start with 'Human:' (after an optional blank line)")
    messages = []
    for mark, following in zip(marks, marks[1:] + [None]):
        end = following.start() if following is not None else len(text)
        role = "user" if mark.group(1) == "Human" else "assistant"
        messages.append({"role": role, "content": text[mark.end() : end].strip()})
    check_turn_order(messages)
    return messages


def split_last_reply(messages: list[Message]) -> tuple[list[Message], str]:
    """(the conversation before the last assistant turn, that turn's text); the prompt ends with a user turn."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ConversationError("the conversation must end with an assistant turn (the answer being judged)")
    return messages[:-1], messages[-1]["content"]


def hh_preference(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Two full HH transcripts -> (shared prompt messages, chosen reply, rejected reply).

    Raises when the two differ before their last assistant turn: then they answer different conversations and
    are no preference pair.
    """
    chosen_prompt, chosen_reply = split_last_reply(parse_hh_transcript(chosen))
    rejected_prompt, rejected_reply = split_last_reply(parse_hh_transcript(rejected))
    if chosen_prompt != rejected_prompt:
        turn = next(
            (i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt), 1) if a != b),
            min(len(chosen_prompt), len(rejected_prompt)) + 1,
        )
        raise ConversationError(
            f"chosen and rejected transcripts differ at turn {turn}, before their last "
            "assistant turn: they do not answer the same conversation"
        )
    return chosen_prompt, chosen_reply, rejected_reply


def prompt_messages(prompt: Any) -> list[Message]:
    """A row's prompt as messages: a string is one user turn; a message list must end with the user turn the reply
    answers. (Rows store a single user turn as a plain string, anything longer as a list: see `compact_prompt`.)"""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = normalise_messages(prompt)
    if messages[-1]["role"] != "user":
        raise ConversationError("a prompt must end with a user turn (the one the reply answers)")
    return messages


def compact_prompt(messages: list[Message]) -> str | list[Message]:
    """How rows store a prompt: one user turn as its plain text, a longer conversation as its message list."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


def conversation(prompt: Any, reply: str) -> list[Message]:
    """The whole conversation of a row: its prompt's messages followed by the assistant's `reply`."""
    return [*prompt_messages(prompt), {"role": "assistant", "content": reply}]


def prompt_key(prompt: Any) -> str:
    """A string that stands for a prompt (plain or multi-turn), for grouping and de-duplicating rows."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt_messages(prompt))


def last_user_turn(prompt: Any) -> str:
    """The text of the user turn a prompt ends with (the question being answered)."""
    return prompt_messages(prompt)[-1]["content"]


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '…' if len(text) > 60 else text}"
