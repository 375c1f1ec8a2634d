"""Bad input of every kind: it is quarantined with file, line and reason, or refused in seconds, never a crash.

Covers the source readers (lone surrogates, NULs, control characters, binary files, directories, over-long
lines, undecodable parquet strings), the preflight `check_configured_sources`, file content in stage fingerprints,
and a property test that throws generated rows at every file source kind.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zero_chatgpt.data_process.sources as sources
from zero_chatgpt.config import CleanConfig, DemoCorpusConfig, SftSource, TextSource, load_config
from zero_chatgpt.data_process.clean import REJECTED_FILE, clean_corpus
from zero_chatgpt.data_process.sources import (
    SourceError,
    check_configured_sources,
    check_sources,
    expand_source_files,
    is_quarantined,
    read_rows,
    read_sft_rows,
    read_text_rows,
    reason_kind,
    source_version,
)
from zero_chatgpt.file_hash import FileHashCache

GOOD = "The river town of Amberfall trades salt and wool with the valley villages every spring."


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def split_rows(rows):
    rows = list(rows)
    return [r for r in rows if not is_quarantined(r)], [r for r in rows if is_quarantined(r)]


def invalid_utf8_parquet(path: Path, values: list[bytes | None]) -> Path:
    """A parquet file whose UTF-8 string column holds bytes that are not UTF-8 (pyarrow does not check them)."""
    raw = pa.array(values, pa.binary())
    pq.write_table(
        pa.table({"text": pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)}), path
    )
    return path


# ----------------------------------------------------------------------------------------- bad rows


def test_a_lone_surrogate_row_is_quarantined_and_clean_writes_the_rest(tmp_path):
    corpus = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": GOOD}).encode(),
            b'{"text": "' + GOOD.encode() + b' \\ud83d"}',  # valid JSON, but no UTF-8 can hold U+D83D alone
            b'{"text": "pair \\ud83d\\ude00 is fine ' + GOOD.encode() + b'"}',
        ],
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="jsonl", path=str(corpus))))
    assert [r["line"] for r in good] == [1, 3] and good[1]["text"].startswith("pair \U0001f600")
    (row,) = bad
    assert row["line"] == 2 and reason_kind(row["reason"]) == "unencodable" and "U+D83D" in row["reason"]
    row["raw"].encode("utf-8")  # the quarantined raw text is storable
    metrics = clean_corpus(
        [TextSource(kind="jsonl", path=str(corpus))],
        DemoCorpusConfig(),
        CleanConfig(min_length=1),
        tmp_path / "out",
        seed=0,
    )
    assert metrics["docs_out"] == 2 and metrics["quarantine_reasons"] == {"unencodable": 1}
    rejected = pq.read_table(tmp_path / "out" / REJECTED_FILE).to_pylist()
    assert [(r["line"], r["rule"]) for r in rejected] == [(2, "quarantine")]


def test_nul_and_control_characters_are_quarantined_not_kept(tmp_path):
    corpus = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": GOOD + "\u0000"}).encode(),
            json.dumps({"text": "\x01\x02\x03\x04 " + "\x1b" * 10 + " abc"}).encode(),
            json.dumps({"text": GOOD + "\x0c next page \x1b[1m bold"}).encode(),  # a few controls are text
        ],
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="jsonl", path=str(corpus))))
    assert [r["line"] for r in good] == [3]
    assert [(r["line"], reason_kind(r["reason"])) for r in bad] == [(1, "binary"), (2, "control_chars")]
    text = write_lines(tmp_path / "c.txt", [GOOD.encode(), b"abc\x00\x00def " + GOOD.encode(), GOOD.encode()])
    good, bad = split_rows(read_text_rows(TextSource(kind="text", path=str(text))))
    assert [r["line"] for r in good] == [1, 3] and [(r["line"], reason_kind(r["reason"])) for r in bad] == [
        (2, "binary")
    ]


def test_parquet_strings_that_are_not_utf8_cost_only_their_rows(tmp_path):
    path = invalid_utf8_parquet(
        tmp_path / "c.parquet", [GOOD.encode(), b"\xff\xfe bad", None, b"\xed\xa0\xbd x", GOOD.encode()]
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="parquet", path=str(path))))
    assert [r["line"] for r in good] == [1, 5]
    assert [(r["line"], reason_kind(r["reason"])) for r in bad] == [
        (2, "undecodable"),
        (3, "missing_field"),
        (4, "undecodable"),
    ]
    assert all(isinstance(r["raw"], str) for r in bad)


def test_an_over_long_line_is_quarantined_and_the_next_line_keeps_its_number(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 200)
    corpus = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"text": GOOD}).encode(),
            json.dumps({"text": "x" * 5000}).encode(),
            json.dumps({"text": GOOD + " again"}).encode(),
        ],
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="jsonl", path=str(corpus))))
    assert [r["line"] for r in good] == [1, 3]
    (row,) = bad
    assert row["line"] == 2 and reason_kind(row["reason"]) == "line_too_long" and "5013 bytes > 200" in row["reason"]
    assert len(row["raw"]) <= 201


# -------------------------------------------------------------------------------- files and paths


def test_a_shared_library_given_as_text_is_refused_naming_the_file(tmp_path):
    import xxhash._xxhash as compiled

    library = Path(shutil.copy(compiled.__file__, tmp_path / "lib.so"))
    source = TextSource(kind="text", path=str(tmp_path / "*"))
    started = time.perf_counter()
    with pytest.raises(SourceError, match=r"text source .*file .*lib\.so is not a text file: it looks like an ELF"):
        check_sources([source])
    assert time.perf_counter() - started < 5
    with pytest.raises(SourceError, match="ELF"):
        list(read_text_rows(source, files=[library], require_rows=False))
    nul_padded = tmp_path / "zeros.txt"
    nul_padded.write_bytes(b"\x00" * 4000 + b"text\n")
    with pytest.raises(SourceError, match="NUL bytes"):
        list(read_text_rows(TextSource(kind="text", path=str(nul_padded))))


def test_a_directory_path_reads_its_files_and_an_empty_one_is_named_as_a_directory(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_lines(folder / "a.jsonl", [json.dumps({"text": GOOD}).encode()])
    write_lines(folder / "sub" / "b.jsonl", [json.dumps({"text": GOOD + " b"}).encode()])
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".a.jsonl.crc").write_bytes(b"\x00\x01")
    source = TextSource(kind="jsonl", path=str(folder))
    assert expand_source_files(source) == [folder / "a.jsonl", folder / "sub" / "b.jsonl"]
    assert len(list(read_text_rows(source))) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="is a directory with no readable file"):
        expand_source_files(TextSource(kind="jsonl", path=str(tmp_path / "empty")))
    with pytest.raises(SourceError, match="the file does not exist"):
        expand_source_files(TextSource(kind="jsonl", path=str(tmp_path / "nope.jsonl")))


# ------------------------------------------------------------------------------------------ preflight


def test_a_wrong_field_name_fails_preflight_naming_source_file_line_and_the_fields_rows_have(tmp_path):
    sft = write_lines(
        tmp_path / "sft.jsonl", [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}).encode() for i in range(200)]
    )
    config = load_config(
        "tiny", {"data": {"sft_sources": [{"kind": "jsonl", "path": str(sft), "prompt_field": "question"}]}}
    )
    started = time.perf_counter()
    with pytest.raises(SourceError) as error:
        check_configured_sources(config)
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert f"jsonl source {str(sft)!r}" in message and f"file {sft}" in message and "line 1:" in message
    assert "missing_field x50" in message and "no 'question' field" in message
    assert "the rows have fields ['instruction', 'output']" in message


def test_an_all_gbk_file_fails_preflight_with_the_reason_and_an_encoding_hint(tmp_path):
    corpus = write_lines(tmp_path / "gbk.txt", ["青石镇位于河谷之中，以盐和羊毛贸易闻名。".encode("gbk")] * 30)
    with pytest.raises(
        SourceError,
        match=r"gbk\.txt is valid; line 1: undecodable: not UTF-8 .*GB18030.*"
        r"undecodable x30",
    ):
        check_sources([TextSource(kind="text", path=str(corpus))])


def test_no_valid_rows_always_lists_the_quarantine_reasons_with_counts(tmp_path):
    corpus = write_lines(tmp_path / "c.jsonl", [b'{"body": "x"}'] * 3 + [b"{oops"])
    source = TextSource(kind="jsonl", path=str(corpus))
    with pytest.raises(
        SourceError,
        match=r"no valid rows: all 4 rows were quarantined \(missing_field x3, "
        r"invalid_json x1\); first: .*c\.jsonl line 1: missing_field",
    ):
        list(read_text_rows(source))
    with pytest.raises(SourceError, match=r"no valid rows: all 4 rows .*missing_field x3"):
        clean_corpus([source], DemoCorpusConfig(), CleanConfig(min_length=1), tmp_path / "out", seed=0)


def test_preflight_passes_good_sources_and_skips_demo(tmp_path):
    sft = write_lines(tmp_path / "sft.jsonl", [json.dumps({"prompt": "q", "response": "a"}).encode()])
    check_sources([TextSource(kind="demo"), SftSource(kind="jsonl", path=str(sft))], DemoCorpusConfig())
    assert len(list(read_sft_rows(SftSource(kind="jsonl", path=str(sft))))) == 1


# --------------------------------------------------------------------------------------- fingerprints


def test_file_source_version_follows_content_and_its_cache_skips_unchanged_files(tmp_path, monkeypatch):
    corpus = write_lines(tmp_path / "c.jsonl", [json.dumps({"text": GOOD}).encode()])
    source = TextSource(kind="jsonl", path=str(corpus))
    cache = FileHashCache(tmp_path / "hashes.json")
    first = source_version(source, cache)
    (entry,) = first["files"]
    assert entry["file"] == str(corpus) and entry["bytes"] == corpus.stat().st_size and len(entry["xxh3"]) == 32
    reads = []
    monkeypatch.setattr("zero_chatgpt.file_hash.hash_file", lambda path: reads.append(path) or "h")
    assert source_version(source, cache) == first and reads == []  # size and mtime unchanged: not reread
    monkeypatch.undo()
    with corpus.open("ab") as handle:
        handle.write(json.dumps({"text": GOOD + " more"}).encode() + b"\n")
    assert source_version(source, cache) != first


def test_appending_to_one_source_changes_only_the_stages_that_read_it(tmp_path):
    from zero_chatgpt.tasks.build_prefs import BUILD_PREFS
    from zero_chatgpt.tasks.clean import CLEAN
    from zero_chatgpt.tasks.evaluate import EVALUATE
    from zero_chatgpt.tasks.sft import SFT

    text = write_lines(tmp_path / "text.jsonl", [json.dumps({"text": GOOD}).encode()])
    sft = write_lines(tmp_path / "sft.jsonl", [json.dumps({"prompt": "q", "response": "a"}).encode()])
    config = load_config(
        "tiny",
        {
            "data": {
                "sources": [{"kind": "jsonl", "path": str(text)}],
                "sft_sources": [{"kind": "jsonl", "path": str(sft)}],
            }
        },
    )
    config = config.model_dump(mode="json")
    upstream = {"pretrain": {"fingerprint": "0" * 64}, "sft": {"fingerprint": "1" * 64}}
    specs = (CLEAN, SFT, BUILD_PREFS, EVALUATE)

    def fingerprints():
        return {spec.name: spec.fingerprint(config, upstream, str(tmp_path / "root")) for spec in specs}

    before = fingerprints()
    assert (tmp_path / "root" / ".cache" / "source-hashes.json").is_file()
    with text.open("ab") as handle:
        handle.write(json.dumps({"text": GOOD + " more"}).encode() + b"\n")
    after_text = fingerprints()
    assert {name for name in before if before[name] != after_text[name]} == {"clean"}
    with sft.open("ab") as handle:
        handle.write(json.dumps({"prompt": "q2", "response": "a2"}).encode() + b"\n")
    after_sft = fingerprints()
    assert {name for name in before if after_text[name] != after_sft[name]} == {"sft"}


# ---------------------------------------------------------------------------------- property test

# Characters biased towards what breaks readers: lone surrogates, NUL, other controls, line ends, CJK.
_NASTY = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from(["\ud83d", "\udc00", "\x00", "\x01", "\x1b", "\r", " ", "\t", "a", "中", "\ufeff"]),
)
_TEXT = st.lists(_NASTY, max_size=40).map("".join)  # st.text would filter the surrogates out
_VALUE = st.one_of(
    _TEXT,
    _TEXT.map(lambda t: GOOD + t),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.booleans(),
    st.floats(allow_nan=False),
)


@st.composite
def jsonl_lines(draw) -> list[bytes]:
    """One non-blank line per row: objects with and without the field, of any type, escaped or raw, and junk."""
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        choice = draw(st.sampled_from(["object", "object_raw", "missing", "not_object", "invalid", "bytes"]))
        if choice in ("object", "object_raw"):
            text = json.dumps({"text": draw(_VALUE)}, ensure_ascii=choice == "object")
            lines.append(text.encode("utf-8", "surrogatepass"))  # raw surrogates become bytes no UTF-8 decoder takes
        elif choice == "missing":
            lines.append(json.dumps({"body": draw(_VALUE)}).encode())
        elif choice == "not_object":
            lines.append(json.dumps(draw(st.lists(st.integers(), max_size=3))).encode())
        elif choice == "invalid":
            lines.append(b"{" + draw(_TEXT).encode("utf-8", "surrogatepass").replace(b"\n", b" "))
        else:
            lines.append(b"#" + draw(st.binary(max_size=30)).replace(b"\n", b" "))
    return lines


@st.composite
def text_lines(draw) -> list[bytes]:
    """Lines of any characters (surrogates written as their invalid bytes); a visible first character keeps each
    line a row (blank lines are separators, not rows)."""
    return [
        b"x" + draw(_TEXT).encode("utf-8", "surrogatepass").replace(b"\n", b" ")
        for _ in range(draw(st.integers(1, 12)))
    ]


@st.composite
def parquet_column(draw) -> pa.Array:
    """A `text` column of strings (some not UTF-8, some null or empty), or of the wrong type."""
    kind = draw(st.sampled_from(["string", "string", "int", "binary"]))
    count = draw(st.integers(1, 12))
    if kind == "int":
        return pa.array(draw(st.lists(st.integers(-9, 9), min_size=count, max_size=count)))
    values = [
        draw(
            st.one_of(
                st.none(), _TEXT.map(lambda t: (GOOD + t).encode("utf-8", "surrogatepass")), st.binary(max_size=20)
            )
        )
        for _ in range(count)
    ]
    raw = pa.array(values, pa.binary())
    if kind == "binary":
        return raw
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), null_count=raw.null_count)


def _check_accounting(source: TextSource, path: Path, rows_in: int, out_dir: Path) -> None:
    """Rows in = good + quarantined; every good text is UTF-8 storable, NUL-free and non-blank; clean survives."""
    try:
        good, bad = split_rows(read_rows(source, files=[path], require_rows=False))
    except SourceError as err:
        # Only a file that is not text at all may be refused whole, and then by name.
        assert "is not" in str(err) and path.name in str(err), err
        return
    assert len(good) + len(bad) == rows_in
    for row in good:
        row["text"].encode("utf-8")
        assert "\x00" not in row["text"] and row["text"].strip()
    for row in bad:
        row["raw"].encode("utf-8")
        assert row["line"] is not None and ":" in row["reason"]
    try:
        metrics = clean_corpus([source], DemoCorpusConfig(), CleanConfig(min_length=1), out_dir, seed=0)
    except SourceError as err:
        assert not good and "no valid rows" in str(err)
        return
    assert metrics["docs_in"] == rows_in and metrics["quarantined"] >= len(bad)
    assert pq.read_table(out_dir / REJECTED_FILE).num_rows == rows_in - metrics["docs_out"]


_PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@_PROPERTY
@given(lines=jsonl_lines())
def test_property_jsonl_rows_in_equal_rows_out_plus_quarantined(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("jsonl")
    path = write_lines(folder / "rows.jsonl", lines)
    _check_accounting(TextSource(kind="jsonl", path=str(path)), path, len(lines), folder / "out")


@_PROPERTY
@given(lines=text_lines())
def test_property_text_rows_in_equal_rows_out_plus_quarantined(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("text")
    path = write_lines(folder / "rows.txt", lines)
    _check_accounting(TextSource(kind="text", path=str(path)), path, len(lines), folder / "out")


@_PROPERTY
@given(column=parquet_column())
def test_property_parquet_rows_in_equal_rows_out_plus_quarantined(tmp_path_factory, column):
    folder = tmp_path_factory.mktemp("parquet")
    path = folder / "rows.parquet"
    pq.write_table(pa.table({"text": column}), path)
    _check_accounting(TextSource(kind="parquet", path=str(path)), path, len(column), folder / "out")


def test_preflight_refuses_sources_with_no_rows_and_demo_config_mistakes(tmp_path):
    from zero_chatgpt.config import PrefSource

    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    with pytest.raises(SourceError, match="holds no rows at all"):
        check_sources([TextSource(kind="jsonl", path=str(tmp_path / "empty.jsonl"))])
    with pytest.raises(SourceError, match="no demo preference data"):
        check_sources([PrefSource(kind="demo")])
