"""Read configured data sources row by row, keeping every bad row as a quarantined record.

Every source kind (`demo`, `jsonl`, `parquet`, `text`, `hf`) offers the same two things:
- its rows, through one reader family: `read_text_rows` (pretraining text), `read_sft_rows` (prompt/response),
  `read_pref_rows` (prompt/chosen/rejected) and `read_qa_rows` (question/answer, for exact match);
- its `source_version`: what about its content, beyond its config, enters the fingerprint of a stage that
  reads it (the demo generator's version; every matched file with its size and xxh3 content hash; nothing for hf).
The demo world is one kind among these: this module is the only one that imports it, lazily, in `_demo_module`.
`check_sources` opens every configured source before a run starts and reads its first rows, so a wrong field
name or an undecodable file fails in seconds instead of when its stage begins.

A source's `path` is a file, a directory (every file under it, recursively, except names starting with `.` or
`_`, as Spark/Hadoop mark `_SUCCESS` and `.crc` files) or a glob (`**` recurses; a matched directory is read
the same way).

Each reader yields, per input row, one of two dict shapes:

- a good row: `{"id", "source", "line", <wanted fields under their canonical names>}`, e.g.
  `{"id": "data/a.jsonl:3", "source": "data/a.jsonl", "line": 3, "text": "..."}`;
- a quarantined row: `{"source", "line", "reason", "raw"}` where `reason` reads `"<kind>: <detail>"`
  (kinds: invalid_json, not_an_object, missing_field, not_a_string, empty_field, undecodable, bad_id,
  unencodable (a lone surrogate such as a JSON `"\\ud83d"`: valid JSON, but no UTF-8 can hold it), binary
  (a NUL character), control_chars (over 10% control characters), line_too_long) and `raw` is the row as
  text, always storable as UTF-8. Tell the two apart with `is_quarantined(row)` (good rows always carry `id`).
  Every text a good row carries is valid UTF-8 without NUL characters.

A big file is read by several workers at once through `file_spans` (pieces cut at line ends, or at parquet row
groups) and `read_span_rows`, which numbers lines exactly as a read of the whole file does.

A bad row never stops a run; a source that matches no file, a file that is not text at all (an executable,
an archive, UTF-16), or a source that yields no good row at all, raises `SourceError` naming the source and
file. Files are read as bytes and decoded line by line, so one undecodable or over-long line costs that line
only.
"""

from __future__ import annotations

import glob
import importlib
import itertools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from zero_chatgpt.config import (
    DemoCorpusConfig,
    PipelineConfig,
    PrefSource,
    QaSource,
    SftSource,
    SourceBase,
    TextSource,
    route_stages,
)
from zero_chatgpt.data_process.conversations import (
    ConversationError,
    compact_prompt,
    hh_preference,
    normalise_messages,
    parse_hh_transcript,
    prompt_messages,
    split_last_reply,
)
from zero_chatgpt.file_hash import FileHashCache

logger = logging.getLogger(__name__)

# Files above this size get a byte-level progress bar while they are read.
_PROGRESS_MIN_BYTES = 32 * 1024 * 1024
# Parquet files are read in batches of this many rows so a big file never sits in memory whole.
_PARQUET_BATCH_ROWS = 8192
# A quarantined row keeps at most this many characters of its raw text (enough to diagnose, bounded size).
_RAW_MAX_CHARS = 20_000
# A line longer than this is quarantined unread (its first bytes kept): one runaway line must not fill memory.
MAX_LINE_BYTES = 64 * 1024 * 1024
# Rows of each file `check_sources` reads before the run starts.
PREFLIGHT_ROWS = 50
# A text with more than this share of control characters (other than tab and line ends) is binary junk.
_MAX_CONTROL_SHARE = 0.10
# Control characters counted on the UTF-8 bytes: C0 controls and DEL are single bytes (deleted by a fast
# bytes.translate), C1 controls (U+0080-U+009F) are 0xC2 0x80-0x9F.
_C0_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_C1_CONTROL_RE = re.compile(b"\xc2[\x80-\x9f]")
# The first bytes of a file tell text from the binary formats people point a glob at by mistake.
_SNIFF_BYTES = 8192
_BINARY_SIGNATURES = {
    b"\x7fELF": "an ELF executable or shared library",
    b"\xcf\xfa\xed\xfe": "a Mach-O executable",
    b"\x1f\x8b": "gzip-compressed (decompress it first)",
    b"PK\x03\x04": "a zip archive",
    b"\xfd7zXZ\x00": "xz-compressed (decompress it first)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"PAR1": "a parquet file (use kind parquet)",
    b"%PDF-": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"SQLite format 3\x00": "an SQLite database",
    b"\xff\xfe": "UTF-16 text (convert it to UTF-8)",
    b"\xfe\xff": "UTF-16 text (convert it to UTF-8)",
}
# Bytes read at a time when counting lines to cut a file into spans.
_SCAN_BLOCK_BYTES = 1 << 20
# Content hashes of source files within this process, when no cache file under a run root is given.
_PROCESS_HASHES = FileHashCache()


class SourceError(ValueError):
    """A source that cannot be read at all (no file matches, no good row, dataset unreachable)."""


# ------------------------------------------------------------------------------------------ public API


def describe_source(source: SourceBase) -> str:
    """`jsonl source 'data/*.jsonl'`: how error messages and logs name a source."""
    where = source.name if source.kind == "hf" else source.path
    return f"{source.kind} source {where!r}" if where else f"{source.kind} source"


def source_fields(source: SourceBase) -> dict[str, str]:
    """Canonical output name -> field name in the input, for the wanted fields of this source type."""
    if isinstance(source, TextSource):
        return {"text": source.text_field}
    if isinstance(source, SftSource):
        if source.format == "fields":
            fields = {"prompt": source.prompt_field, "response": source.response_field}
        else:
            fields = {"conversation": source.conversation_field}
        if source.answer_field:
            fields["answer"] = source.answer_field
        return fields
    if isinstance(source, PrefSource):
        # An hh row may carry its prompt inside both transcripts instead (see `_chat_fields`).
        return {"prompt": source.prompt_field, "chosen": source.chosen_field, "rejected": source.rejected_field}
    if isinstance(source, QaSource):
        fields = {"question": source.question_field, "answer": source.answer_field}
        if source.lang_field:
            fields["lang"] = source.lang_field
        return fields
    raise TypeError(f"unsupported source type {type(source).__name__}")


def expand_source_files(source: SourceBase) -> list[Path]:
    """The files a local source reads, sorted (deterministic order); `[]` for `demo` and `hf` sources.

    `path` may be a file, a directory (its files, recursively, skipping names that start with `.` or `_`) or a
    glob (`**` recurses; a matched directory is expanded the same way). Raises `SourceError` when it matches no
    file, naming a directory as a directory.
    """
    if source.kind in ("demo", "hf"):
        return []
    pattern = os.path.expanduser(str(source.path))
    matches = [Path(m) for m in glob.glob(pattern, recursive=True)] if glob.has_magic(pattern) else [Path(pattern)]
    files: set[Path] = set()
    for match in matches:
        files.update(_files_under(match) if match.is_dir() else [match] if match.is_file() else [])
    if files:
        return sorted(files, key=str)
    if not glob.has_magic(pattern) and Path(pattern).is_dir():
        why = "the path is a directory with no readable file in it (names starting with '.' or '_' are skipped)"
    elif glob.has_magic(pattern):
        why = "no file matches the glob" + (" (only empty directories do)" if matches else "")
    else:
        why = "the file does not exist"
    raise SourceError(f"{describe_source(source)}: {why} (path {pattern!r})")


def source_version(source: SourceBase, hash_cache: FileHashCache | None = None) -> dict[str, Any]:
    """What about the source's content, beyond its config, a stage fingerprint must include.

    A demo source's rows are generated by code, so the generator's version stands for them (`{"generator_version":
    4}`). A file source gives every matched file with its size and xxh3 content hash (`{"files": [{"file",
    "bytes", "xxh3"}]}`), so an edited, added or removed file reruns the stages that read it; `hash_cache`
    (default: one per process) skips rereading files whose size and mtime are unchanged. hf sources give `{}`
    (their config names them; the hub's content is not hashed).
    """
    if source.kind == "demo":
        return {"generator_version": _demo_module().DEMO_CORPUS_VERSION}
    if source.kind == "hf":
        return {}
    cache = hash_cache if hash_cache is not None else _PROCESS_HASHES
    return {
        "files": [
            {"file": _printable(str(path)), "bytes": path.stat().st_size, "xxh3": cache.hash(path)}
            for path in expand_source_files(source)
        ]
    }


def check_configured_sources(config: PipelineConfig) -> None:
    """`check_sources` on every source of the run: data.sources (when the route cleans a corpus),
    data.sft_sources, data.pref_sources and evaluate.qa_sources. All of them, not just those of the stages about to
    run, so a mistake in the SFT data shows up on the first `--until clean` run rather than after pretraining."""
    corpus = config.data.sources if "clean" in route_stages(config) else []
    check_sources(
        [*corpus, *config.data.sft_sources, *config.data.pref_sources, *config.evaluate.qa_sources], config.data.demo
    )


def check_sources(
    sources: Iterable[SourceBase], demo: DemoCorpusConfig | None = None, rows_per_file: int = PREFLIGHT_ROWS
) -> None:
    """Open every source and read the first `rows_per_file` rows of each of its files: fail fast, before any work.

    Raises one `SourceError` for the first problem, naming the source (kind, path), the file, the first bad
    line, the fields the rows do have, and the quarantine reasons with their counts: no matching file, a file
    that is not text, or a file none of whose first rows is valid (a wrong field name, an undecodable file).
    Demo sources are generated by code: only their config is checked.
    """
    for source in sources:
        if source.kind == "demo":
            read_rows(source, demo)  # raises on a config mistake (no demo preference data) without generating
            continue
        files = expand_source_files(source)
        for path in files:
            if source.kind in ("jsonl", "text"):
                _refuse_binary_file(source, path)
        rows_seen = 0
        for path in files or [None]:
            sample = list(
                itertools.islice(
                    read_rows(source, demo, files=[path] if path is not None else None, require_rows=False),
                    rows_per_file,
                )
            )
            if sample and all(is_quarantined(row) for row in sample):
                where = f"file {_printable(str(path))}" if path is not None else "its stream"
                raise SourceError(
                    f"{describe_source(source)}: none of the first {len(sample)} rows of {where} is "
                    f"valid; {_quarantine_summary(sample, source)}"
                )
            rows_seen += len(sample)
            logger.info("%s: %s checked (%d rows sampled)", describe_source(source), path or "stream", len(sample))
        if rows_seen == 0:
            raise SourceError(no_valid_rows_message(source, Counter(), []))


def is_quarantined(row: dict[str, Any]) -> bool:
    """True for a quarantined row (`{"source", "line", "reason", "raw"}`); good rows always carry `id`."""
    return "id" not in row


def reason_kind(reason: str) -> str:
    """The machine-readable kind at the front of a quarantine reason (`"invalid_json: ..."` -> `invalid_json`)."""
    return reason.split(":", 1)[0].strip()


def read_text_rows(
    source: TextSource,
    demo: DemoCorpusConfig | None = None,
    seed: int = 0,
    files: list[Path] | None = None,
    require_rows: bool = True,
) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "text"}` and quarantined rows of a pretraining text source.

    `files` restricts reading to some of the source's files (the clean stage reads one file per worker);
    `require_rows=False` turns off the "no good row at all" error for such partial reads.
    """
    return read_rows(source, demo, seed, files, require_rows)


@dataclass(frozen=True)
class FileSpan:
    """A piece of one source file that a worker reads alone.

    jsonl and text files: the lines starting in bytes [start, stop), the first numbered `first_line`.
    parquet files: row groups [start, stop), the first row numbered `first_line`.
    """

    path: str
    start: int
    stop: int
    first_line: int


def file_spans(source: SourceBase, path: Path, span_bytes: int) -> list[FileSpan]:
    """`path` cut into spans of about `span_bytes` each (parquet: uncompressed row-group bytes), in file order.

    A line or a row group is never cut. Line files are scanned once here to count lines, so every span knows
    the number of its first line.
    """
    if source.kind == "parquet":
        return _parquet_spans(source, path, span_bytes)
    if source.kind not in ("jsonl", "text"):
        raise ValueError(f"{describe_source(source)}: only file sources are read in spans")
    size = path.stat().st_size
    spans, start, first_line = [], 0, 1
    with open(path, "rb") as handle:
        while start < size:
            stop = _end_of_line_at(handle, min(start + span_bytes, size) - 1, size)
            spans.append(FileSpan(str(path), start, stop, first_line))
            first_line += _count_newlines(handle, start, stop)
            start = stop
    return spans or [FileSpan(str(path), 0, 0, 1)]


def read_span_rows(source: TextSource, span: FileSpan) -> Iterator[dict[str, Any]]:
    """Good and quarantined rows of one span of a text source's file, as `read_text_rows` gives them for the whole
    file (same ids and line numbers). A source's `limit` does not apply: it needs the files read in order."""
    path = Path(span.path)
    if source.kind == "jsonl":
        return _jsonl_rows(source, path, span)
    if source.kind == "parquet":
        return _parquet_rows(source, path, span)
    return _text_rows(source, path, span)


def read_sft_rows(
    source: SftSource,
    demo: DemoCorpusConfig | None = None,
    seed: int = 0,
    files: list[Path] | None = None,
    require_rows: bool = True,
) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "prompt", "response"}` and quarantined rows of an SFT source."""
    return read_rows(source, demo, seed, files, require_rows)


def read_pref_rows(
    source: PrefSource,
    demo: DemoCorpusConfig | None = None,
    seed: int = 0,
    files: list[Path] | None = None,
    require_rows: bool = True,
) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "prompt", "chosen", "rejected"}` and quarantined rows."""
    return read_rows(source, demo, seed, files, require_rows)


def read_qa_rows(
    source: QaSource,
    demo: DemoCorpusConfig | None = None,
    seed: int = 0,
    files: list[Path] | None = None,
    require_rows: bool = True,
) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "question", "answer"[, "lang"]}` and quarantined rows of a QA source;
    kind demo gives the demo world's held-out fact questions (never in its SFT rows)."""
    return read_rows(source, demo, seed, files, require_rows)


def read_all_rows(
    sources: list[SourceBase], demo: DemoCorpusConfig | None = None, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(good rows, quarantined rows) of every source, in source order; a repeated id is quarantined."""
    good, quarantined, seen = [], [], set()
    for source in sources:
        for row in read_rows(source, demo, seed):
            if is_quarantined(row):
                quarantined.append(row)
            elif row["id"] in seen:
                quarantined.append(
                    {
                        "source": row["source"],
                        "line": row["line"],
                        "reason": f"duplicate_id: id {row['id']!r} was already read",
                        "raw": json.dumps(row, ensure_ascii=False)[:_RAW_MAX_CHARS],
                    }
                )
            else:
                seen.add(row["id"])
                good.append(row)
    return good, quarantined


def read_rows(
    source: SourceBase,
    demo: DemoCorpusConfig | None = None,
    seed: int = 0,
    files: list[Path] | None = None,
    require_rows: bool = True,
) -> Iterator[dict[str, Any]]:
    """Rows of any source type; configuration errors (no file, bad kind) are raised here, before iteration."""
    if source.kind == "text" and source.id_field:
        raise SourceError(f"{describe_source(source)}: `id_field` needs structured rows; text lines have no fields")
    if source.kind == "demo" and isinstance(source, PrefSource):
        raise SourceError(
            f"{describe_source(source)}: there is no demo preference data "
            "(build_prefs makes pairs from the SFT model); use a jsonl/parquet/hf source"
        )
    if source.kind == "hf":
        # Opened here, not on first iteration, so an offline run fails where the source is named.
        return _limited(source, _hf_rows(source, _open_hf_stream(source)), require_rows)
    if files is None:
        files = expand_source_files(source)
    return _limited(source, _raw_rows(source, demo, seed, files), require_rows)


# ----------------------------------------------------------------------------------------- internals


def _limited(source: SourceBase, rows: Iterable[dict[str, Any]], require_rows: bool) -> Iterator[dict[str, Any]]:
    """Stop after `source.limit` good rows; raise when the source gave no good row at all."""
    good = 0
    examples: list[dict[str, Any]] = []
    reasons: Counter = Counter()
    for row in rows:
        yield row
        if not is_quarantined(row):
            good += 1
            if source.limit is not None and good >= source.limit:
                return
        else:
            reasons[reason_kind(row["reason"])] += 1
            if len(examples) < 3:
                examples.append(row)
    if good == 0 and require_rows:
        raise SourceError(no_valid_rows_message(source, reasons, examples))


def no_valid_rows_message(source: SourceBase, reasons: Counter, examples: list[dict[str, Any]]) -> str:
    """The one "no valid rows" error: the source, the quarantine reasons with counts, and the first bad rows."""
    if not reasons:
        return f"{describe_source(source)}: no valid rows: the source holds no rows at all (only blank lines)"
    counts = ", ".join(f"{kind} x{count}" for kind, count in reasons.most_common())
    first = "; ".join(f"{row['source']} line {row['line']}: {row['reason']}" for row in examples)
    return (
        f"{describe_source(source)}: no valid rows: all {sum(reasons.values())} rows were quarantined "
        f"({counts}); first: {first}"
    )


def _quarantine_summary(sample: list[dict[str, Any]], source: SourceBase) -> str:
    """Why a sample of quarantined rows failed, with the fields those rows do have and a decoding hint."""
    reasons = Counter(reason_kind(row["reason"]) for row in sample)
    first = sample[0]
    text = (
        f"line {first['line']}: {first['reason']}; reasons "
        f"{', '.join(f'{kind} x{count}' for kind, count in reasons.most_common())}"
    )
    present: set[str] = set()
    for row in sample:
        try:
            record = json.loads(row["raw"])
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(record, dict):
            present.update(record)
    if present:
        text += (
            f"; the source wants fields {sorted(source_fields(source).values())}, the rows have fields "
            f"{sorted(present)}"
        )
    return text


def _encoding_hint(raw: bytes) -> str:
    """A guess at the encoding of a line that is not UTF-8 (Chinese files are often GBK), or ""."""
    try:
        decoded = raw.decode("gb18030")
    except UnicodeDecodeError:
        return ""
    if any("\u4e00" <= char <= "\u9fff" for char in decoded):
        return " (it decodes as GBK/GB18030: convert the file with iconv -f GB18030 -t UTF-8)"
    return ""


def _files_under(directory: Path) -> list[Path]:
    """Every file under `directory`, recursively, except names (or folders) starting with `.` or `_`."""
    return [
        path
        for path in directory.rglob("*")
        if path.is_file() and not any(part.startswith((".", "_")) for part in path.relative_to(directory).parts)
    ]


def _refuse_binary_file(source: SourceBase, path: Path) -> None:
    """Raise `SourceError` when a jsonl/text file is not text at all: a known binary format by its first bytes,
    or mostly NUL bytes; a file that cannot be opened is named too."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as err:
        raise SourceError(
            f"{describe_source(source)}: file {_printable(str(path))} cannot be read: {err.strerror or err}"
        ) from None
    what = next((name for signature, name in _BINARY_SIGNATURES.items() if head.startswith(signature)), None)
    if what is None and head and head.count(0) > 0.1 * len(head):
        what = f"binary ({head.count(0)} NUL bytes in its first {len(head)} bytes)"
    if what is not None:
        raise SourceError(
            f"{describe_source(source)}: file {_printable(str(path))} is not a {source.kind} file: it "
            f"looks like {what}; fix the path or glob so it matches only {source.kind} files"
        )


def _raw_rows(
    source: SourceBase, demo: DemoCorpusConfig | None, seed: int, files: list[Path]
) -> Iterator[dict[str, Any]]:
    if source.kind == "demo":
        yield from _demo_rows(source, demo or DemoCorpusConfig(), seed)
    else:
        for path in files:
            if source.kind == "jsonl":
                yield from _jsonl_rows(source, path)
            elif source.kind == "parquet":
                yield from _parquet_rows(source, path)
            else:
                yield from _text_rows(source, path)


def _quarantine(source_name: str, line: int | None, kind: str, detail: str, raw: str) -> dict[str, Any]:
    return {"source": source_name, "line": line, "reason": f"{kind}: {detail}", "raw": _printable(raw[:_RAW_MAX_CHARS])}


def _printable(text: str) -> str:
    """`text` made storable as UTF-8: lone surrogates (from JSON escapes or undecodable file names) become
    `\\udXXX` escapes, so writing a quarantined row or a path can never fail."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def text_problem(text: str) -> tuple[str, str] | None:
    """(reason kind, detail) when `text` is not storable, trainable text; None when it is.

    Lone surrogates cannot be written as UTF-8 (they crash any parquet write), a NUL character marks binary data,
    and a text of mostly control characters is binary junk that decoded by chance.
    """
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as err:
        return "unencodable", (
            f"lone surrogate U+{ord(text[err.start]):04X} at character {err.start} cannot be stored as UTF-8"
        )
    if b"\x00" in encoded:
        return "binary", f"NUL character at character {text.index(chr(0))}"
    controls = len(encoded) - len(encoded.translate(None, _C0_CONTROL_BYTES))
    if b"\xc2" in encoded:
        controls += len(_C1_CONTROL_RE.findall(encoded))
    if controls > _MAX_CONTROL_SHARE * len(text):
        return "control_chars", (
            f"{controls} of {len(text)} characters are control characters (> {_MAX_CONTROL_SHARE:.0%})"
        )
    return None


class _FieldProblem(ValueError):
    """A field of a record that cannot be used: (reason kind, detail)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _string_field(record: dict[str, Any], field: str) -> str:
    """`record[field]` as a non-empty, storable string, or a `_FieldProblem` saying why not."""
    if field not in record or record[field] is None:
        raise _FieldProblem("missing_field", f"no {field!r} field")
    value = record[field]
    if not isinstance(value, str):
        raise _FieldProblem("not_a_string", f"field {field!r} is {_describe_value(value)}")
    if not value.strip():
        raise _FieldProblem("empty_field", f"field {field!r} is empty or whitespace")
    problem = text_problem(value)
    if problem is not None:
        raise _FieldProblem(problem[0], f"field {field!r}: {problem[1]}")
    return value


def _prompt_field(record: dict[str, Any], field: str, hh: bool) -> str | list[dict[str, str]]:
    """A prompt: plain text, a message list ending with a user turn, or (hh) a transcript ending with 'Human:'."""
    value = record.get(field)
    if isinstance(value, list):
        messages = prompt_messages(value)
    else:
        text = _string_field(record, field)
        messages = prompt_messages(parse_hh_transcript(text) if hh else text)
    return compact_prompt(messages)


def _chat_fields(record: dict[str, Any], source: SftSource | PrefSource) -> dict[str, Any]:
    """The canonical chat fields of a record: `prompt` (see `compact_prompt`) with `response`, or with `chosen` and
    `rejected`; raises `ConversationError` or `_FieldProblem`."""
    hh = source.format == "hh"
    if isinstance(source, SftSource):
        if source.format == "fields":
            fields = {"prompt": _prompt_field(record, source.prompt_field, hh=False)}
            fields["response"] = _string_field(record, source.response_field)
        else:
            if hh:
                turns = parse_hh_transcript(_string_field(record, source.conversation_field))
            elif record.get(source.conversation_field) is None:
                raise _FieldProblem("missing_field", f"no {source.conversation_field!r} field")
            else:
                turns = record[source.conversation_field]
            prompt, reply = split_last_reply(normalise_messages(turns))
            fields = {"prompt": compact_prompt(prompt), "response": reply}
        if source.answer_field:
            fields["answer"] = _string_field(record, source.answer_field)
    elif hh and record.get(source.prompt_field) is None:
        prompt, chosen, rejected = hh_preference(
            _string_field(record, source.chosen_field), _string_field(record, source.rejected_field)
        )
        fields = {"prompt": compact_prompt(prompt), "chosen": chosen, "rejected": rejected}
    else:
        fields = {
            "prompt": _prompt_field(record, source.prompt_field, hh),
            "chosen": _string_field(record, source.chosen_field),
            "rejected": _string_field(record, source.rejected_field),
        }
    for message in prompt_messages(fields["prompt"]):
        problem = text_problem(message["content"])
        if problem is not None:
            raise _FieldProblem(problem[0], f"prompt turn: {problem[1]}")
    for key in ("response", "chosen", "rejected"):
        if key in fields and not fields[key].strip():
            raise _FieldProblem("empty_field", f"the {key} reply is empty")
    return fields


def _row_from_record(
    record: Any,
    fields: dict[str, str],
    id_field: str | None,
    source_name: str,
    line: int,
    default_id: str,
    raw: str,
    chat: SftSource | PrefSource | None = None,
) -> dict[str, Any]:
    """Validate one parsed record: every wanted field (canonical -> input name) a non-empty string, the id usable;
    for a chat source (`chat`), its prompt and replies in the source's format (see `_chat_fields`)."""
    if not isinstance(record, dict):
        return _quarantine(
            source_name, line, "not_an_object", f"expected a JSON object, got {type(record).__name__}", raw
        )
    row: dict[str, Any] = {"id": default_id, "source": source_name, "line": line}
    if id_field:
        value = record.get(id_field)
        # bool is an int subclass, but a True/False id is certainly a mistake.
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            return _quarantine(
                source_name,
                line,
                "bad_id",
                f"id field {id_field!r} is {_describe_value(value)}; expected a non-empty string or integer",
                raw,
            )
        problem = text_problem(str(value))
        if problem is not None:
            return _quarantine(source_name, line, "bad_id", f"id field {id_field!r}: {problem[1]}", raw)
        row["id"] = str(value)
    try:
        if chat is not None:
            row.update(_chat_fields(record, chat))
        else:
            row.update({canonical: _string_field(record, field) for canonical, field in fields.items()})
    except _FieldProblem as problem:
        return _quarantine(source_name, line, problem.kind, problem.detail, raw)
    except ConversationError as err:
        return _quarantine(source_name, line, "bad_conversation", str(err), raw)
    return row


def _chat(source: SourceBase) -> SftSource | PrefSource | None:
    return source if isinstance(source, (SftSource, PrefSource)) else None


def _describe_value(value: Any) -> str:
    if value is None:
        return "missing"
    return f"a {type(value).__name__} ({_printable(str(value)[:40])!r})"


def _end_of_line_at(handle: Any, position: int, size: int) -> int:
    """The offset just past the line end at or after byte `position` (`size` when the file ends first)."""
    handle.seek(position)
    while block := handle.read(_SCAN_BLOCK_BYTES):
        newline = block.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(block)
    return size


def _count_newlines(handle: Any, start: int, stop: int) -> int:
    handle.seek(start)
    count, remaining = 0, stop - start
    while remaining > 0 and (block := handle.read(min(_SCAN_BLOCK_BYTES, remaining))):
        count += block.count(b"\n")
        remaining -= len(block)
    return count


def _bounded_lines(handle: Any, max_bytes: int, stop: int | None = None) -> Iterator[tuple[bytes, int, bool]]:
    """(line, its full length in bytes, whether it was cut) per line starting before byte `stop` (default: the
    end); a line over `max_bytes` is cut there and the rest skipped without ever holding it in memory."""
    position = handle.tell()
    while (stop is None or position < stop) and (line := handle.readline(max_bytes + 1)):
        length = len(line)
        cut = length > max_bytes and not line.endswith(b"\n")
        while cut and (rest := handle.readline(1 << 20)):
            length += len(rest)
            if rest.endswith(b"\n"):
                break
        position += length
        yield line, length, cut


def _decode_lines(
    source: SourceBase, path: Path, span: FileSpan | None = None
) -> Iterator[tuple[int, bytes, str | None, tuple[str, str] | None]]:
    """(1-based line number, raw bytes, decoded text or None, (reason kind, detail) or None) per line of a file,
    or of one span of it.

    Refuses a file that is not text at all (see `_refuse_binary_file`) before reading it.
    """
    _refuse_binary_file(source, path)
    start, stop, first_line = (span.start, span.stop, span.first_line) if span else (0, None, 1)
    size = (stop if stop is not None else path.stat().st_size) - start
    with (
        open(path, "rb") as handle,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=path.name, disable=size < _PROGRESS_MIN_BYTES, mininterval=5
        ) as progress,
    ):
        handle.seek(start)
        lines = _bounded_lines(handle, MAX_LINE_BYTES, stop)
        for number, (raw, length, cut) in enumerate(lines, start=first_line):
            progress.update(length)
            if cut:
                yield number, raw[:_RAW_MAX_CHARS], None, ("line_too_long", f"{length} bytes > {MAX_LINE_BYTES}")
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark is an encoding artefact, not text
            raw = raw.rstrip(b"\r\n")
            try:
                yield number, raw, raw.decode("utf-8"), None
            except UnicodeDecodeError as err:
                yield (
                    number,
                    raw,
                    None,
                    ("undecodable", f"not UTF-8 at byte {err.start}: {err.reason}{_encoding_hint(raw)}"),
                )


def _jsonl_rows(source: SourceBase, path: Path, span: FileSpan | None = None) -> Iterator[dict[str, Any]]:
    name = _printable(str(path))
    for number, raw, text, problem in _decode_lines(source, path, span):
        if problem is not None:
            yield _quarantine(name, number, *problem, raw.decode("utf-8", errors="replace"))
            continue
        if not text.strip():
            continue  # blank lines separate nothing in JSONL: they are not rows
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield _quarantine(name, number, "invalid_json", f"{err.msg} at column {err.colno}", text)
            continue
        fields = source_fields(source)
        yield _row_from_record(record, fields, source.id_field, name, number, f"{name}:{number}", text, _chat(source))


def _text_rows(source: SourceBase, path: Path, span: FileSpan | None = None) -> Iterator[dict[str, Any]]:
    """One document per non-empty line; blank lines are separators, not data."""
    name = _printable(str(path))
    (canonical,) = source_fields(source)  # only text sources can have kind `text`
    for number, raw, text, problem in _decode_lines(source, path, span):
        if problem is None and text.strip():
            problem = text_problem(text)
        if problem is not None:
            yield _quarantine(name, number, *problem, raw.decode("utf-8", errors="replace"))
            continue
        if not text.strip():
            continue
        yield {"id": f"{name}:{number}", "source": name, "line": number, canonical: text}


def _open_parquet(source: SourceBase, path: Path) -> Any:
    """`pq.ParquetFile(path)`, or a `SourceError` naming the source and file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise SourceError(
            f"{describe_source(source)}: {_printable(str(path))} is not a readable parquet file: {err}"
        ) from None


def _parquet_spans(source: SourceBase, path: Path, span_bytes: int) -> list[FileSpan]:
    """Consecutive row groups of about `span_bytes` uncompressed bytes each."""
    metadata = _open_parquet(source, path).metadata
    spans, start, first_row, rows, size = [], 0, 1, 0, 0
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        rows, size = rows + group.num_rows, size + group.total_byte_size
        if size >= span_bytes or index == metadata.num_row_groups - 1:
            spans.append(FileSpan(str(path), start, index + 1, first_row))
            start, first_row, rows, size = index + 1, first_row + rows, 0, 0
    return spans or [FileSpan(str(path), 0, 0, 1)]


def _parquet_rows(source: SourceBase, path: Path, span: FileSpan | None = None) -> Iterator[dict[str, Any]]:
    name = _printable(str(path))
    parquet = _open_parquet(source, path)
    wanted = list(source_fields(source).values()) + ([source.id_field] if source.id_field else [])
    present = set(parquet.schema_arrow.names)
    # hh preference rows may carry their prompt inside both transcripts instead of in a column of its own.
    optional = {source.prompt_field} if isinstance(source, PrefSource) and source.format == "hh" else set()
    missing = [column for column in wanted if column not in present and column not in optional]
    if missing:
        # A missing column is a property of the file, not of a row: say so once instead of quarantining all rows.
        raise SourceError(
            f"{describe_source(source)}: {name} has no column(s) {missing}; columns are {sorted(present)}"
        )
    fields = source_fields(source)
    groups = range(span.start, span.stop) if span else range(parquet.metadata.num_row_groups)
    number = span.first_line - 1 if span else 0
    total_rows = sum(parquet.metadata.row_group(index).num_rows for index in groups)
    with tqdm(total=total_rows, unit="rows", desc=path.name, mininterval=5, disable=total_rows < 200_000) as progress:
        for batch in parquet.iter_batches(
            batch_size=_PARQUET_BATCH_ROWS,
            row_groups=list(groups),
            columns=[c for c in dict.fromkeys(wanted) if c in present],
        ):
            for record, problem in _batch_records(batch):
                number += 1
                raw = json.dumps(record, ensure_ascii=False, default=str)
                if problem is not None:
                    yield _quarantine(name, number, "undecodable", problem, raw)
                    continue
                yield _row_from_record(
                    record, fields, source.id_field, name, number, f"{name}:{number}", raw, _chat(source)
                )
            progress.update(batch.num_rows)


def _batch_records(batch: Any) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(record, None) per row of a parquet batch; (record with the undecodable values as bytes, what is wrong)
    for a row whose string column holds bytes that are not UTF-8 (other writers do not check)."""
    try:
        yield from ((record, None) for record in batch.to_pylist())
        return
    except UnicodeDecodeError:
        pass  # some value is not UTF-8: go value by value so only its rows are quarantined
    columns = batch.schema.names
    for index in range(batch.num_rows):
        record: dict[str, Any] = {}
        problem = None
        for column_name, column in zip(columns, batch.columns):
            try:
                record[column_name] = column[index].as_py()
            except UnicodeDecodeError as err:
                record[column_name] = repr(err.object[:200]) if isinstance(err.object, bytes) else None
                problem = problem or f"column {column_name!r} is not UTF-8 at byte {err.start}: {err.reason}"
        yield record, problem


def _demo_module() -> Any:
    """The demo world's generator: the one door to it, opened late, since every other kind runs without it (and
    tests may substitute it)."""
    return importlib.import_module("zero_chatgpt.data_process.demo_corpus")


def _demo_rows(source: SourceBase, demo: DemoCorpusConfig, seed: int) -> Iterator[dict[str, Any]]:
    demo_corpus = _demo_module()
    if isinstance(source, SftSource):
        records = demo_corpus.demo_sft_pairs(demo, seed)
        fields = {"prompt": "prompt", "response": "response", "answer": "answer"}
        # Demo rows carry the short answer each correct response contains, whatever the source says.
        source = source.model_copy(update={"format": "fields", "answer_field": "answer"})
    elif isinstance(source, QaSource):
        records = demo_corpus.demo_eval_questions(demo, seed)
        fields = {"question": "prompt", "answer": "answer", "lang": "lang"}
    else:
        records = demo_corpus.demo_documents(demo, seed)
        fields = {"text": "text"}
    # Demo records already use the canonical names and carry their own stable ids.
    for number, record in enumerate(records, start=1):
        raw = json.dumps(record, ensure_ascii=False, default=str)
        yield _row_from_record(record, fields, "id", "demo", number, f"demo:{number}", raw, _chat(source))


def _open_hf_stream(source: SourceBase) -> Iterable[Any]:
    """`datasets.load_dataset(..., streaming=True)`, or a `SourceError` when offline or it fails."""
    label = describe_source(source)
    offline = [
        var
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
    ]
    if offline:
        raise SourceError(
            f"{label}: Hugging Face datasets are offline ({offline[0]} is set); download the data "
            "and use a local jsonl/parquet source instead"
        )
    try:
        import datasets

        return datasets.load_dataset(source.name, source.subset, split=source.split, streaming=True)
    except Exception as err:  # network, auth, unknown name: all mean this source cannot be read
        raise SourceError(
            f"{label}: could not open the dataset (subset={source.subset!r}, "
            f"split={source.split!r}): {type(err).__name__}: {err}"
        ) from err


def _hf_rows(source: SourceBase, stream: Iterable[Any]) -> Iterator[dict[str, Any]]:
    name = f"hf:{source.name}"
    fields = source_fields(source)
    number = 0
    iterator = iter(stream)
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except Exception as err:  # a stream that breaks midway must not look like a short dataset
            raise SourceError(
                f"{describe_source(source)}: reading failed after {number} rows: {type(err).__name__}: {err}"
            ) from err
        number += 1
        raw = json.dumps(record, ensure_ascii=False, default=str)
        yield _row_from_record(record, fields, source.id_field, name, number, f"{name}:{number}", raw, _chat(source))
