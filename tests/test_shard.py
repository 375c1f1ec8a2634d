"""shard: dtype, multi-file reads, EOS separation, split by document, worker-count independence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from zero_chatgpt.config import ShardConfig, TrainTokenizerConfig
from zero_chatgpt.data_process import shard as shard_module
from zero_chatgpt.data_process.shard import assign_validation, batch_bounds, shard_corpus
from zero_chatgpt.data_process.token_shards import ShardWriter, TokenShards, dtype_for_vocab, write_meta
from zero_chatgpt.parallel import process_pool_map
from zero_chatgpt.tokenizer.files import SP_MODEL_FILE
from zero_chatgpt.tokenizer.toy_corpus import toy_documents, write_corpus_parts
from zero_chatgpt.tokenizer.train import train_tokenizer

NUM_DOCS = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dedup")
    write_corpus_parts(toy_documents(NUM_DOCS, seed=3), path, docs_per_part=50)
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TrainTokenizerConfig(vocab_size=500), corpus, out, seed=0)
    return out


def _split_docs(shard_dir: Path, split: str) -> list[np.ndarray]:
    """A split's tokens cut after every EOS: one array per document, EOS dropped."""
    shards = TokenShards(shard_dir, split)
    tokens = shards.tokens(0, len(shards))
    assert tokens[-1] == shards.eos_id
    ends = np.flatnonzero(tokens == shards.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokens[s:e] for s, e in zip(starts, ends)]


def test_uint16_ids_above_32767_read_back_unchanged(tmp_path):
    ids = np.array([0, 1, 32767, 32768, 40000, 65534, 65535, 2], dtype=np.int64)
    writer = ShardWriter(tmp_path, "train", dtype_for_vocab(65536), tokens_per_shard=1000)
    writer.write(ids)
    write_meta(tmp_path, np.uint16, 65536, 2, {"train": writer.close()})
    shards = TokenShards(tmp_path, "train")
    assert shards.dtype == np.uint16
    np.testing.assert_array_equal(shards.tokens(0, ids.size), ids)
    assert shards.tokens(0, ids.size).min() >= 0


def test_uint32_when_vocab_exceeds_16_bits(tmp_path):
    assert dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.uint32
    ids = np.array([70000, 65536, 3, 100_000], dtype=np.int64)
    writer = ShardWriter(tmp_path, "train", dtype_for_vocab(100_001), tokens_per_shard=1000)
    writer.write(ids)
    write_meta(tmp_path, np.uint32, 100_001, 3, {"train": writer.close()})
    np.testing.assert_array_equal(TokenShards(tmp_path, "train").tokens(0, 4), ids)
    with pytest.raises(ValueError, match="out of range"):
        ShardWriter(tmp_path, "val", np.uint16, 1000).write(np.array([70000]))


def test_stage_writes_uint32_for_a_large_vocab(corpus, tokenizer_dir, tmp_path, monkeypatch):
    small = shard_corpus(ShardConfig(), corpus, tokenizer_dir, tmp_path / "u16", seed=0)
    real = shard_module.load_encoder(tokenizer_dir)
    # The same encoder reporting a vocab above 65536, to see the stage pick uint32.
    large_vocab = shard_module.DocumentEncoder(real.encode, 70_000, real.eos_id)
    monkeypatch.setattr(shard_module, "load_encoder", lambda _dir: large_vocab)
    large = shard_corpus(ShardConfig(), corpus, tokenizer_dir, tmp_path / "u32", seed=0)
    assert (small["dtype"], large["dtype"]) == ("uint16", "uint32")
    meta = json.loads((tmp_path / "u32" / "meta.json").read_text())
    assert (meta["dtype"], meta["vocab_size"]) == ("uint32", 70_000)
    for split in ("train", "val"):
        a, b = TokenShards(tmp_path / "u16", split), TokenShards(tmp_path / "u32", split)
        np.testing.assert_array_equal(a.tokens(0, len(a)), b.tokens(0, len(b)))


def test_every_shard_file_is_read_and_documents_do_not_span_files(corpus, tokenizer_dir, tmp_path):
    metrics = shard_corpus(
        ShardConfig(tokens_per_shard=1000, docs_per_batch=7), corpus, tokenizer_dir, tmp_path, seed=0
    )
    assert metrics["train_files"] > 2
    shards = TokenShards(tmp_path, "train")
    assert len(shards.arrays) == metrics["train_files"]
    assert len(shards) == metrics["train_tokens"] == sum(a.size for a in shards.arrays)
    np.testing.assert_array_equal(shards.tokens(0, len(shards)), np.concatenate(shards.arrays))
    for array in shards.arrays:
        assert array[-1] == shards.eos_id  # each file ends on a document boundary
    # A new file starts only once the previous one reached the limit.
    assert all(a.size >= 1000 for a in shards.arrays[:-1])


def test_documents_are_eos_separated_and_split_by_document(corpus, tokenizer_dir, tmp_path):
    metrics = shard_corpus(ShardConfig(val_fraction=0.2, docs_per_batch=16), corpus, tokenizer_dir, tmp_path, seed=5)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / SP_MODEL_FILE))
    decoded = {split: [sp.decode(d.tolist()) for d in _split_docs(tmp_path, split)] for split in ("train", "val")}
    docs = toy_documents(NUM_DOCS, seed=3)
    is_val = assign_validation(5, [f"toy:{i}" for i in range(NUM_DOCS)], 0.2)
    assert decoded["val"] == [d for d, v in zip(docs, is_val) if v]
    assert decoded["train"] == [d for d, v in zip(docs, is_val) if not v]
    assert not set(decoded["train"]) & set(decoded["val"])
    assert (metrics["train_docs"], metrics["val_docs"]) == (len(decoded["train"]), len(decoded["val"]))
    assert 0 < metrics["val_docs"] < NUM_DOCS / 2
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["eos_id"] == sp.eos_id() and meta["val_docs"] == metrics["val_docs"]
    assert metrics["tokens_per_s"] > 0


def test_serial_and_process_pool_output_are_byte_identical(corpus, tokenizer_dir, tmp_path):
    config = ShardConfig(tokens_per_shard=2000, docs_per_batch=9)
    shard_corpus(config, corpus, tokenizer_dir, tmp_path / "serial", seed=1)
    shard_corpus(config, corpus, tokenizer_dir, tmp_path / "pool", seed=1, parallel_map=process_pool_map(2))
    serial_files = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert serial_files == sorted(p.name for p in (tmp_path / "pool").iterdir())
    assert len(serial_files) > 3
    for name in serial_files:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes(), name


def test_at_least_one_validation_document_and_empty_documents_counted(tokenizer_dir, tmp_path):
    write_corpus_parts(["only two documents", "这是第二个", ""], tmp_path / "dedup")
    metrics = shard_corpus(ShardConfig(val_fraction=0.001), tmp_path / "dedup", tokenizer_dir, tmp_path / "out", seed=0)
    assert metrics["val_docs"] >= 1 and metrics["train_docs"] >= 1
    assert metrics["val_docs"] + metrics["train_docs"] == 2
    assert metrics["empty_docs"] == 1
    for seed in range(20):
        assert assign_validation(seed, ["a", "b"], 0.4999).sum() == 1
        assert assign_validation(seed, ["a"], 0.4999).sum() == 0  # one document stays in train
        # An empty (ineligible) document does not count towards either split.
        assert assign_validation(seed, ["a", "b", "c"], 0.4999, np.array([True, False, True]))[[0, 2]].sum() == 1


def test_null_text_is_an_error_naming_the_file(tokenizer_dir, tmp_path):
    (tmp_path / "dedup").mkdir()
    pq.write_table(
        pa.table({"id": ["a", "b"], "text": ["fine", None], "source": ["x", "x"]}),
        tmp_path / "dedup" / "part_00000.parquet",
    )
    with pytest.raises(ValueError, match=r"part_00000\.parquet.*null `text`.*row 1"):
        shard_corpus(ShardConfig(), tmp_path / "dedup", tokenizer_dir, tmp_path / "out", seed=0)


def test_batches_close_on_documents_or_characters():
    assert batch_bounds([10] * 5, docs_per_batch=2, chars_per_batch=1000) == [(0, 2), (2, 4), (4, 5)]
    assert batch_bounds([400, 400, 400, 5000, 1], docs_per_batch=10, chars_per_batch=1000) == [
        (0, 2),
        (2, 3),
        (3, 4),
        (4, 5),
    ]
    assert batch_bounds([], docs_per_batch=3, chars_per_batch=1000) == []


def test_a_base_models_own_tokenizer_shards_continued_pretraining_text(corpus, tmp_path):
    """A base model's dir has no sentencepiece model: its fast tokenizer encodes, its end-of-text ends documents."""
    from tests.foreign_tokenizers import gpt2_style_tokenizer

    base = tmp_path / "base"
    tokenizer = gpt2_style_tokenizer()
    tokenizer.save_pretrained(base)
    metrics = shard_corpus(ShardConfig(), corpus, base, tmp_path / "shards", seed=0)
    shards = TokenShards(tmp_path / "shards", "train")
    assert shards.eos_id == tokenizer.eos_token_id and metrics["train_tokens"] == len(shards) > 0
    first_doc = shards.tokens(0, len(shards)).tolist()
    first_doc = first_doc[: first_doc.index(tokenizer.eos_token_id)]
    assert tokenizer.decode(first_doc).strip()  # real text, not special tokens
