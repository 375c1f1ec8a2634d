"""The `train_tokenizer` stage: a sentencepiece BPE tokenizer with byte fallback, exported for Hugging Face.

Output dir:
    tokenizer.model          sentencepiece model (the reference encoder; the shard stage uses it)
    tokenizer.json, tokenizer_config.json, chat_template.jinja
                             the same tokenizer for `transformers.AutoTokenizer.from_pretrained(out_dir)`

`decode(encode(text)) == text` holds for any Unicode text: no normalisation, no dummy prefix, whitespace kept
as is (runs of spaces may become one piece), digits split one per piece, and characters outside the vocab
spelled as UTF-8 byte pieces. Special tokens and their ids are in `tokenizer.chat`.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import sentencepiece as spm

from zero_chatgpt.config import TrainTokenizerConfig
from zero_chatgpt.parallel import ParallelMap, serial_map
from zero_chatgpt.tokenizer.chat import ENDOFTEXT, ENDOFTEXT_ID, IM_END, IM_START, PAD, PAD_ID, UNK, UNK_ID
from zero_chatgpt.tokenizer.corpus import is_chinese
from zero_chatgpt.tokenizer.files import SP_MODEL_FILE
from zero_chatgpt.tokenizer.hf_export import export_hf_tokenizer
from zero_chatgpt.tokenizer.sample import draw_sample

log = logging.getLogger(__name__)

# Pieces sentencepiece reserves before learning any: <unk>, 4 special tokens, 256 bytes.
RESERVED_PIECES = 5 + 256


def train_tokenizer(
    cfg: TrainTokenizerConfig,
    corpus_dir: Path,
    out_dir: Path,
    seed: int,
    num_threads: int | None = None,
    parallel_map: ParallelMap = serial_map,
) -> dict:
    """Train on a seeded, capped sample of `corpus_dir`'s documents; write the tokenizer into `out_dir`.

    Returns metrics: `vocab_size`, `chars_per_token_zh` / `chars_per_token_en` (on held-out documents; None
    when the held-out set has no document of that language), `sample_chars`, `sample_docs`, ...
    `num_threads` (sentencepiece trainer threads) and `parallel_map` (who reads the parts for the sample)
    change speed only.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = draw_sample(Path(corpus_dir), seed, cfg.max_sample_chars, cfg.heldout_docs, cfg.max_doc_chars, parallel_map)
    lines = list(training_lines(drawn.sample, cfg.max_sentence_length))
    kept_chars, coverage = character_vocabulary(lines, cfg)
    lines = without_rare_characters(lines, kept_chars)
    log.info(
        "training sentencepiece BPE: vocab %d, %d docs, %d chars, %d lines, %d characters cover %.6f",
        cfg.vocab_size,
        len(drawn.sample),
        sum(map(len, drawn.sample)),
        len(lines),
        len(kept_chars),
        coverage,
    )
    model_bytes = train_sentencepiece(lines, cfg, num_threads or min(os.cpu_count() or 1, 16))
    sp_path = out_dir / SP_MODEL_FILE
    sp_path.write_bytes(model_bytes)
    export_hf_tokenizer(sp_path, out_dir)

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    metrics = {
        "vocab_size": sp.get_piece_size(),
        **heldout_compression(sp, drawn.heldout),
        "sample_chars": sum(map(len, drawn.sample)),
        "sample_docs": len(drawn.sample),
        "sample_docs_capped": drawn.capped_docs,
        "corpus_docs": drawn.corpus_docs,
        "character_coverage": round(coverage, 6),
        "train_seconds": round(time.perf_counter() - started, 3),
    }
    log.info("tokenizer written to %s: %s", out_dir, metrics)
    return metrics


def training_lines(docs: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Documents cut into sentencepiece training sentences of at most `max_bytes` UTF-8 bytes.

    sentencepiece silently skips longer sentences, so documents are split at newlines (kept, so newline
    pieces are learned) and consecutive lines are packed up to the limit; a single longer line is cut.
    """
    for doc in docs:
        packed, packed_bytes = [], 0
        lines = doc.split("\n")
        for number, line in enumerate(lines):
            if number < len(lines) - 1:
                line += "\n"
            size = len(line.encode("utf-8"))
            if packed and packed_bytes + size > max_bytes:
                yield "".join(packed)
                packed, packed_bytes = [], 0
            if size > max_bytes:
                # 4 bytes per character at most, so each slice fits.
                step = max_bytes // 4
                yield from (line[i : i + step] for i in range(0, len(line), step))
                continue
            packed.append(line)
            packed_bytes += size
        if packed:
            yield "".join(packed)


def character_vocabulary(lines: list[str], cfg: TrainTokenizerConfig) -> tuple[set[str], float]:
    """The characters that get their own piece, and the share of character occurrences they cover.

    Most frequent first, until `cfg.character_coverage` of all occurrences is covered (what sentencepiece does),
    but never more than `max_char_share` of the learnable vocab: with a small vocab and a CJK corpus the
    coverage alone can ask for more characters than the whole vocab (and sentencepiece will not go below
    0.98). Characters left out are spelled with byte pieces.
    """
    counts: Counter = Counter()
    for line in lines:
        counts.update(line)
    budget = int((cfg.vocab_size - RESERVED_PIECES) * cfg.max_char_share)
    if budget < 1:
        raise ValueError(
            f"train_tokenizer.vocab_size={cfg.vocab_size} leaves no room for characters after "
            f"{RESERVED_PIECES} reserved pieces"
        )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    total = sum(counts.values())
    covered = np.cumsum([count for _, count in ranked]) / total
    needed = int(np.searchsorted(covered, cfg.character_coverage, side="left")) + 1
    keep = min(needed, budget, len(ranked))
    if needed > budget:
        log.warning(
            "character_coverage %.6f needs %d single-character pieces, more than max_char_share %.2f of "
            "vocab %d allows (%d); the %d most frequent characters cover %.6f, the rest fall back to bytes",
            cfg.character_coverage,
            needed,
            cfg.max_char_share,
            cfg.vocab_size,
            budget,
            keep,
            covered[keep - 1],
        )
    return {char for char, _ in ranked[:keep]}, float(covered[keep - 1])


def without_rare_characters(lines: list[str], kept: set[str]) -> list[str]:
    """Lines split at every character outside `kept`, which is dropped.

    The encoder spells such a character with byte pieces, so no learned piece can span it; cutting the line
    there trains on what encoding will actually see.
    """
    rare = {char for line in lines for char in set(line)} - kept
    if not rare:
        return lines
    cut = next(chr(c) for c in range(0xE000, 0x110000) if chr(c) not in kept)  # a private-use mark
    table = str.maketrans({char: cut for char in rare})
    return [piece for line in lines for piece in line.translate(table).split(cut) if piece]


def train_sentencepiece(lines: list[str], cfg: TrainTokenizerConfig, num_threads: int) -> bytes:
    """Train the BPE model on `lines` (rare characters already removed); returns the `.model` bytes."""
    if not lines:
        raise ValueError("train_tokenizer: the corpus sample is empty (no documents with text)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="bpe",
            vocab_size=cfg.vocab_size,
            character_coverage=1.0,  # the character set was chosen by `character_vocabulary`
            max_sentence_length=cfg.max_sentence_length,
            input_sentence_size=0,  # the sample is already drawn and capped; use all of it
            # Exact round trip: no normalisation, no added or collapsed whitespace.
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            byte_fallback=True,
            # Fixed special ids (see tokenizer.chat). Control pieces are never produced from text.
            unk_id=UNK_ID,
            unk_piece=UNK,
            bos_id=-1,
            eos_id=ENDOFTEXT_ID,
            eos_piece=ENDOFTEXT,
            pad_id=PAD_ID,
            pad_piece=PAD,
            control_symbols=[IM_START, IM_END],
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise RuntimeError(
            f"sentencepiece training failed (train_tokenizer.vocab_size={cfg.vocab_size}, {len(lines)} lines): {err}"
        ) from None
    return model.getvalue()


def heldout_compression(sp: spm.SentencePieceProcessor, docs: list[str]) -> dict:
    """Characters per token on held-out documents, per language (Chinese by CJK share, else English)."""
    chars = {"zh": 0, "en": 0}
    tokens = {"zh": 0, "en": 0}
    counts = {"zh": 0, "en": 0}
    for doc, ids in zip(docs, sp.encode(docs) if docs else []):
        language = "zh" if is_chinese(doc) else "en"
        chars[language] += len(doc)
        tokens[language] += len(ids)
        counts[language] += 1
    result: dict = {}
    for language in ("zh", "en"):
        ratio = chars[language] / tokens[language] if tokens[language] else None
        result[f"chars_per_token_{language}"] = round(ratio, 4) if ratio is not None else None
        result[f"heldout_docs_{language}"] = counts[language]
    return result
