"""Read configured data sources row by row, keeping every bad row as a quarantined record.

One reader family serves every stage that reads raw data: `read_text_rows` (pretraining text),
`read_sft_rows` (prompt/response) and `read_pref_rows` (prompt/chosen/rejected). Each yields, per input
row, one of two dict shapes:

- a good row: `{"id", "source", "line", <wanted fields under their canonical names>}`, e.g.
  `{"id": "data/a.jsonl:3", "source": "data/a.jsonl", "line": 3, "text": "..."}`;
- a quarantined row: `{"source", "line", "reason", "raw"}` where `reason` reads `"<kind>: <detail>"`
  (kinds: invalid_json, not_an_object, missing_field, not_a_string, empty_field, undecodable, bad_id) and
  `raw` is the row as text. Tell the two apart with `is_quarantined(row)` (good rows always carry `id`).

A bad row never stops a run; a source that matches no file, or yields no good row at all, raises
`SourceError` naming the source. Files are read as bytes and decoded line by line, so one undecodable line
costs that line only.
"""

from __future__ import annotations

import glob
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from zero_chatgpt.config import DemoCorpusConfig, PrefSource, SftSource, SourceBase, TextSource

logger = logging.getLogger(__name__)

# Files above this size get a byte-level progress bar while they are read.
_PROGRESS_MIN_BYTES = 32 * 1024 * 1024
# Parquet files are read in batches of this many rows so a big file never sits in memory whole.
_PARQUET_BATCH_ROWS = 8192
# A quarantined row keeps at most this many characters of its raw text (enough to diagnose, bounded size).
_RAW_MAX_CHARS = 20_000


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
        fields = {"prompt": source.prompt_field, "response": source.response_field}
        if source.answer_field:
            fields["answer"] = source.answer_field
        return fields
    if isinstance(source, PrefSource):
        return {"prompt": source.prompt_field, "chosen": source.chosen_field, "rejected": source.rejected_field}
    raise TypeError(f"unsupported source type {type(source).__name__}")


def expand_source_files(source: SourceBase) -> list[Path]:
    """The files a local source reads, sorted (deterministic order); `[]` for `demo` and `hf` sources.

    `path` may be a file or a glob (`**` recurses). Raises `SourceError` when it matches no file.
    """
    if source.kind in ("demo", "hf"):
        return []
    pattern = os.path.expanduser(str(source.path))
    matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
    files = [Path(m) for m in matches if Path(m).is_file()]
    if not files:
        why = "no file matches the glob" if glob.has_magic(pattern) else "the file does not exist"
        raise SourceError(f"{describe_source(source)}: {why} (path {pattern!r})")
    return files


def is_quarantined(row: dict[str, Any]) -> bool:
    """True for a quarantined row (`{"source", "line", "reason", "raw"}`); good rows always carry `id`."""
    return "id" not in row


def reason_kind(reason: str) -> str:
    """The machine-readable kind at the front of a quarantine reason (`"invalid_json: ..."` -> `invalid_json`)."""
    return reason.split(":", 1)[0].strip()


def read_text_rows(source: TextSource, demo: DemoCorpusConfig | None = None, seed: int = 0,
                   files: list[Path] | None = None, require_rows: bool = True) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "text"}` and quarantined rows of a pretraining text source.

    `files` restricts reading to some of the source's files (the clean stage reads one file per worker);
    `require_rows=False` turns off the "no good row at all" error for such partial reads.
    """
    return read_rows(source, demo, seed, files, require_rows)


def read_sft_rows(source: SftSource, demo: DemoCorpusConfig | None = None, seed: int = 0,
                  files: list[Path] | None = None, require_rows: bool = True) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "prompt", "response"}` and quarantined rows of an SFT source."""
    return read_rows(source, demo, seed, files, require_rows)


def read_pref_rows(source: PrefSource, demo: DemoCorpusConfig | None = None, seed: int = 0,
                   files: list[Path] | None = None, require_rows: bool = True) -> Iterator[dict[str, Any]]:
    """Good rows `{"id", "source", "line", "prompt", "chosen", "rejected"}` and quarantined rows."""
    return read_rows(source, demo, seed, files, require_rows)


def read_rows(source: SourceBase, demo: DemoCorpusConfig | None = None, seed: int = 0,
              files: list[Path] | None = None, require_rows: bool = True) -> Iterator[dict[str, Any]]:
    """Rows of any source type; configuration errors (no file, bad kind) are raised here, before iteration."""
    if source.kind == "text" and source.id_field:
        raise SourceError(f"{describe_source(source)}: `id_field` needs structured rows; text lines have no fields")
    if source.kind == "demo" and isinstance(source, PrefSource):
        raise SourceError(f"{describe_source(source)}: there is no demo preference data "
                          "(build_prefs makes pairs from the SFT model); use a jsonl/parquet/hf source")
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
    for row in rows:
        yield row
        if not is_quarantined(row):
            good += 1
            if source.limit is not None and good >= source.limit:
                return
    if good == 0 and require_rows:
        raise SourceError(f"{describe_source(source)}: no valid rows (every row was quarantined or the source "
                          "is empty); see the quarantine reasons")


def _raw_rows(source: SourceBase, demo: DemoCorpusConfig | None, seed: int,
              files: list[Path]) -> Iterator[dict[str, Any]]:
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
    return {"source": source_name, "line": line, "reason": f"{kind}: {detail}", "raw": raw[:_RAW_MAX_CHARS]}


def _row_from_record(record: Any, fields: dict[str, str], id_field: str | None, source_name: str, line: int,
                     default_id: str, raw: str) -> dict[str, Any]:
    """Validate one parsed record: every wanted field (canonical -> input name) a non-empty string, the id usable."""
    if not isinstance(record, dict):
        return _quarantine(source_name, line, "not_an_object", f"expected a JSON object, got "
                           f"{type(record).__name__}", raw)
    row: dict[str, Any] = {"id": default_id, "source": source_name, "line": line}
    if id_field:
        value = record.get(id_field)
        # bool is an int subclass, but a True/False id is certainly a mistake.
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            return _quarantine(source_name, line, "bad_id", f"id field {id_field!r} is "
                               f"{_describe_value(value)}; expected a non-empty string or integer", raw)
        row["id"] = str(value)
    for canonical, field in fields.items():
        if field not in record or record[field] is None:
            return _quarantine(source_name, line, "missing_field", f"no {field!r} field", raw)
        value = record[field]
        if not isinstance(value, str):
            return _quarantine(source_name, line, "not_a_string", f"field {field!r} is "
                               f"{_describe_value(value)}", raw)
        if not value.strip():
            return _quarantine(source_name, line, "empty_field", f"field {field!r} is empty or whitespace", raw)
        row[canonical] = value
    return row


def _describe_value(value: Any) -> str:
    if value is None:
        return "missing"
    return f"a {type(value).__name__} ({str(value)[:40]!r})"


def _decode_lines(path: Path) -> Iterator[tuple[int, bytes, str | None, str | None]]:
    """(1-based line number, raw bytes, decoded text or None, decode error or None) per line of a file."""
    size = path.stat().st_size
    with open(path, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=path.name,
                                          disable=size < _PROGRESS_MIN_BYTES, mininterval=5) as progress:
        for number, raw in enumerate(handle, start=1):
            progress.update(len(raw))
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark is an encoding artefact, not text
            raw = raw.rstrip(b"\r\n")
            try:
                yield number, raw, raw.decode("utf-8"), None
            except UnicodeDecodeError as err:
                yield number, raw, None, f"not UTF-8 at byte {err.start}: {err.reason}"


def _jsonl_rows(source: SourceBase, path: Path) -> Iterator[dict[str, Any]]:
    name = str(path)
    for number, raw, text, decode_error in _decode_lines(path):
        if decode_error is not None:
            yield _quarantine(name, number, "undecodable", decode_error, raw.decode("utf-8", errors="replace"))
            continue
        if not text.strip():
            continue  # blank lines separate nothing in JSONL: they are not rows
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield _quarantine(name, number, "invalid_json", f"{err.msg} at column {err.colno}", text)
            continue
        fields = source_fields(source)
        yield _row_from_record(record, fields, source.id_field, name, number, f"{name}:{number}", text)


def _text_rows(source: SourceBase, path: Path) -> Iterator[dict[str, Any]]:
    """One document per non-empty line; blank lines are separators, not data."""
    name = str(path)
    (canonical,) = source_fields(source)  # only text sources can have kind `text`
    for number, raw, text, decode_error in _decode_lines(path):
        if decode_error is not None:
            yield _quarantine(name, number, "undecodable", decode_error, raw.decode("utf-8", errors="replace"))
            continue
        if not text.strip():
            continue
        yield {"id": f"{name}:{number}", "source": name, "line": number, canonical: text}


def _parquet_rows(source: SourceBase, path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise SourceError(f"{describe_source(source)}: {name} is not a readable parquet file: {err}") from None
    wanted = list(source_fields(source).values()) + ([source.id_field] if source.id_field else [])
    present = set(parquet.schema_arrow.names)
    missing = [column for column in wanted if column not in present]
    if missing:
        # A missing column is a property of the file, not of a row: say so once instead of quarantining all rows.
        raise SourceError(f"{describe_source(source)}: {name} has no column(s) {missing}; "
                          f"columns are {sorted(present)}")
    fields = source_fields(source)
    number = 0
    with tqdm(total=parquet.metadata.num_rows, unit="rows", desc=path.name, mininterval=5,
              disable=parquet.metadata.num_rows < 200_000) as progress:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=list(dict.fromkeys(wanted))):
            for record in batch.to_pylist():
                number += 1
                raw = json.dumps(record, ensure_ascii=False, default=str)
                yield _row_from_record(record, fields, source.id_field, name, number, f"{name}:{number}", raw)
            progress.update(batch.num_rows)


def _demo_rows(source: SourceBase, demo: DemoCorpusConfig, seed: int) -> Iterator[dict[str, Any]]:
    # Imported late: the demo corpus is optional for every other kind, and tests may substitute it.
    demo_corpus = importlib.import_module("zero_chatgpt.data_process.demo_corpus")
    if isinstance(source, SftSource):
        records = demo_corpus.demo_sft_pairs(demo, seed)
        fields = {"prompt": "prompt", "response": "response", "answer": "answer"}
    else:
        records = demo_corpus.demo_documents(demo, seed)
        fields = {"text": "text"}
    # Demo records already use the canonical names and carry their own stable ids.
    for number, record in enumerate(records, start=1):
        raw = json.dumps(record, ensure_ascii=False, default=str)
        yield _row_from_record(record, fields, "id", "demo", number, f"demo:{number}", raw)


def _open_hf_stream(source: SourceBase) -> Iterable[Any]:
    """`datasets.load_dataset(..., streaming=True)`, or a `SourceError` when offline or it fails."""
    label = describe_source(source)
    offline = [var for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
               if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        raise SourceError(f"{label}: Hugging Face datasets are offline ({offline[0]} is set); download the data "
                          "and use a local jsonl/parquet source instead")
    try:
        import datasets

        return datasets.load_dataset(source.name, source.subset, split=source.split, streaming=True)
    except Exception as err:  # network, auth, unknown name: all mean this source cannot be read
        raise SourceError(f"{label}: could not open the dataset (subset={source.subset!r}, "
                          f"split={source.split!r}): {type(err).__name__}: {err}") from err


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
            raise SourceError(f"{describe_source(source)}: reading failed after {number} rows: "
                              f"{type(err).__name__}: {err}") from err
        number += 1
        raw = json.dumps(record, ensure_ascii=False, default=str)
        yield _row_from_record(record, fields, source.id_field, name, number, f"{name}:{number}", raw)
