"""Small model artifacts for tests: a real (tiny) trained tokenizer and a random-init causal LM saved like a stage."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from zero_chatgpt.config import ModelConfig, TrainTokenizerConfig
from zero_chatgpt.model.build import build_model
from zero_chatgpt.tokenizer.toy_corpus import toy_documents, write_corpus_parts
from zero_chatgpt.tokenizer.train import train_tokenizer


def make_tokenizer_dir(root: Path, vocab_size: int = 400) -> Path:
    """A sentencepiece tokenizer trained on toy documents by the real stage (a couple of seconds)."""
    corpus = root / "corpus"
    write_corpus_parts(toy_documents(300, seed=0), corpus)
    out = root / "tokenizer"
    train_tokenizer(TrainTokenizerConfig(vocab_size=vocab_size), corpus, out, seed=0, num_threads=1)
    return out


def make_causal_lm_dir(root: Path, tokenizer_dir: Path, seed: int = 0, max_seq_len: int = 128) -> Path:
    """A random-init tiny LLaMA + its tokenizer, saved the way the model stages save theirs."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=max_seq_len),
        len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = root / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
