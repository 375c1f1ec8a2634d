"""Drawing the tokenizer's training sample from the dedup artifact, one part per `parallel_map` job.

Documents are taken in the order of a seeded hash of their id: the first ones are held out to measure the
tokenizer, the next fill the sample up to a character budget. Each job reads one part and returns only the
documents of that part that could still be drawn (ids hashed, lengths, positions: no text); the parent merges
those a wave of parts at a time, then a second map reads the chosen texts part by part. This module imports
nothing of the training stack, so data workers stay small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from zero_chatgpt.parallel import ParallelMap, serial_map
from zero_chatgpt.tokenizer.corpus import check_columns, corpus_parts, doc_hash_keys

# Parts whose candidates the parent holds at once: the merge keeps at most one sample's worth of documents.
_PARTS_PER_WAVE = 64
_ROWS_PER_BATCH = 4096  # rows a worker decodes at once (the dedup parts are written in 5,000-row groups)


@dataclass
class CorpusSample:
    """Documents drawn for training (`sample`) and for measuring the result (`heldout`), in seeded order."""

    sample: list[str]
    heldout: list[str]
    corpus_docs: int
    capped_docs: int = 0  # sample documents cut to `max_doc_chars`


@dataclass(frozen=True)
class SampleBudget:
    """How much `draw_sample` takes: held-out documents, sample characters, characters per document."""

    seed: int
    max_sample_chars: int
    heldout_docs: int
    max_doc_chars: int | None = None


@dataclass
class Drawable:
    """Documents of the corpus as parallel arrays, shape (n,) each: id hash key, part number, row in the part and
    length in characters; `first_drawn` keeps them in draw order (key, then position)."""

    keys: np.ndarray
    parts: np.ndarray
    rows: np.ndarray
    lengths: np.ndarray

    @classmethod
    def empty(cls) -> Drawable:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def merged(self, other: Drawable) -> Drawable:
        return Drawable(*(np.concatenate(pair) for pair in zip(self.arrays(), other.arrays())))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.keys, self.parts, self.rows, self.lengths

    def first_drawn(self, budget: SampleBudget) -> Drawable:
        """Sorted in draw order and cut after the documents any larger corpus could still draw: the first
        `heldout_docs`, then the sample's worth of characters (more documents only push later ones out)."""
        # Ties on the hash (equal ids) fall back to position, so the order is total and reproducible.
        order = np.lexsort((self.rows, self.parts, self.keys))
        lengths = self.lengths[order][budget.heldout_docs :]
        if budget.max_doc_chars is not None:
            lengths = np.minimum(lengths, budget.max_doc_chars)
        keep = budget.heldout_docs + int(np.searchsorted(np.cumsum(lengths), budget.max_sample_chars, "left")) + 1
        return Drawable(*(array[order[:keep]] for array in self.arrays()))


@dataclass(frozen=True)
class PartCandidatesJob:
    path: str
    number: int
    budget: SampleBudget


@dataclass(frozen=True)
class PartTextsJob:
    path: str
    rows: tuple[int, ...]


def part_candidates(job: PartCandidatesJob) -> tuple[Drawable, int]:
    """Worker: the documents of one part that could still be drawn, and how many documents the part has.

    Reads the part a batch of rows at a time: a worker holds one batch of texts, not the part's."""
    check_columns(Path(job.path), ("id", "text"))
    drawable, num_rows = Drawable.empty(), 0
    for batch in pq.ParquetFile(job.path).iter_batches(batch_size=_ROWS_PER_BATCH, columns=["id", "text"]):
        ids, texts = batch.column("id"), batch.column("text")
        for name, column in (("id", ids), ("text", texts)):
            if column.null_count:
                first = num_rows + column.is_null().to_pylist().index(True)
                raise ValueError(f"{job.path}: a null `{name}` in row {first}")
        batch_docs = Drawable(
            keys=doc_hash_keys(job.budget.seed, ids.to_pylist()),
            parts=np.full(batch.num_rows, job.number, dtype=np.int32),
            rows=np.arange(num_rows, num_rows + batch.num_rows, dtype=np.int64),
            lengths=pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64),
        )
        drawable = drawable.merged(batch_docs).first_drawn(job.budget)
        num_rows += batch.num_rows
    return drawable, num_rows


def part_texts(job: PartTextsJob) -> list[str]:
    """Worker: the texts of the given rows of one part, in the order asked, read a row group at a time."""
    parquet = pq.ParquetFile(job.path)
    wanted = np.asarray(job.rows, dtype=np.int64)
    texts: list[str | None] = [None] * len(wanted)
    group_start = 0
    for group in range(parquet.metadata.num_row_groups):
        group_stop = group_start + parquet.metadata.row_group(group).num_rows
        here = np.flatnonzero((wanted >= group_start) & (wanted < group_stop))
        if here.size:
            column = parquet.read_row_group(group, columns=["text"]).column("text")
            for position, text in zip(here, column.take(pa.array(wanted[here] - group_start)).to_pylist()):
                texts[position] = text
        group_start = group_stop
    return texts


def draw_sample(
    corpus_dir: Path,
    seed: int,
    max_sample_chars: int,
    heldout_docs: int,
    max_doc_chars: int | None = None,
    parallel_map: ParallelMap = serial_map,
) -> CorpusSample:
    """Order all documents by a seeded hash of their id; the first ones are held out, the next fill the sample.

    The held-out set is `min(heldout_docs, 10% of the corpus)` documents. The sample takes documents, each cut
    to `max_doc_chars`, until `max_sample_chars`; the one that crosses the cap is cut to fit. Memory stays at a
    wave of parts' candidates plus the sample, however big the corpus.
    """
    budget = SampleBudget(seed, max_sample_chars, heldout_docs, max_doc_chars)
    parts = [str(path) for path in corpus_parts(corpus_dir)]
    drawable, num_docs = Drawable.empty(), 0
    jobs = [PartCandidatesJob(path, number, budget) for number, path in enumerate(parts)]
    with tqdm(total=len(jobs), desc="tokenizer sample: ids", unit="part", leave=False) as progress:
        for start in range(0, len(jobs), _PARTS_PER_WAVE):
            for candidates, part_docs in parallel_map(part_candidates, jobs[start : start + _PARTS_PER_WAVE]):
                drawable = drawable.merged(candidates).first_drawn(budget)
                num_docs += part_docs
                progress.update()
    num_heldout = min(heldout_docs, num_docs // 10)

    sample_lengths = drawable.lengths[num_heldout:]
    if max_doc_chars is not None:
        sample_lengths = np.minimum(sample_lengths, max_doc_chars)
    num_sample = int(np.searchsorted(np.cumsum(sample_lengths), max_sample_chars, side="left")) + 1
    num_chosen = num_heldout + min(num_sample, num_docs - num_heldout)

    wanted: dict[int, list[tuple[int, int]]] = {}
    for position in range(num_chosen):
        wanted.setdefault(int(drawable.parts[position]), []).append((int(drawable.rows[position]), position))
    numbers = sorted(wanted)
    texts: list[str] = [""] * num_chosen
    chosen = parallel_map(part_texts, [PartTextsJob(parts[n], tuple(row for row, _ in wanted[n])) for n in numbers])
    for number, part_chosen in zip(numbers, chosen):
        for (_, position), text in zip(wanted[number], part_chosen):
            texts[position] = text

    sample = texts[num_heldout:]
    capped = sum(len(text) > max_doc_chars for text in sample) if max_doc_chars is not None else 0
    if capped:
        sample = [text[:max_doc_chars] for text in sample]
    overflow = sum(map(len, sample)) - max_sample_chars
    if overflow > 0:
        sample[-1] = sample[-1][: len(sample[-1]) - overflow]
    return CorpusSample(sample=sample, heldout=texts[:num_heldout], corpus_docs=num_docs, capped_docs=capped)
