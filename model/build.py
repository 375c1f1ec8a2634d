"""Model building shared by every training stage: `ModelConfig` + vocab size -> a LLaMA-style causal LM.

Pretrain builds from scratch here; SFT, the reward model and PPO load what pretrain saved with
`from_pretrained`, so the architecture is decided in one place only.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from zero_chatgpt.config import ModelConfig

logger = logging.getLogger(__name__)


def derived_intermediate_size(hidden_size: int, multiple_of: int = 32) -> int:
    """MLP width for a SwiGLU block: 8/3 * hidden (same parameters as a 4x GELU MLP), rounded to `multiple_of`.

    Rounding keeps matrix shapes friendly to vectorised kernels; 128 -> 352, 256 -> 672, 768 -> 2048.
    """
    target = 8 * hidden_size / 3
    return max(multiple_of, int(round(target / multiple_of)) * multiple_of)


def llama_config(
    cfg: ModelConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """The Hugging Face config for `cfg`; special ids come from the tokenizer so `generate` stops at EOS."""
    num_kv_heads = cfg.num_kv_heads or cfg.num_heads  # ModelConfig has checked that the head counts divide
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size or derived_intermediate_size(cfg.hidden_size),
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_dropout=cfg.dropout,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaForCausalLM:
    """A freshly initialised `LlamaForCausalLM` (fp32 weights; mixed precision is the training loop's job)."""
    config = llama_config(cfg, vocab_size, bos_token_id, eos_token_id, pad_token_id)
    model = LlamaForCausalLM(config)
    logger.info(
        "built LlamaForCausalLM: %s parameters, %d layers x %d hidden, vocab %d",
        f"{count_parameters(model):,}",
        cfg.num_layers,
        cfg.hidden_size,
        vocab_size,
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> the GPU when one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators: every stage starts from the same state."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
