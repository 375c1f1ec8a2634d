"""The `clean` stage: normalise and filter raw documents, keeping every dropped row with its reason.

Rules follow Zero-Chatgpt's corpus cleaning, written as small functions: transforms take text and return
new text; filters take text and return `(keep, reason)`. `clean_text` runs the transforms, then the
filters, and names the first rule that drops a document.

Output in `out_dir`:

- `part_00000.parquet`, ...: columns `id`, `text`, `source` (strings), `docs_per_shard` rows each (the last
  may hold fewer), in source order, then file order, then line order, in row groups of `ROW_GROUP_ROWS`;
- `rejected.parquet`: columns `id`, `source`, `line` (int, null when unknown), `rule` (a cleaning rule or
  `quarantine`), `reason`, `text` (the raw row or text): every input row that is not in a part file.

Ids are unique in the output: a row whose id an earlier good row (in that order) already used is
quarantined as `duplicate_id`, never merged.

Work fans out through `parallel_map` twice. First every source file is cut into spans of lines (`plan_units`:
a one-file corpus keeps every worker busy too), and each worker cleans one span into `out_dir/_work/` (kept rows
as an Arrow file, rejected rows, ids). Then this process finds ids used twice and plans the parts, and each
worker gathers one part's rows from those files and writes it. This process never holds the documents: its
memory does not grow with the corpus beyond 8 bytes per document (an id hash), and the output is the same
however the input was split.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zero_chatgpt.config import CleanConfig, DemoCorpusConfig, TextSource
from zero_chatgpt.data_process.sources import (
    FileSpan,
    SourceError,
    describe_source,
    expand_source_files,
    file_spans,
    is_quarantined,
    no_valid_rows_message,
    read_span_rows,
    read_text_rows,
    reason_kind,
)
from zero_chatgpt.data_process.text_script import CJK_CHAR_RE, cjk_char_count
from zero_chatgpt.parallel import ParallelMap, serial_map

logger = logging.getLogger(__name__)

DOC_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
REJECTED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("line", pa.int64()),
        ("rule", pa.string()),
        ("reason", pa.string()),
        ("text", pa.string()),
    ]
)
REJECTED_FILE = "rejected.parquet"
QUARANTINE_RULE = "quarantine"
# Rows per parquet row group of the part files. Readers take slices (dedup signs 5,000-row jobs, shard tokenises
# 1,000-document batches) and parquet decodes whole row groups: groups this small waste little on any slice.
ROW_GROUP_ROWS = 1000
_WORK_DIR = "_work"
_REJECTED_FLUSH_ROWS = 10_000
# A corpus is cut into about this many units (file spans), each between these sizes.
_UNITS_PER_CORPUS = 128
_MIN_UNIT_BYTES = 4 << 20
_MAX_UNIT_BYTES = 256 << 20

# ------------------------------------------------------------------------------------------- transforms

# Full-width punctuation that NFKC would turn into ASCII (，-> ,  …-> ...). Chinese prose keeps these.
_CJK_PUNCTUATION_RE = re.compile("([，！？：；（）～…])")
_WORD_RE = re.compile(r"[^\W_]+")
# Citation marks: [1], [12], [1-2], [1,3], [1, 3, 5], [1–3] (en dash), [1，2]. Three digits at most, so
# a bracketed year such as [2023] is kept.
_CITATION_RE = re.compile(r"\[\s*\d{1,3}(?:\s*[-–,，、]\s*\d{1,3})*\s*\]")
_REPEATED_MARK_RE = re.compile(r"([^\w\s])\1+")
# Marks written twice as a single Chinese punctuation mark (…… ellipsis, —— dash): runs collapse to a pair.
_PAIRED_MARKS = frozenset("…—")
# "..." is an ordinary ellipsis whatever max_punctuation_run says.
_MIN_KEPT_RUN = {".": 3}


def normalize_unicode(text: str, form: str, keep_cjk_punctuation: bool = True) -> str:
    """Unicode normal form `form` (NFC / NFKC / none); under NFKC optionally leave CJK punctuation as written."""
    if form == "none":
        return text
    if form != "NFKC" or not keep_cjk_punctuation:
        return unicodedata.normalize(form, text)
    # re.split with a capture group puts the protected marks at odd indices.
    pieces = _CJK_PUNCTUATION_RE.split(text)
    return "".join(piece if i % 2 else unicodedata.normalize(form, piece) for i, piece in enumerate(pieces))


def normalize_newlines(text: str) -> str:
    """Windows and old Mac line ends become `\\n`; leading and trailing whitespace goes."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def strip_citations(text: str) -> str:
    """Remove citation marks such as `[1]`, `[1-2]`, `[1,3]` (encyclopedia footnote references)."""
    return _CITATION_RE.sub("", text)


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P") or char in "~～"


def collapse_punctuation_runs(text: str, max_run: int) -> str:
    """Shorten runs of one repeated punctuation mark (`!!!!!`, `。。。。`) to `max_run` marks.

    `……` and `——` are single Chinese marks written with two characters: their runs shrink to one pair.
    `...` is kept as an ellipsis. Symbols that are not punctuation (`====`, `$$$`) are left alone.
    """

    def shorten(match: re.Match[str]) -> str:
        run = match.group(0)
        mark = match.group(1)
        if not _is_punctuation(mark):
            return run
        keep = 2 if mark in _PAIRED_MARKS else max(max_run, _MIN_KEPT_RUN.get(mark, 0))
        return mark * min(len(run), keep)

    return _REPEATED_MARK_RE.sub(shorten, text)


def apply_transforms(text: str, cfg: CleanConfig) -> str:
    """Every text transform of the config, in order: unicode, citations, punctuation runs, line ends."""
    text = normalize_unicode(text, cfg.unicode_form, cfg.keep_cjk_punctuation)
    if cfg.strip_citations:
        text = strip_citations(text)
    text = collapse_punctuation_runs(text, cfg.max_punctuation_run)
    return normalize_newlines(text)


# -------------------------------------------------------------------------------------------- filters


def length_units(text: str) -> int:
    """Length as CJK characters plus non-CJK words (`"北京 is big"` -> 2 + 2 = 4)."""
    cjk = cjk_char_count(text)
    words = len(_WORD_RE.findall(CJK_CHAR_RE.sub(" ", text)))
    return cjk + words


def filter_empty(text: str, cfg: CleanConfig) -> tuple[bool, str]:
    """Drop documents that cleaning emptied (e.g. a row that held only citation marks)."""
    return (True, "") if text.strip() else (False, "empty after cleaning")


def filter_min_length(text: str, cfg: CleanConfig) -> tuple[bool, str]:
    """Drop documents shorter than `min_length` CJK characters plus non-CJK words."""
    units = length_units(text)
    if units < cfg.min_length:
        return False, f"{units} CJK characters + words < min_length {cfg.min_length}"
    return True, ""


def filter_whitespace(text: str, cfg: CleanConfig) -> tuple[bool, str]:
    """Drop documents whose share of whitespace characters exceeds `max_whitespace_ratio` (tables, layout)."""
    if not text:
        return True, ""
    ratio = sum(map(str.isspace, text)) / len(text)
    if ratio > cfg.max_whitespace_ratio:
        return False, f"whitespace ratio {ratio:.2f} > {cfg.max_whitespace_ratio}"
    return True, ""


def filter_section_keywords(text: str, cfg: CleanConfig) -> tuple[bool, str]:
    """Drop person / product introductions: documents with `max_section_keyword_hits`+ section headings."""
    folded = text.casefold()
    hits = {keyword: folded.count(keyword.casefold()) for keyword in cfg.section_keywords if keyword}
    total = sum(hits.values())
    if total >= cfg.max_section_keyword_hits:
        found = ", ".join(f"{k}x{n}" for k, n in hits.items() if n)
        return False, f"{total} section keyword hits >= {cfg.max_section_keyword_hits} ({found})"
    return True, ""


# Rule name -> filter, in the order they are tried. The names are the keys of the `dropped` metric.
FILTERS: dict[str, Callable[[str, CleanConfig], tuple[bool, str]]] = {
    "empty": filter_empty,
    "min_length": filter_min_length,
    "whitespace": filter_whitespace,
    "section_keywords": filter_section_keywords,
}


@dataclass(frozen=True)
class CleanResult:
    """The cleaned text, or the rule that dropped the document and why."""

    text: str
    rule: str | None = None
    reason: str = ""

    @property
    def kept(self) -> bool:
        return self.rule is None


def clean_text(text: str, cfg: CleanConfig) -> CleanResult:
    """Transform one document, then run the filters; the first failing filter names the drop."""
    cleaned = apply_transforms(text, cfg)
    for rule, keep_document in FILTERS.items():
        keep, reason = keep_document(cleaned, cfg)
        if not keep:
            return CleanResult(cleaned, rule, reason)
    return CleanResult(cleaned)


# ------------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class CleanUnit:
    """One piece of work: a span of one source file, or a whole source (demo, hf and `limit` sources)."""

    index: int
    source_index: int
    source: TextSource
    files: tuple[str, ...] | None  # whole files, read in order (a `limit` source); None: the span, or no files
    span: FileSpan | None
    demo: DemoCorpusConfig
    cfg: CleanConfig
    seed: int
    work_dir: str

    def prefix(self) -> str:
        return f"u{self.index:05d}"

    def describe(self) -> str:
        if self.span is not None:
            return f"{self.span.path} from line {self.span.first_line}"
        return ",".join(self.files or ())


@dataclass
class UnitSummary:
    """What a worker reports back: small counts and file names, never the rows themselves."""

    index: int
    source_index: int
    kept_file: str | None = None  # the kept rows, in input order, as an Arrow IPC file
    rejected_file: str | None = None
    ids_file: str | None = None
    docs_in: int = 0
    good_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    quarantine_reasons: Counter = field(default_factory=Counter)
    quarantine_examples: list[dict[str, Any]] = field(default_factory=list)  # the first few, for error messages


@dataclass(frozen=True)
class PartJob:
    """One output part: consecutive kept rows `(kept file, first row, stop row)` of one or more units."""

    path: str
    pieces: tuple[tuple[str, int, int], ...]


def _id_hash(doc_id: str) -> int:
    """A 64-bit digest of an id: duplicates are found by sorting numbers, not by holding every string."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


class _RowGroupWriter:
    """Streams rows or tables into one parquet file in row groups of exactly `rows_per_group` rows (the last may
    be shorter), whatever sizes they arrive in: the file's bytes do not depend on how the work was split."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = ROW_GROUP_ROWS) -> None:
        self.path, self.schema, self.rows_per_group = path, schema, rows_per_group
        self.rows: list[dict[str, Any]] = []
        self.tables: list[pa.Table] = []
        self.buffered = 0
        self.count = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._added(1)

    def add_table(self, table: pa.Table) -> None:
        self._rows_to_table()
        self.tables.append(table.cast(self.schema))
        self._added(table.num_rows)

    def _added(self, rows: int) -> None:
        self.count += rows
        self.buffered += rows
        if self.buffered >= self.rows_per_group:
            self._write(final=False)

    def _rows_to_table(self) -> None:
        if self.rows:
            self.tables.append(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _write(self, final: bool) -> None:
        self._rows_to_table()
        if not self.tables:
            return
        table = pa.concat_tables(self.tables).combine_chunks()
        whole = table.num_rows if final else table.num_rows - table.num_rows % self.rows_per_group
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        if whole:
            self._writer.write_table(table.slice(0, whole), row_group_size=self.rows_per_group)
        rest = table.slice(whole)
        self.tables, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> bool:
        """Finish the file; False when nothing was written (no file exists)."""
        self._write(final=True)
        if self._writer is None:
            return False
        self._writer.close()
        return True


class _KeptRowsWriter:
    """Streams a unit's kept documents into an Arrow IPC file in batches of `ROW_GROUP_ROWS` rows, which the part
    writers read back a batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: dict[str, list[str]] = {name: [] for name in DOC_SCHEMA.names}
        self._writer = pa.ipc.new_file(path, DOC_SCHEMA)

    def add(self, doc_id: str, text: str, source: str) -> None:
        self.columns["id"].append(doc_id)
        self.columns["text"].append(text)
        self.columns["source"].append(source)
        if len(self.columns["id"]) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        self._writer.write_table(pa.table(self.columns, schema=DOC_SCHEMA))
        for column in self.columns.values():
            column.clear()

    def close(self) -> None:
        if self.columns["id"]:
            self._flush()
        self._writer.close()


def _rejected_row(doc_id: str | None, row: dict[str, Any], rule: str, reason: str, text: str) -> dict[str, Any]:
    return {"id": doc_id, "source": row["source"], "line": row["line"], "rule": rule, "reason": reason, "text": text}


def clean_unit(unit: CleanUnit) -> UnitSummary:
    """Worker: read one unit's rows, clean them, write its kept and rejected rows under `work_dir`.

    Besides those, writes `<prefix>_ids.parquet` with one row per good input row (`id`, `line`, `kept`,
    `id_hash`) so the parent can find duplicate ids across all units without reading the texts.
    """
    work = Path(unit.work_dir)
    summary = UnitSummary(unit.index, unit.source_index)
    rejected = _RowGroupWriter(work / f"{unit.prefix()}_rejected.parquet", REJECTED_SCHEMA, _REJECTED_FLUSH_ROWS)
    if unit.span is not None:
        rows = read_span_rows(unit.source, unit.span)
    else:
        files = [Path(f) for f in unit.files] if unit.files is not None else None
        rows = read_text_rows(unit.source, unit.demo, unit.seed, files=files, require_rows=False)
    kept = _KeptRowsWriter(work / f"{unit.prefix()}_kept.arrow")
    ids: dict[str, list[Any]] = {"id": [], "line": [], "kept": [], "id_hash": []}
    for row in rows:
        summary.docs_in += 1
        if is_quarantined(row):
            summary.quarantine_reasons[reason_kind(row["reason"])] += 1
            if len(summary.quarantine_examples) < 3:
                summary.quarantine_examples.append({key: row[key] for key in ("source", "line", "reason")})
            rejected.add(_rejected_row(None, row, QUARANTINE_RULE, row["reason"], row["raw"]))
            continue
        summary.good_in += 1
        result = clean_text(row["text"], unit.cfg)
        ids["id"].append(row["id"])
        ids["line"].append(row["line"])
        ids["kept"].append(result.kept)
        ids["id_hash"].append(_id_hash(row["id"]))
        if not result.kept:
            summary.dropped[result.rule] += 1
            rejected.add(_rejected_row(row["id"], row, result.rule, result.reason, row["text"]))
            continue
        summary.kept += 1
        kept.add(row["id"], result.text, row["source"])
    kept.close()
    summary.kept_file = kept.path.name
    if rejected.close():
        summary.rejected_file = rejected.path.name
    if ids["id"]:
        summary.ids_file = f"{unit.prefix()}_ids.parquet"
        table = pa.table(
            {
                "id": pa.array(ids["id"], pa.string()),
                "line": pa.array(ids["line"], pa.int64()),
                "kept": pa.array(ids["kept"], pa.bool_()),
                "id_hash": pa.array(ids["id_hash"], pa.uint64()),
            }
        )
        pq.write_table(table, work / summary.ids_file)
    logger.info(
        "clean: %s %s: %d rows in, %d kept",
        describe_source(unit.source),
        unit.describe(),
        summary.docs_in,
        summary.kept,
    )
    return summary


def _unit_bytes(sources: list[TextSource]) -> int:
    """How many bytes of a file one unit reads: the corpus in about `_UNITS_PER_CORPUS` pieces, so every worker
    of a big machine has work and a small corpus still splits across a few, within sane bounds per unit."""
    total = sum(
        path.stat().st_size
        for source in sources
        if source.kind not in ("demo", "hf")
        for path in expand_source_files(source)
    )
    return int(min(_MAX_UNIT_BYTES, max(_MIN_UNIT_BYTES, total / _UNITS_PER_CORPUS)))


def plan_units(
    sources: list[TextSource], demo: DemoCorpusConfig, cfg: CleanConfig, seed: int, work_dir: Path
) -> list[CleanUnit]:
    """Every file of each local source cut into spans of about `_unit_bytes` (a one-file corpus too, so it uses
    every worker); demo, hf and `limit` sources are one unit each.

    A `limit` caps the good rows of the whole source, so its files must be read in order by one worker.
    Missing paths raise `SourceError` here, before any work starts.
    """
    span_bytes = _unit_bytes(sources)
    units: list[CleanUnit] = []

    def add(source_index: int, files: tuple[str, ...] | None, span: FileSpan | None) -> None:
        source = sources[source_index]
        units.append(CleanUnit(len(units), source_index, source, files, span, demo, cfg, seed, str(work_dir)))

    for source_index, source in enumerate(sources):
        files = expand_source_files(source)
        if source.kind in ("demo", "hf") or source.limit is not None:
            add(source_index, tuple(map(str, files)) or None, None)
            continue
        for path in files:
            for span in file_spans(source, path, span_bytes):
                add(source_index, None, span)
    return units


def _find_duplicate_ids(summaries: list[UnitSummary], work: Path) -> dict[int, dict[int, tuple[str, int]]]:
    """Kept rows whose id was already used by an earlier good row (in source, file, line order).

    Returns {unit index: {kept-row ordinal within the unit: (id, line)}}. The first occurrence wins even
    when a cleaning rule dropped it: an id names one input row.
    """
    tables = {s.index: pq.read_table(work / s.ids_file, columns=["id_hash", "kept"]) for s in summaries if s.ids_file}
    if not tables:
        return {}
    order = [s.index for s in summaries if s.index in tables]
    hashes = np.concatenate([tables[i].column("id_hash").to_numpy() for i in order])
    starts = np.cumsum([0] + [tables[i].num_rows for i in order])
    del tables  # the hashes are all this needs from now on
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse] > 1)  # global positions sharing a hash with another row
    if candidates.size == 0:
        return {}
    ids_files = {s.index: s.ids_file for s in summaries}
    seen: set[str] = set()
    duplicates: dict[int, dict[int, tuple[str, int]]] = {}
    loaded: dict[int, tuple[pa.Table, np.ndarray]] = {}
    for position in candidates:  # ascending, i.e. input order
        slot = int(np.searchsorted(starts, position, side="right") - 1)
        unit_index = order[slot]
        row = int(position - starts[slot])
        if unit_index not in loaded:
            table = pq.read_table(work / ids_files[unit_index])
            kept = table.column("kept").to_numpy(zero_copy_only=False)
            # kept_before[i]: how many kept rows precede row i, i.e. row i's position in the unit's kept file.
            loaded[unit_index] = (table, np.cumsum(kept) - kept)
        table, kept_before = loaded[unit_index]
        doc_id = table.column("id")[row].as_py()
        if doc_id not in seen:
            seen.add(doc_id)
        elif table.column("kept")[row].as_py():
            duplicates.setdefault(unit_index, {})[int(kept_before[row])] = (doc_id, table.column("line")[row].as_py())
    return duplicates


def _read_kept(path: Path) -> pa.Table:
    """A unit's kept rows, memory-mapped: slicing them reads only the rows asked for."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _quarantine_duplicates(
    summary: UnitSummary, duplicates: dict[int, tuple[str, int]], work: Path, rejected: _RowGroupWriter
) -> None:
    """Move the unit's kept rows that reuse an earlier id into the rejected rows."""
    kept = _read_kept(work / summary.kept_file)
    for ordinal in sorted(duplicates):
        doc_id, line = duplicates[ordinal]
        rejected.add(
            {
                "id": doc_id,
                "source": kept.column("source")[ordinal].as_py(),
                "line": line,
                "rule": QUARANTINE_RULE,
                "reason": f"duplicate_id: id {doc_id!r} was already used by an earlier row",
                "text": kept.column("text")[ordinal].as_py(),
            }
        )
    summary.kept -= len(duplicates)


def plan_parts(
    summaries: list[UnitSummary],
    duplicates: dict[int, dict[int, tuple[str, int]]],
    work: Path,
    out_dir: Path,
    docs_per_part: int,
) -> list[PartJob]:
    """The output parts: every unit's kept rows except duplicates, in unit order, `docs_per_part` rows a part
    (the last may hold fewer). The parts are the same however the input was split into units."""
    pieces: list[tuple[str, int, int]] = []  # consecutive surviving rows of one kept file
    for summary in summaries:
        if summary.kept_file is None:
            continue
        path, start = str(work / summary.kept_file), 0
        for ordinal in sorted(duplicates.get(summary.index, {})):
            pieces.append((path, start, ordinal))
            start = ordinal + 1
        pieces.append((path, start, summary.kept + len(duplicates.get(summary.index, {}))))
    jobs: list[PartJob] = []
    current: list[tuple[str, int, int]] = []
    room = docs_per_part
    for path, start, stop in pieces:
        while stop > start:
            take = min(room, stop - start)
            current.append((path, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                jobs.append(PartJob(str(out_dir / f"part_{len(jobs):05d}.parquet"), tuple(current)))
                current, room = [], docs_per_part
    if current:
        jobs.append(PartJob(str(out_dir / f"part_{len(jobs):05d}.parquet"), tuple(current)))
    return jobs


def write_part(job: PartJob) -> int:
    """Worker: copy one part's rows from the units' kept files into it, a row group at a time; returns its
    characters."""
    part = _RowGroupWriter(Path(job.path), DOC_SCHEMA, ROW_GROUP_ROWS)
    chars = 0
    for path, start, stop in job.pieces:
        for batch in _kept_batches(Path(path), start, stop):
            chars += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
            part.add_table(pa.Table.from_batches([batch]))
    part.close()
    return chars


def _kept_batches(path: Path, start: int, stop: int) -> Iterator[pa.RecordBatch]:
    """Rows [start, stop) of a kept file, reading only the batches that hold them (`_KeptRowsWriter` writes
    batches of `ROW_GROUP_ROWS` rows, the last one shorter)."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for index in range(start // ROW_GROUP_ROWS, reader.num_record_batches):
            batch_start = index * ROW_GROUP_ROWS
            if batch_start >= stop:
                break
            batch = reader.get_batch(index)
            first = max(start, batch_start)
            yield batch.slice(first - batch_start, min(stop, batch_start + batch.num_rows) - first)


def clean_corpus(
    sources: list[TextSource],
    demo: DemoCorpusConfig,
    cfg: CleanConfig,
    out_dir: Path,
    seed: int,
    parallel_map: ParallelMap = serial_map,
) -> dict[str, Any]:
    """Clean every text source into `out_dir` (see the module docstring for the layout); returns metrics.

    Metrics: `docs_in`, `docs_out`, `dropped` ({rule: count}), `quarantined`, `quarantine_reasons`
    ({reason kind: count}), `chars_out`, `shards`, `units`, `sources` (per-source in/out counts).
    Raises `SourceError` for a source with no matching file or no valid row.
    """
    out_dir = Path(out_dir)
    work = out_dir / _WORK_DIR
    if work.exists():
        shutil.rmtree(work)  # leftovers of an interrupted run in the same dir
    work.mkdir(parents=True)
    units = plan_units(sources, demo, cfg, seed, work)
    summaries = list(parallel_map(clean_unit, units))

    for source_index, source in enumerate(sources):
        of_source = [s for s in summaries if s.source_index == source_index]
        if sum(s.good_in for s in of_source) == 0:
            reasons = sum((s.quarantine_reasons for s in of_source), Counter())
            examples = [row for s in of_source for row in s.quarantine_examples][:3]
            raise SourceError(no_valid_rows_message(source, reasons, examples))

    duplicates = _find_duplicate_ids(summaries, work)
    rejected = _RowGroupWriter(out_dir / REJECTED_FILE, REJECTED_SCHEMA, _REJECTED_FLUSH_ROWS)
    quarantine_reasons: Counter = Counter()
    for summary in summaries:
        if summary.rejected_file:
            for batch in pq.ParquetFile(work / summary.rejected_file).iter_batches(_REJECTED_FLUSH_ROWS):
                rejected.add_table(pa.Table.from_batches([batch]))
        quarantine_reasons.update(summary.quarantine_reasons)
        if summary.index in duplicates:
            _quarantine_duplicates(summary, duplicates[summary.index], work, rejected)
            quarantine_reasons["duplicate_id"] += len(duplicates[summary.index])
    if not rejected.close():
        pq.write_table(REJECTED_SCHEMA.empty_table(), out_dir / REJECTED_FILE)

    part_jobs = plan_parts(summaries, duplicates, work, out_dir, cfg.docs_per_shard)
    part_chars = list(parallel_map(write_part, part_jobs))
    if not part_jobs:
        # Readers glob `part_*.parquet`; an empty shard keeps that working when every document was dropped.
        pq.write_table(DOC_SCHEMA.empty_table(), out_dir / "part_00000.parquet")
    shutil.rmtree(work)

    dropped = {rule: sum(s.dropped[rule] for s in summaries) for rule in FILTERS}
    metrics: dict[str, Any] = {
        "docs_in": sum(s.docs_in for s in summaries),
        "docs_out": sum(s.kept for s in summaries),
        "dropped": dropped,
        "quarantined": sum(quarantine_reasons.values()),
        "quarantine_reasons": dict(sorted(quarantine_reasons.items())),
        "chars_out": sum(part_chars),
        "shards": max(1, len(part_jobs)),
        "units": len(units),
        "sources": [
            {
                "source": describe_source(source),
                "docs_in": sum(s.docs_in for s in summaries if s.source_index == i),
                "docs_out": sum(s.kept for s in summaries if s.source_index == i),
            }
            for i, source in enumerate(sources)
        ],
    }
    accounted = metrics["docs_out"] + sum(dropped.values()) + metrics["quarantined"]
    # Nothing may be lost silently: every input row is kept, dropped by a rule, or quarantined.
    assert metrics["docs_in"] == accounted, f"clean lost rows: {metrics['docs_in']} in, {accounted} accounted"
    if metrics["docs_out"] == 0:
        logger.warning("clean: every document was dropped; see %s", out_dir / REJECTED_FILE)
    logger.info(
        "clean: %d docs in, %d out, dropped %s, quarantined %d",
        metrics["docs_in"],
        metrics["docs_out"],
        {k: v for k, v in dropped.items() if v},
        metrics["quarantined"],
    )
    return metrics
