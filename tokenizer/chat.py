"""Special tokens and the ChatML chat template shared by the tokenizer, SFT, PPO and evaluation.

A conversation renders as

    <|im_start|>system\\n{content}<|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n

and `add_generation_prompt=True` appends `<|im_start|>assistant\\n` so the model writes the reply. Documents in
the pretraining shards are separated by `<|endoftext|>` instead; no BOS token is ever added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ENDOFTEXT = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# sentencepiece needs an unknown piece; byte fallback means encoding never produces it.
UNK = "<unk>"

# Fixed ids: every tokenizer this project trains agrees on them, whatever the vocab size.
UNK_ID, ENDOFTEXT_ID, PAD_ID, IM_START_ID, IM_END_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = (ENDOFTEXT, PAD, IM_START, IM_END)

# The `{% generation %}` markers let `apply_chat_template(..., return_assistant_tokens_mask=True)` mark the
# assistant's tokens (its content and closing <|im_end|>), which is what SFT puts the loss on. They render
# to nothing, so the text is plain ChatML.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def render_chat(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The ChatML text of `messages` ({"role", "content"} dicts), identical to what `CHAT_TEMPLATE` renders."""
    parts = [f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages]
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)
