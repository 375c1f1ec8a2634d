"""Tokenizers of other model families, built locally (no downloads): a GPT-2-style byte-level BPE without a chat
template, a Llama-3-style one with its header/eot template, and a Qwen-style ChatML one with a default system
prompt. Each is trained in-process on a few sentences, so it splits text the way its family does."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TRAINING_TEXT = [
    "The capital of Eldonia is Varn. What is the capital? It is Varn, a city by the river.",
    "Hello, how are you today? I am fine, thank you. Can you help me with a question?",
    "Two plus two is four. Name a colour: blue, red and green are colours.",
] * 20

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _byte_level_bpe(special_tokens: list[str], vocab_size: int = 400, texts: list[str] = TRAINING_TEXT) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def gpt2_style_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, `<|endoftext|>` only, no chat template, no pad token (as GPT-2 ships)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(["<|endoftext|>"]), eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def llama3_style_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(specials),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def qwen_style_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(specials), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer


def trained_tokenizer(style: str, texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A `style` tokenizer ("gpt2": no template; "llama3": its header/eot template) trained on `texts`, for models
    that learn real data in tests (the fixtures above know three sentences)."""
    if style == "gpt2":
        specials, names = ["<|endoftext|>"], {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}
    elif style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        names = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"}
    else:
        raise ValueError(f"unknown tokenizer style {style!r}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(specials, vocab_size, texts), **names)
    if style == "llama3":
        tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer
