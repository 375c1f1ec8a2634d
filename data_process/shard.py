"""The `shard` stage: tokenise the deduplicated corpus into `train_XXXXX.bin` / `val_XXXXX.bin` token shards.

Format and reader: `data_process.token_shards` (read shards back only through `TokenShards`). Every document
is followed by the EOS id; a document never spans two files. The split is by document: a seeded hash of the
document id against `val_fraction`, so a document keeps its split when the corpus grows or is reordered.

Tokenisation fans out through `parallel_map` in jobs of up to `docs_per_batch` documents and
`chars_per_batch` characters; results come back in job order and are written by this process alone, so the
bytes on disk do not depend on the number of workers.
Workers encode with the train_tokenizer stage's sentencepiece model (`tokenizer.model`), whose ids equal the
Hugging Face tokenizer's for plain text, and which never turns text such as "<|endoftext|>" into a special id.
A base model's dir (continued pretraining) has no such file: its own fast tokenizer encodes, without special
tokens, and its end-of-text token ends each document.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import sentencepiece as spm
from tqdm import tqdm

from zero_chatgpt.config import ShardConfig
from zero_chatgpt.data_process.token_shards import ShardWriter, dtype_for_vocab, write_meta
from zero_chatgpt.parallel import ParallelMap, serial_map
from zero_chatgpt.stage_files import SP_MODEL_FILE
from zero_chatgpt.tokenizer.corpus import corpus_parts, doc_hash_keys, hash_key_to_unit, read_checked_table, read_part

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
# Jobs handed to `parallel_map` per call: enough to keep every worker busy, few enough that only this many
# batches of text are held in memory at once.
JOBS_PER_WAVE = 64


@dataclass
class ShardJob:
    """One batch of documents to tokenise; `is_val[i]` says which split `texts[i]` goes to."""

    tokenizer_dir: str
    texts: list[str]
    is_val: list[bool]


@dataclass
class SplitTokens:
    """Tokens of one split from one job: `tokens` (num_tokens,) in the shard dtype (`dtype_for_vocab`: what a
    worker sends back is no wider than what is written), every document EOS-terminated; `doc_lengths`
    (num_docs,) int64, tokens per document including its EOS."""

    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    doc_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class ShardJobResult:
    """What a worker sends back: the tokens of each split, and how many empty documents it skipped."""

    splits: dict[str, SplitTokens]
    empty_docs: int


@dataclass(frozen=True)
class DocumentEncoder:
    """Plain text -> token ids for the shards: `encode(texts)`, the `vocab_size` and the `eos_id` ending each doc."""

    encode: Callable[[list[str]], list[list[int]]]
    vocab_size: int
    eos_id: int


_LOADED: dict[str, DocumentEncoder] = {}


def load_encoder(tokenizer_dir: str | Path) -> DocumentEncoder:
    """The encoder of a train_tokenizer dir (its sentencepiece model) or of a base model's dir (its fast
    tokenizer), loaded once per process."""
    key = str(tokenizer_dir)
    if key not in _LOADED:
        path = Path(tokenizer_dir) / SP_MODEL_FILE
        _LOADED[key] = _sentencepiece_encoder(path) if path.is_file() else _hf_encoder(Path(tokenizer_dir))
    return _LOADED[key]


def _sentencepiece_encoder(path: Path) -> DocumentEncoder:
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if sp.eos_id() < 0:
        raise ValueError(f"{path}: the model has no EOS piece")
    # One thread: the parallelism is across jobs (processes), and extra threads would fight over the cores.
    return DocumentEncoder(
        lambda texts: sp.encode(texts, out_type=int, num_threads=1), sp.get_piece_size(), sp.eos_id()
    )


def _hf_encoder(tokenizer_dir: Path) -> DocumentEncoder:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{tokenizer_dir} holds neither {SP_MODEL_FILE} (a train_tokenizer dir) nor a tokenizer the Auto "
            f"classes load (a base model dir): {err}"
        ) from err
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{tokenizer_dir}: the tokenizer has no end-of-text token to end each document with")
    return DocumentEncoder(
        lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"], len(tokenizer), tokenizer.eos_token_id
    )


def tokenize_job(job: ShardJob) -> ShardJobResult:
    """Encode a batch in one call and EOS-terminate each document; empty documents are skipped and counted."""
    encoder = load_encoder(job.tokenizer_dir)
    eos = encoder.eos_id
    dtype = dtype_for_vocab(encoder.vocab_size)
    keep = [i for i, text in enumerate(job.texts) if text]
    encoded = encoder.encode([job.texts[i] for i in keep])
    splits = {}
    for split, wanted in (("train", False), ("val", True)):
        flat: list[int] = []
        lengths: list[int] = []
        for i, ids in zip(keep, encoded):
            if job.is_val[i] == wanted:
                flat.extend(ids)
                flat.append(eos)
                lengths.append(len(ids) + 1)
        tokens = np.array(flat, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
            raise ValueError(f"token id out of range for {dtype}: {int(tokens.min())}..{int(tokens.max())}")
        splits[split] = SplitTokens(tokens.astype(dtype), np.array(lengths, dtype=np.int64))
    return ShardJobResult(splits=splits, empty_docs=len(job.texts) - len(keep))


def assign_validation(
    seed: int, doc_ids: list[object], val_fraction: float, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Which documents go to validation, shape (num_docs,) bool: seeded hash of the id below `val_fraction`."""
    return validation_mask(hash_key_to_unit(doc_hash_keys(seed, doc_ids)), val_fraction, eligible)


def validation_mask(units: np.ndarray, val_fraction: float, eligible: np.ndarray | None = None) -> np.ndarray:
    """`units < val_fraction`, shape (num_docs,) bool, for per-document hash units in [0, 1).

    Among `eligible` documents (default all; the stage excludes empty ones) train is never empty, and with
    two or more val is not either: the highest-hashed document moves to train if all landed in val, the
    lowest-hashed to val if none did.
    """
    is_val = units < val_fraction
    candidates = np.flatnonzero(np.ones(units.size, dtype=bool) if eligible is None else eligible)
    if candidates.size >= 1 and is_val[candidates].all():
        is_val[candidates[np.argmax(units[candidates])]] = False
    if candidates.size >= 2 and not is_val[candidates].any():
        is_val[candidates[np.argmin(units[candidates])]] = True
    return is_val


def batch_bounds(doc_chars: list[int], docs_per_batch: int, chars_per_batch: int) -> list[tuple[int, int]]:
    """`[start, stop)` document ranges: a batch closes at `docs_per_batch` documents or once it holds
    `chars_per_batch` characters (a single longer document is a batch of its own)."""
    bounds, start, chars = [], 0, 0
    for index, length in enumerate(doc_chars):
        if index > start and (index - start >= docs_per_batch or chars + length > chars_per_batch):
            bounds.append((start, index))
            start, chars = index, 0
        chars += length
    if start < len(doc_chars):
        bounds.append((start, len(doc_chars)))
    return bounds


def shard_corpus(
    cfg: ShardConfig,
    corpus_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    seed: int,
    parallel_map: ParallelMap = serial_map,
) -> dict:
    """Tokenise every document of `corpus_dir` into token shards in `out_dir`; returns metrics.

    Metrics: `train_tokens`, `val_tokens`, `dtype`, `train_docs`, `val_docs`, `tokens_per_s`, ...
    """
    started = time.perf_counter()
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = corpus_parts(corpus_dir)
    encoder = load_encoder(tokenizer_dir)
    vocab_size, eos_id = encoder.vocab_size, encoder.eos_id
    dtype = dtype_for_vocab(vocab_size)

    # Pass 1, id hashes and emptiness: the split must see every document first to guarantee a non-empty
    # validation set.
    units, non_empty, part_sizes = [], [], []
    for path in tqdm(parts, desc="shard: ids", unit="part", leave=False):
        table = read_checked_table(path, ("id", "text"))
        units.append(hash_key_to_unit(doc_hash_keys(seed, table.column("id").to_pylist())))
        non_empty.append(pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False) > 0)
        part_sizes.append(table.num_rows)
    is_val_all = validation_mask(np.concatenate(units), cfg.val_fraction, eligible=np.concatenate(non_empty))
    is_val_parts = np.split(is_val_all, np.cumsum(part_sizes)[:-1])
    log.info(
        "sharding %d documents from %d parts: %d val, dtype %s, vocab %d",
        is_val_all.size,
        len(parts),
        int(is_val_all.sum()),
        dtype.name,
        vocab_size,
    )

    writers = {split: ShardWriter(out_dir, split, dtype, cfg.tokens_per_shard) for split in SPLITS}
    docs = {split: 0 for split in SPLITS}
    empty_docs = 0
    progress = tqdm(total=int(is_val_all.size), desc="shard", unit="doc")

    def run_wave(jobs: list[ShardJob]) -> None:
        nonlocal empty_docs
        for job, result in zip(jobs, parallel_map(tokenize_job, jobs)):
            empty_docs += result.empty_docs
            for split in SPLITS:
                written = _write_documents(writers[split], result.splits[split])
                docs[split] += written
            progress.update(len(job.texts))

    pending: list[ShardJob] = []
    for path, is_val in zip(parts, is_val_parts):
        texts = read_part(path, ("text",))["text"]
        for start, stop in batch_bounds([len(t) for t in texts], cfg.docs_per_batch, cfg.chars_per_batch):
            pending.append(ShardJob(str(tokenizer_dir), texts[start:stop], is_val[start:stop].tolist()))
            if len(pending) >= JOBS_PER_WAVE:
                run_wave(pending)
                pending = []
    if pending:
        run_wave(pending)
    progress.close()

    files = {split: writers[split].close() for split in SPLITS}
    if empty_docs:
        log.warning("%d empty documents skipped (no tokens to write)", empty_docs)
    if docs["val"] == 0:
        log.warning("no validation documents: the corpus has fewer than 2 non-empty documents")
    meta = write_meta(
        out_dir,
        dtype,
        vocab_size,
        eos_id,
        files,
        train_docs=docs["train"],
        val_docs=docs["val"],
        empty_docs=empty_docs,
        val_fraction=cfg.val_fraction,
        seed=seed,
    )
    seconds = time.perf_counter() - started
    total_tokens = meta["train_tokens"] + meta["val_tokens"]
    metrics = {
        "train_tokens": meta["train_tokens"],
        "val_tokens": meta["val_tokens"],
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "train_docs": docs["train"],
        "val_docs": docs["val"],
        "empty_docs": empty_docs,
        "train_files": len(files["train"]),
        "val_files": len(files["val"]),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(total_tokens / seconds, 1) if seconds > 0 else None,
    }
    log.info("shards written to %s: %s", out_dir, metrics)
    return metrics


def _write_documents(writer: ShardWriter, split_tokens: SplitTokens) -> int:
    """Write whole documents, several per call, starting a new file only between documents; returns the count.

    File boundaries match writing one document per call: a document goes into the current file when that file
    holds fewer than `tokens_per_shard` tokens before it.
    """
    lengths = split_tokens.doc_lengths
    ends = np.cumsum(lengths)
    first = 0
    while first < lengths.size:
        in_current = writer.files[-1]["tokens"] if writer.files else writer.tokens_per_shard
        room = writer.tokens_per_shard - in_current if in_current < writer.tokens_per_shard else writer.tokens_per_shard
        offset = int(ends[first - 1]) if first else 0
        starts = ends[first:] - lengths[first:] - offset
        last = first + max(1, int(np.searchsorted(starts, room, side="left")))
        # The writer checks the id range before narrowing to the shard dtype.
        writer.write(split_tokens.tokens[offset : int(ends[last - 1])])
        first = last
    return int(lengths.size)
