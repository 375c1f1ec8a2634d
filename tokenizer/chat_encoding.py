"""Conversations to token ids and loss labels under any chat template: the project's ChatML, a base model's own
(Llama-3, Qwen, ...), or ChatML added to a tokenizer that has none (GPT-2).

Which tokens are the assistant's is read from the template itself, without relying on `{% generation %}` markers
(few foreign templates have them): the text an assistant turn adds is what rendering the conversation through
that turn adds to rendering it up to that turn with the generation prompt. Those character spans (trailing
whitespace of the template trimmed, the end-of-turn token kept) become token labels through the fast tokenizer's
offsets. A template whose earlier renderings are not prefixes of later ones (one that rewrites past turns) cannot
be split this way and is refused with a message saying so, unless only the last turn is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from zero_chatgpt.data_process.conversations import prompt_messages
from zero_chatgpt.model.losses import IGNORE_INDEX
from zero_chatgpt.tokenizer.chat import CHAT_TEMPLATE, IM_END, IM_START

TrainOn = Literal["all", "last"]


@dataclass(frozen=True)
class ChatTemplateSetup:
    """What `ensure_chat_template` did: the template's origin and the special tokens it added (the model's
    embeddings must then be resized to `vocab_size`)."""

    origin: Literal["tokenizer", "chatml-added"]
    added_tokens: tuple[str, ...]
    vocab_size: int


@dataclass(frozen=True)
class EncodedConversation:
    """`input_ids` and `labels` (same length; `IGNORE_INDEX` where no loss), unshifted: position t labels token t."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def supervised_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def ensure_chat_template(tokenizer) -> ChatTemplateSetup:
    """Use the tokenizer's own chat template; without one, add ChatML and its `<|im_start|>`/`<|im_end|>` tokens.

    Mutates `tokenizer` (template, special tokens, pad token when it has none: its end-of-text token).
    """
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplateSetup("tokenizer", (), len(tokenizer))
    missing = [token for token in (IM_START, IM_END) if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or IM_END
    return ChatTemplateSetup("chatml-added", tuple(missing), len(tokenizer))


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn under the tokenizer's template (what generation stops at)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    spans, text = assistant_spans(tokenizer, probe, "last")
    ids, offsets = _ids_and_offsets(tokenizer, text)
    inside = [i for i, (start, _) in enumerate(offsets) if spans[0][0] <= start < spans[0][1]]
    return ids[inside[-1]]


def assistant_spans(
    tokenizer, messages: list[dict[str, str]], train_on: TrainOn = "all"
) -> tuple[list[tuple[int, int]], str]:
    """(character spans of the supervised assistant turns, the whole rendered conversation)."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("the conversation has no assistant turn to train on")
    if train_on == "last":
        turns = turns[-1:]
    spans = []
    for turn in turns:
        before = _render(tokenizer, messages[:turn], add_generation_prompt=True)
        through = _render(tokenizer, messages[: turn + 1], add_generation_prompt=False)
        if not through.startswith(before) or not full.startswith(through):
            raise ValueError(
                f"the chat template does not render assistant turn {turn + 1} as an extension of the "
                "conversation before it (it rewrites earlier turns); train on the last turn only "
                "(`train_on: last`) or use another template"
            )
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return spans, full


def encode_conversation(
    tokenizer, messages: list[dict[str, str]], max_seq_len: int, train_on: TrainOn = "all"
) -> EncodedConversation | None:
    """Token ids and labels of one conversation ending in an assistant turn; None when no supervised token
    survives truncation.

    Too long a conversation keeps the end of what precedes the last reply and as much of the reply as fits
    (at least half the window, when the reply is that long), as `truncate_pair` does for single turns.
    """
    spans, text = assistant_spans(tokenizer, messages, train_on)
    # What the template writes after the last reply (a newline, say) is never trained on: dropping it keeps the
    # rows exactly what a model sees when it generates the reply and stops.
    ids, offsets = _reply_aligned_ids(tokenizer, text[: spans[-1][1]], spans[-1][0])
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, offsets)
    ]
    reply_start = next(i for i, (begin, _) in enumerate(offsets) if begin >= spans[-1][0])
    truncated = len(ids) > max_seq_len
    if truncated:
        reply_budget = max(max_seq_len - reply_start, min(len(ids) - reply_start, max_seq_len // 2))
        keep_end = reply_start + reply_budget
        keep_start = max(0, keep_end - max_seq_len)
        ids, labels = ids[keep_start:keep_end], labels[keep_start:keep_end]
    # Position 0 has nothing before it, so a label there can never be predicted.
    if labels:
        labels[0] = IGNORE_INDEX
    if not any(label != IGNORE_INDEX for label in labels):
        return None
    return EncodedConversation(input_ids=ids, labels=labels, truncated=truncated)


def _reply_aligned_ids(tokenizer, text: str, reply_start: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and offsets of `text` whose first `reply_start` characters (the conversation up to the last reply, with
    the generation prompt) encode exactly as `encode_prompt` encodes them, so a model trains on the prompt it will
    be given. Encoded in one pass when that holds; otherwise (a reply starting with a newline that would merge with
    the template's last newline) the prompt and the reply are encoded apart and joined."""
    ids, offsets = _ids_and_offsets(tokenizer, text)
    prompt_ids, prompt_offsets = _ids_and_offsets(tokenizer, text[:reply_start])
    if ids[: len(prompt_ids)] == prompt_ids:
        return ids, offsets
    reply_ids, reply_offsets = _ids_and_offsets(tokenizer, text[reply_start:])
    shifted = [(begin + reply_start, end + reply_start) for begin, end in reply_offsets]
    return prompt_ids + reply_ids, prompt_offsets + shifted


def encode_prompt(tokenizer, messages: list[dict[str, str]], max_prompt_tokens: int | None = None) -> list[int]:
    """The ids a model continues to answer `messages` (ending in a user turn): the conversation with the
    template's generation prompt, cut from the left to `max_prompt_tokens` (None: whole) so the question's end is
    kept."""
    ids, _ = _ids_and_offsets(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))
    return ids if max_prompt_tokens is None else ids[-max_prompt_tokens:]


def encode_prompts(tokenizer, prompts: list[Any], max_prompt_tokens: int | None = None) -> tuple[list[list[int]], int]:
    """(the `encode_prompt` ids of each row prompt — one user turn as text, or messages ending in a user turn —, how
    many were longer than `max_prompt_tokens` and kept only their end): what build_prefs, ppo and evaluate sample
    from, with the count their manifests report."""
    encoded, cut = [], 0
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt_messages(prompt))
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            ids, cut = ids[-max_prompt_tokens:], cut + 1
        encoded.append(ids)
    return encoded, cut


def encode_answer(tokenizer, prompt: list[dict[str, str]], answer: str, max_seq_len: int | None = None) -> list[int]:
    """Ids of `prompt` (messages ending in a user turn) answered by `answer`, through the answer's end-of-turn token
    and no further: what a reward model scores (its head is read at the last token). Longer than `max_seq_len`
    (None: no limit), the end is kept."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    spans, text = assistant_spans(tokenizer, messages, "last")
    ids, _ = _ids_and_offsets(tokenizer, text[: spans[-1][1]])
    return ids if max_seq_len is None else ids[-max_seq_len:]


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end-of-text token."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a pad nor an end-of-text token to pad batches with")


def stop_ids(tokenizer) -> list[int]:
    """Tokens that end a generated reply: the template's end-of-turn token, and the end-of-text token."""
    ids = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def _render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids_and_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    # The template writes every special token (BOS included) into the text itself.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(pair) for pair in encoded["offset_mapping"]]
