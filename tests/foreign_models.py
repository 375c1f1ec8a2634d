"""Tiny random-weight models of the families users align (no downloads): LLaMA, Qwen2, GPT-2, BLOOM and OPT,
each built from its `transformers` config at a few thousand parameters."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    Qwen2Config,
)

FAMILIES = ("llama", "qwen2", "gpt2", "bloom", "opt")


def tiny_config(family: str, vocab_size: int, max_positions: int = 128, width: int = 32):
    """A 2-layer config of `family` (`width` wide) for a tokenizer of `vocab_size` ids."""
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
        )
    if family == "qwen2":
        return Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
        )
    if family == "gpt2":
        # GPT-2's default special ids (50256) lie outside a test vocabulary: the tokenizer says which ids they are.
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=width,
            n_layer=2,
            n_head=4,
            n_positions=max_positions,
            bos_token_id=None,
            eos_token_id=None,
        )
    if family == "bloom":
        return BloomConfig(vocab_size=vocab_size, hidden_size=width, n_layer=2, n_head=4)
    if family == "opt":
        return OPTConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            ffn_dim=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_positions,
            word_embed_proj_dim=width,
        )
    raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")


def tiny_causal_lm(family: str, vocab_size: int = 320, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, vocab_size))


def save_base_model(
    path, family: str, tokenizer, seed: int = 0, max_positions: int = 128, width: int = 32, **config_changes
):
    """A random-weight `family` model sized for `tokenizer`, saved with it as a Hugging Face base model dir;
    `config_changes` set config attributes (`tie_word_embeddings=False`, say) before the weights are drawn."""
    torch.manual_seed(seed)
    config = tiny_config(family, len(tokenizer), max_positions, width)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    for name, value in config_changes.items():
        setattr(config, name, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
