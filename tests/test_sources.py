"""Source readers: good rows, quarantined rows with reasons and line numbers, and clear source errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zero_chatgpt.config import DemoCorpusConfig, PrefSource, QaSource, SftSource, TextSource
from zero_chatgpt.data_process import sources
from zero_chatgpt.data_process.sources import (
    SourceError,
    expand_source_files,
    file_spans,
    is_quarantined,
    read_all_rows,
    read_pref_rows,
    read_qa_rows,
    read_sft_rows,
    read_span_rows,
    read_text_rows,
    reason_kind,
    source_version,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def messy_jsonl(path: Path) -> Path:
    """Line -> content: 1 good en, 2 broken JSON, 3 missing text, 4 int text, 5 bad bytes, 6 empty,
    7 blank (not a row), 8 good zh, 9 whitespace text, 10 a JSON list, 11 null text."""
    return write_lines(
        path,
        [
            json.dumps({"text": "The river town trades salt and wool."}).encode(),
            b'{"text": "unterminated',
            json.dumps({"body": "no text field here"}).encode(),
            json.dumps({"text": 42}).encode(),
            b'{"text": "\xff\xfe broken bytes"}',
            json.dumps({"text": ""}).encode(),
            b"",
            json.dumps({"text": "青石镇位于河谷之中，以盐和羊毛贸易闻名。"}, ensure_ascii=False).encode(),
            json.dumps({"text": "  \n\t "}).encode(),
            b"[1, 2, 3]",
            json.dumps({"text": None}).encode(),
        ],
    )


def split_rows(rows):
    rows = list(rows)
    return [r for r in rows if not is_quarantined(r)], [r for r in rows if is_quarantined(r)]


def test_jsonl_good_and_quarantined_rows_with_lines_and_reasons(tmp_path):
    path = messy_jsonl(tmp_path / "messy.jsonl")
    good, bad = split_rows(read_text_rows(TextSource(kind="jsonl", path=str(path))))

    assert [(r["line"], r["id"]) for r in good] == [(1, f"{path}:1"), (8, f"{path}:8")]
    assert good[1]["text"] == "青石镇位于河谷之中，以盐和羊毛贸易闻名。"
    assert all(r["source"] == str(path) for r in good + bad)
    kinds = {r["line"]: reason_kind(r["reason"]) for r in bad}
    assert kinds == {
        2: "invalid_json",
        3: "missing_field",
        4: "not_a_string",
        5: "undecodable",
        6: "empty_field",
        9: "empty_field",
        10: "not_an_object",
        11: "missing_field",
    }
    assert "broken bytes" in next(r["raw"] for r in bad if r["line"] == 5)
    assert "'text'" in next(r["reason"] for r in bad if r["line"] == 3)


@pytest.mark.parametrize("span_bytes", [1, 40, 150, 10**6])
def test_a_file_read_in_spans_gives_the_rows_of_one_read(tmp_path, monkeypatch, span_bytes):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 200)
    lines = messy_jsonl(tmp_path / "m.jsonl").read_bytes().split(b"\n")[:-1]
    lines[0] = b"\xef\xbb\xbf" + lines[0] + b"\r"  # a byte order mark and a Windows line end
    lines.insert(3, json.dumps({"text": "x" * 500}).encode())  # cut and skipped, still one numbered line
    jsonl = tmp_path / "spans.jsonl"
    jsonl.write_bytes(b"\n".join(lines))  # no newline after the last line
    text = write_lines(tmp_path / "plain.txt", [b"first line", b"", b"\x00binary", "第四行".encode(), b"fifth"])
    for source in (TextSource(kind="jsonl", path=str(jsonl)), TextSource(kind="text", path=str(text))):
        path = Path(source.path)
        spans = file_spans(source, path, span_bytes)
        assert spans[0].start == 0 and spans[-1].stop == path.stat().st_size
        assert all(a.stop == b.start for a, b in zip(spans, spans[1:]))
        assert [row for span in spans for row in read_span_rows(source, span)] == list(read_text_rows(source))


def test_a_parquet_file_is_cut_into_spans_of_whole_row_groups(tmp_path):
    path = tmp_path / "t.parquet"
    texts = [f"document {i}" if i != 5 else None for i in range(23)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=4)
    source = TextSource(kind="parquet", path=str(path))
    spans = file_spans(source, path, span_bytes=1)
    assert [(s.start, s.stop, s.first_line) for s in spans] == [(i, i + 1, 4 * i + 1) for i in range(6)]
    rows = [row for span in spans for row in read_span_rows(source, span)]
    assert rows == list(read_text_rows(source))
    assert [row["line"] for row in rows] == list(range(1, 24)) and is_quarantined(rows[5])


def test_id_field_used_and_bad_ids_quarantined(tmp_path):
    path = write_lines(
        tmp_path / "ids.jsonl",
        [
            json.dumps({"doc": "a-1", "text": "first"}).encode(),
            json.dumps({"doc": 7, "text": "second"}).encode(),
            json.dumps({"text": "no id"}).encode(),
            json.dumps({"doc": True, "text": "boolean id"}).encode(),
        ],
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="jsonl", path=str(path), id_field="doc")))
    assert [r["id"] for r in good] == ["a-1", "7"]
    assert [(r["line"], reason_kind(r["reason"])) for r in bad] == [(3, "bad_id"), (4, "bad_id")]


def test_parquet_rows_numbered_from_one_and_nulls_quarantined(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["alpha text", None, "gamma 文本"], "n": [1, 2, 3]}), path)
    good, bad = split_rows(read_text_rows(TextSource(kind="parquet", path=str(path), text_field="content")))
    assert [(r["id"], r["line"], r["text"]) for r in good] == [
        (f"{path}:1", 1, "alpha text"),
        (f"{path}:3", 3, "gamma 文本"),
    ]
    assert [(r["line"], reason_kind(r["reason"])) for r in bad] == [(2, "missing_field")]


def test_parquet_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(SourceError, match=r"docs\.parquet.*'text'"):
        list(read_text_rows(TextSource(kind="parquet", path=str(path))))


def test_text_source_one_document_per_non_empty_line(tmp_path):
    path = write_lines(tmp_path / "plain.txt", [b"first line", b"", b"   ", b"third \xff line", "第五行".encode()])
    good, bad = split_rows(read_text_rows(TextSource(kind="text", path=str(path))))
    assert [(r["line"], r["text"]) for r in good] == [(1, "first line"), (5, "第五行")]
    assert [(r["line"], reason_kind(r["reason"])) for r in bad] == [(4, "undecodable")]


def test_glob_over_several_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl"):
        write_lines(tmp_path / name, [json.dumps({"text": f"doc from {name}"}).encode()])
    flat = TextSource(kind="jsonl", path=str(tmp_path / "*.jsonl"))
    assert [p.name for p in expand_source_files(flat)] == ["a.jsonl", "b.jsonl"]
    deep = TextSource(kind="jsonl", path=str(tmp_path / "**" / "*.jsonl"))
    texts = [r["text"] for r in read_text_rows(deep)]
    assert texts == ["doc from a.jsonl", "doc from b.jsonl", "doc from sub/c.jsonl"]


def test_missing_path_and_empty_glob_raise_naming_the_source(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(SourceError, match=r"jsonl source .*nope\.jsonl.*does not exist"):
        read_text_rows(TextSource(kind="jsonl", path=str(missing)))
    with pytest.raises(SourceError, match=r"parquet source .*no file matches"):
        expand_source_files(TextSource(kind="parquet", path=str(tmp_path / "*.parquet")))
    assert issubclass(SourceError, ValueError)


def test_source_without_any_good_row_raises(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [b"{not json", json.dumps({"text": ""}).encode()])
    rows = read_text_rows(TextSource(kind="jsonl", path=str(path)))
    with pytest.raises(SourceError, match=r"bad\.jsonl.*no valid rows"):
        list(rows)
    # A partial read (one file of a glob) may legitimately have no good row.
    partial = list(read_text_rows(TextSource(kind="jsonl", path=str(path)), require_rows=False))
    assert len(partial) == 2 and all(is_quarantined(r) for r in partial)


def test_limit_caps_good_rows_only(tmp_path):
    path = write_lines(
        tmp_path / "many.jsonl", [b"{bad"] + [json.dumps({"text": f"doc {i}"}).encode() for i in range(10)]
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="jsonl", path=str(path), limit=3)))
    assert [r["text"] for r in good] == ["doc 0", "doc 1", "doc 2"]
    assert len(bad) == 1


def test_sft_and_pref_rows_use_canonical_names(tmp_path):
    sft = write_lines(
        tmp_path / "sft.jsonl",
        [
            json.dumps({"q": "What is 2+2?", "a": "4"}).encode(),
            json.dumps({"q": "No answer"}).encode(),
        ],
    )
    good, bad = split_rows(read_sft_rows(SftSource(kind="jsonl", path=str(sft), prompt_field="q", response_field="a")))
    assert good == [{"id": f"{sft}:1", "source": str(sft), "line": 1, "prompt": "What is 2+2?", "response": "4"}]
    assert "'a'" in bad[0]["reason"]

    # With `answer_field` the short answer is read too, and a row without it is quarantined naming the field.
    qa = write_lines(
        tmp_path / "qa.jsonl",
        [
            json.dumps({"q": "Capital of Eldonia?", "a": "Its capital is Talmer.", "short": "Talmer"}).encode(),
            json.dumps({"q": "Capital of Orvane?", "a": "Its capital is Pell."}).encode(),
        ],
    )
    good, bad = split_rows(
        read_sft_rows(SftSource(kind="jsonl", path=str(qa), prompt_field="q", response_field="a", answer_field="short"))
    )
    assert [(r["prompt"], r["answer"]) for r in good] == [("Capital of Eldonia?", "Talmer")]
    assert bad[0]["line"] == 2 and "'short'" in bad[0]["reason"]

    pref = write_lines(
        tmp_path / "pref.jsonl",
        [
            json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}).encode(),
            json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": ["list"]}).encode(),
        ],
    )
    good, bad = split_rows(read_pref_rows(PrefSource(kind="jsonl", path=str(pref))))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in good] == [("Hi", "Hello!", "Go away.")]
    assert reason_kind(bad[0]["reason"]) == "not_a_string"


def test_demo_source_reads_the_demo_corpus(monkeypatch):
    seen = {}

    def demo_documents(cfg, seed):
        seen["docs"] = (cfg.num_entities, seed)
        return [
            {"id": "demo-0", "text": "Amberfall is a river town.", "lang": "en", "planted": False},
            {"id": "demo-1", "text": "", "lang": "en", "planted": False},
        ]

    def demo_sft_pairs(cfg, seed):
        return [
            {
                "id": "sft-0",
                "prompt": "Where is Amberfall?",
                "response": "By the river.",
                "answer": "river",
                "lang": "en",
            }
        ]

    def demo_eval_questions(cfg, seed):
        return [{"id": "eval-0", "prompt": "What is the river of Amberfall?", "answer": "Sel", "lang": "en"}]

    fake = types.ModuleType("zero_chatgpt.data_process.demo_corpus")
    fake.demo_documents, fake.demo_sft_pairs = demo_documents, demo_sft_pairs
    fake.demo_eval_questions, fake.DEMO_CORPUS_VERSION = demo_eval_questions, 77
    monkeypatch.setitem(sys.modules, "zero_chatgpt.data_process.demo_corpus", fake)

    good, bad = split_rows(read_text_rows(TextSource(kind="demo"), DemoCorpusConfig(num_entities=9), seed=5))
    assert seen["docs"] == (9, 5)
    assert [(r["id"], r["source"], r["line"]) for r in good] == [("demo-0", "demo", 1)]
    assert reason_kind(bad[0]["reason"]) == "empty_field"
    sft = list(read_sft_rows(SftSource(kind="demo"), DemoCorpusConfig(), seed=5))
    assert sft[0]["id"] == "sft-0" and sft[0]["response"] == "By the river." and sft[0]["answer"] == "river"
    with pytest.raises(SourceError, match="no demo preference data"):
        read_pref_rows(PrefSource(kind="demo"))
    (question,) = read_qa_rows(QaSource(kind="demo"), DemoCorpusConfig(), seed=5)
    assert {key: question[key] for key in ("id", "question", "answer", "lang")} == {
        "id": "eval-0",
        "question": "What is the river of Amberfall?",
        "answer": "Sel",
        "lang": "en",
    }
    # The demo's version is its generator's, for every row type (files: see test_file_source_version_...).
    assert source_version(TextSource(kind="demo")) == source_version(QaSource(kind="demo")) == {"generator_version": 77}


def test_qa_source_reads_questions_and_answers_from_any_file(tmp_path):
    qa = write_lines(
        tmp_path / "qa.jsonl",
        [
            json.dumps({"question": "Capital of Borfen?", "answer": "Adel"}).encode(),
            json.dumps({"question": "Longest river?"}).encode(),
            json.dumps({"q": "Highest peak?", "a": "Tarn", "language": "en"}).encode(),
        ],
    )
    good, bad = split_rows(read_qa_rows(QaSource(kind="jsonl", path=str(qa))))
    assert [(r["question"], r["answer"]) for r in good] == [("Capital of Borfen?", "Adel")]
    assert [(r["line"], reason_kind(r["reason"])) for r in bad] == [(2, "missing_field"), (3, "missing_field")]
    assert "lang" not in good[0]

    renamed = QaSource(kind="jsonl", path=str(qa), question_field="q", answer_field="a", lang_field="language")
    good, _ = split_rows(read_qa_rows(renamed))
    assert [(r["question"], r["answer"], r["lang"]) for r in good] == [("Highest peak?", "Tarn", "en")]


def test_read_all_rows_keeps_source_order_and_quarantines_repeated_ids(tmp_path):
    first = write_lines(
        tmp_path / "a.jsonl",
        [
            json.dumps({"id": "q1", "question": "A?", "answer": "a"}).encode(),
            json.dumps({"id": "q2", "question": "B?", "answer": "b"}).encode(),
        ],
    )
    second = write_lines(
        tmp_path / "b.jsonl", [json.dumps({"id": "q2", "question": "C?", "answer": "c"}).encode(), b"not json"]
    )
    sources = [QaSource(kind="jsonl", path=str(path), id_field="id") for path in (first, second)]
    good, bad = read_all_rows(sources)
    assert [row["question"] for row in good] == ["A?", "B?"]
    assert sorted(reason_kind(row["reason"]) for row in bad) == ["duplicate_id", "invalid_json"]


def test_hf_source_offline_or_failing_raises_source_error(monkeypatch):
    source = TextSource(kind="hf", name="someone/corpus", subset="en")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SourceError, match=r"hf source 'someone/corpus'.*offline"):
        read_text_rows(source)

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def failing_loader(name, subset, split, streaming):
        calls.append((name, subset, split, streaming))
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=failing_loader))
    with pytest.raises(SourceError, match=r"someone/corpus.*ConnectionError: no network"):
        read_text_rows(source)
    assert calls == [("someone/corpus", "en", "train", True)]


def test_hf_source_rows_from_a_stubbed_stream(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    stream = [{"text": "streamed document"}, {"text": 3}]
    monkeypatch.setitem(
        sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *args, **kwargs: iter(stream))
    )
    good, bad = split_rows(read_text_rows(TextSource(kind="hf", name="org/set")))
    assert [(r["id"], r["source"], r["line"]) for r in good] == [("hf:org/set:1", "hf:org/set", 1)]
    assert bad[0]["line"] == 2


def test_text_source_rejects_id_field(tmp_path):
    path = write_lines(tmp_path / "plain.txt", [b"line"])
    with pytest.raises(SourceError, match="id_field"):
        read_text_rows(TextSource(kind="text", path=str(path), id_field="id"))


def test_shared_dev_data_reads_cleanly():
    path = SHARED_DATA / "zh_sft.jsonl"
    if not path.is_file():
        pytest.skip("shared dev data not present")
    good, bad = split_rows(read_sft_rows(SftSource(kind="jsonl", path=str(path), limit=200)))
    assert len(good) == 200 and not bad
    assert all(r["prompt"].strip() and r["response"].strip() for r in good)


# ------------------------------------------------------------------------------------ chat formats


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_sft_conversations_in_openai_and_sharegpt_shapes_become_prompt_rows(tmp_path):
    records = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4."}]},
        {"messages": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]},
        {"messages": [{"role": "user", "content": "no reply"}]},
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}]},
        {"messages": "not a list"},
        {"text": "no messages field"},
    ]  # fmt: skip
    source = SftSource(kind="jsonl", path=str(write_jsonl(tmp_path / "chat.jsonl", records)), format="messages")
    good, bad = split_rows(read_sft_rows(source))
    assert [row["line"] for row in good] == [1, 2]
    assert good[0]["prompt"][0] == {"role": "system", "content": "Be brief."} and good[0]["response"] == "4."
    assert good[0]["prompt"][-1] == {"role": "user", "content": "2+2?"}
    assert good[1]["prompt"] == "Name a colour." and good[1]["response"] == "Blue."  # one user turn: plain text
    assert [(row["line"], reason_kind(row["reason"])) for row in bad] == [
        (3, "bad_conversation"),
        (4, "bad_conversation"),
        (5, "bad_conversation"),
        (6, "missing_field"),
    ]
    assert "turn 1" in bad[1]["reason"]


def test_hh_preferences_from_whole_transcripts_or_a_prompt_field(tmp_path):
    prefix = "\n\nHuman: What colour is the sky?\n\nAssistant: Why?\n\nHuman: Curious."
    records = [
        {"chosen": prefix + "\n\nAssistant: Blue.", "rejected": prefix + "\n\nAssistant: Go away."},
        {"chosen": prefix + "\n\nAssistant: Blue.", "rejected": "\n\nHuman: Other?\n\nAssistant: No."},
        {"prompt": prefix.lstrip(), "chosen": "Blue.", "rejected": "Green."},
    ]
    source = PrefSource(kind="jsonl", path=str(write_jsonl(tmp_path / "hh.jsonl", records)), format="hh")
    good, bad = split_rows(read_pref_rows(source))
    assert [row["line"] for row in good] == [1, 3]
    for row in good:
        assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
        assert row["prompt"][-1]["content"] == "Curious." and row["chosen"] == "Blue."
    assert good[0]["rejected"] == "Go away."
    ((line, reason),) = [(row["line"], row["reason"]) for row in bad]
    assert line == 2 and reason.startswith("bad_conversation") and "differ at turn 1" in reason


def test_hh_preferences_read_from_parquet_without_a_prompt_column(tmp_path):
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye"
    table = pa.table({"chosen": [prefix + "\n\nAssistant: Bye!"], "rejected": [prefix + "\n\nAssistant: No."]})
    pq.write_table(table, tmp_path / "hh.parquet")
    (row,) = read_pref_rows(PrefSource(kind="parquet", path=str(tmp_path / "hh.parquet"), format="hh"))
    assert row["prompt"][-1] == {"role": "user", "content": "Bye"} and row["rejected"] == "No."


@pytest.mark.skipif(not (SHARED_DATA / "en_pref.jsonl").is_file(), reason="../shared/data is not present")
def test_the_real_hh_sample_reads_with_multi_turn_prompts():
    source = PrefSource(kind="jsonl", path=str(SHARED_DATA / "en_pref.jsonl"), format="hh")
    good, bad = split_rows(read_pref_rows(source))
    assert len(good) + len(bad) == 1152 and len(bad) < 0.02 * len(good)
    assert sum(isinstance(row["prompt"], list) for row in good) > 0.3 * len(good)
