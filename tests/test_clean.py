"""The clean stage: each rule alone, then the whole stage on messy inputs (nothing lost, all accounted for)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zero_chatgpt.config import CleanConfig, DemoCorpusConfig, TextSource
from zero_chatgpt.data_process.clean import (
    DOC_SCHEMA,
    REJECTED_SCHEMA,
    clean_corpus,
    clean_text,
    collapse_punctuation_runs,
    filter_min_length,
    filter_section_keywords,
    filter_whitespace,
    length_units,
    normalize_unicode,
    strip_citations,
)
from zero_chatgpt.data_process.sources import SourceError
from zero_chatgpt.parallel import process_pool_map

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

EN_GOOD = (
    "Amberfall is a small river town in the northern valley. Its markets trade salt, wool and "
    "dried fish, and its stone bridge is older than the town charter itself."
)
ZH_GOOD = "青石镇位于北部河谷之中，以盐、羊毛和干鱼贸易闻名。镇上的石桥比建镇的文书还要古老，每年春天都有集市。"


# ------------------------------------------------------------------------------------------------ rules


def test_normalize_unicode_keeps_cjk_punctuation_under_nfkc():
    text = "ＡＢＣ１２３，你好！……"
    assert normalize_unicode(text, "NFKC") == "ABC123，你好！……"
    assert normalize_unicode(text, "NFKC", keep_cjk_punctuation=False) == "ABC123,你好!......"
    assert normalize_unicode(text, "none") == text
    assert normalize_unicode("e\u0301", "NFC") == "é"


def test_strip_citations_removes_marks_and_keeps_other_brackets():
    assert (
        strip_citations("Founded in 1802[1] by traders[1-2], rebuilt[1,3][ 4 , 5 ].")
        == "Founded in 1802 by traders, rebuilt."
    )
    assert strip_citations("北京是首都[2]。") == "北京是首都。"
    kept = "The census [2023] and items[i] and [note] stay."
    assert strip_citations(kept) == kept


def test_collapse_punctuation_runs():
    assert collapse_punctuation_runs("Wow!!!!!! Really??", 3) == "Wow!!! Really??"
    assert collapse_punctuation_runs("好。。。。。。", 3) == "好。。。"
    assert collapse_punctuation_runs("真的！！！！！", 1) == "真的！"
    # …… and —— are single Chinese marks; ... is an ellipsis whatever the limit.
    assert collapse_punctuation_runs("他说……然后——走了", 1) == "他说……然后——走了"
    assert collapse_punctuation_runs("等等…………", 3) == "等等……"
    assert collapse_punctuation_runs("wait...", 1) == "wait..."
    # Symbols that are not punctuation are left as written.
    assert collapse_punctuation_runs("a ===== b $$$$", 1) == "a ===== b $$$$"


def test_length_units_count_cjk_characters_plus_words():
    assert length_units("北京 is a big city") == 2 + 4
    assert length_units("今天天气很好。") == 6
    assert length_units("x_y 3.5") == 4  # x, y, 3, 5


def test_filter_min_length_on_cjk_and_english():
    cfg = CleanConfig(min_length=20)
    assert filter_min_length(ZH_GOOD, cfg)[0]
    assert filter_min_length(EN_GOOD, cfg)[0]
    keep, reason = filter_min_length("太短了。", cfg)
    assert not keep and "3" in reason
    assert not filter_min_length("Too short to keep.", cfg)[0]


def test_filter_whitespace_ratio():
    cfg = CleanConfig(max_whitespace_ratio=0.3)
    assert filter_whitespace(EN_GOOD, cfg)[0]
    assert filter_whitespace(ZH_GOOD, cfg)[0]
    keep, reason = filter_whitespace("a      b      c      d", cfg)
    assert not keep and "whitespace ratio" in reason


def test_filter_section_keywords():
    cfg = CleanConfig(section_keywords=["人物简介", "人物经历", "Early life"], max_section_keyword_hits=2)
    profile = "人物简介\n张三，某公司董事长。\n人物经历\n1990年加入公司。"
    keep, reason = filter_section_keywords(profile, cfg)
    assert not keep and "人物简介x1" in reason
    assert not filter_section_keywords("EARLY LIFE ... early life again", cfg)[0]
    assert filter_section_keywords("人物简介 appears once in an ordinary article.", cfg)[0]
    assert filter_section_keywords(ZH_GOOD, cfg)[0]


def test_clean_text_keeps_good_text_and_names_the_dropping_rule():
    cfg = CleanConfig()
    assert clean_text(ZH_GOOD, cfg).text == ZH_GOOD
    assert clean_text("  " + EN_GOOD + "\r\n", cfg).text == EN_GOOD
    assert clean_text("[1][2-3]", cfg).rule == "empty"
    assert clean_text("短文本。", cfg).rule == "min_length"
    result = clean_text(ZH_GOOD + "[1]！！！！！", cfg)
    assert result.kept and result.text == ZH_GOOD + "！！！"


# ------------------------------------------------------------------------------------------- the stage


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def messy_jsonl(path: Path) -> Path:
    """Good rows on lines 1, 3, 8, 10; the rest is bad in one way each (line 7 is blank: not a row)."""
    return write_lines(
        path,
        [
            json.dumps({"text": EN_GOOD}).encode(),
            b'{"text": "broken',
            json.dumps({"text": ZH_GOOD}, ensure_ascii=False).encode(),
            json.dumps({"title": "no text"}).encode(),
            json.dumps({"text": ["not", "a", "string"]}).encode(),
            b'{"text": "\xff\xfe bad bytes"}',
            b"",
            json.dumps({"text": EN_GOOD.replace("Amberfall", "Brightwater")}).encode(),
            json.dumps({"text": "   "}).encode(),
            json.dumps({"text": ZH_GOOD.replace("青石镇", "白河镇")}, ensure_ascii=False).encode(),
            json.dumps({"text": "短。"}, ensure_ascii=False).encode(),
        ],
    )


def read_output(out_dir: Path) -> tuple[list[dict], list[dict]]:
    parts = sorted(out_dir.glob("part_*.parquet"))
    docs = [row for part in parts for row in pq.read_table(part).to_pylist()]
    rejected = pq.read_table(out_dir / "rejected.parquet").to_pylist()
    return docs, rejected


def assert_identity(metrics: dict) -> None:
    assert metrics["docs_in"] == metrics["docs_out"] + sum(metrics["dropped"].values()) + metrics["quarantined"]


def test_messy_jsonl_no_good_row_lost_and_every_bad_row_rejected(tmp_path):
    path = messy_jsonl(tmp_path / "messy.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    metrics = clean_corpus([TextSource(kind="jsonl", path=str(path))], DemoCorpusConfig(), CleanConfig(), out, 0)

    docs, rejected = read_output(out)
    assert [d["id"] for d in docs] == [f"{path}:{n}" for n in (1, 3, 8, 10)]
    assert docs[1]["text"] == ZH_GOOD and docs[1]["source"] == str(path)
    by_line = {r["line"]: r for r in rejected}
    assert {n: (r["rule"], r["reason"].split(":")[0]) for n, r in by_line.items()} == {
        2: ("quarantine", "invalid_json"),
        4: ("quarantine", "missing_field"),
        5: ("quarantine", "not_a_string"),
        6: ("quarantine", "undecodable"),
        9: ("quarantine", "empty_field"),
        11: ("min_length", "1 CJK characters + words < min_length 20"),
    }
    assert by_line[11]["id"] == f"{path}:11" and by_line[11]["text"] == "短。"
    assert by_line[2]["id"] is None and by_line[2]["text"] == '{"text": "broken'
    assert metrics["docs_in"] == 10 and metrics["docs_out"] == 4 and metrics["quarantined"] == 5
    assert metrics["dropped"]["min_length"] == 1
    assert metrics["quarantine_reasons"] == {
        "empty_field": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "not_a_string": 1,
        "undecodable": 1,
    }
    assert metrics["chars_out"] == sum(len(d["text"]) for d in docs)
    assert_identity(metrics)
    assert pq.read_schema(out / "part_00000.parquet").equals(DOC_SCHEMA)
    assert pq.read_schema(out / "rejected.parquet").equals(REJECTED_SCHEMA)
    assert not (out / "_work").exists()


def test_parquet_text_and_glob_sources_in_deterministic_order(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        write_lines(tmp_path / name, [json.dumps({"text": f"{EN_GOOD} ({name} {i})"}).encode() for i in range(3)])
    pq.write_table(pa.table({"body": [ZH_GOOD, None, ZH_GOOD + "又一篇。"]}), tmp_path / "zh.parquet")
    write_lines(tmp_path / "plain.txt", [EN_GOOD.encode(), b"", b"too short", ZH_GOOD.encode()])
    sources = [
        TextSource(kind="jsonl", path=str(tmp_path / "*.jsonl")),
        TextSource(kind="parquet", path=str(tmp_path / "zh.parquet"), text_field="body"),
        TextSource(kind="text", path=str(tmp_path / "plain.txt")),
    ]
    first, second = tmp_path / "out1", tmp_path / "out2"
    first.mkdir()
    second.mkdir()
    metrics = clean_corpus(sources, DemoCorpusConfig(), CleanConfig(), first, 0)
    clean_corpus(sources, DemoCorpusConfig(), CleanConfig(), second, 0)

    docs, rejected = read_output(first)
    assert docs == read_output(second)[0]
    assert [d["source"] for d in docs] == [str(tmp_path / "a.jsonl")] * 3 + [str(tmp_path / "b.jsonl")] * 3 + [
        str(tmp_path / "zh.parquet")
    ] * 2 + [str(tmp_path / "plain.txt")] * 2
    assert [d["id"] for d in docs[6:]] == [
        f"{tmp_path / 'zh.parquet'}:1",
        f"{tmp_path / 'zh.parquet'}:3",
        f"{tmp_path / 'plain.txt'}:1",
        f"{tmp_path / 'plain.txt'}:4",
    ]
    assert sorted((r["source"].rsplit("/", 1)[1], r["line"], r["rule"]) for r in rejected) == [
        ("plain.txt", 3, "min_length"),
        ("zh.parquet", 2, "quarantine"),
    ]
    assert metrics["units"] == 4
    assert [s["docs_out"] for s in metrics["sources"]] == [6, 2, 2]
    assert_identity(metrics)


def test_parts_hold_docs_per_shard_across_files_and_workers_run_in_processes(tmp_path):
    path = write_lines(
        tmp_path / "many.jsonl", [json.dumps({"text": f"{EN_GOOD} Number {i}."}).encode() for i in range(250)]
    )
    other = write_lines(tmp_path / "more.jsonl", [json.dumps({"text": f"{ZH_GOOD}{i}"}).encode() for i in range(30)])
    out = tmp_path / "out"
    out.mkdir()
    sources = [TextSource(kind="jsonl", path=str(path)), TextSource(kind="jsonl", path=str(other))]
    metrics = clean_corpus(
        sources, DemoCorpusConfig(), CleanConfig(docs_per_shard=100), out, 0, parallel_map=process_pool_map(2)
    )
    parts = sorted(out.glob("part_*.parquet"))
    assert [p.name for p in parts] == [f"part_{i:05d}.parquet" for i in range(3)]
    # Parts are filled in input order whatever file a row came from; only the last one is short.
    assert [pq.read_metadata(p).num_rows for p in parts] == [100, 100, 80]
    docs, _ = read_output(out)
    assert [d["id"] for d in docs] == [f"{path}:{i}" for i in range(1, 251)] + [f"{other}:{i}" for i in range(1, 31)]
    assert metrics["docs_out"] == metrics["docs_in"] == 280 and metrics["shards"] == 3


def test_a_one_file_corpus_is_cut_into_spans_and_the_output_does_not_depend_on_the_cut(tmp_path, monkeypatch):
    import zero_chatgpt.data_process.clean as clean_module

    rows = [json.dumps({"uid": f"d{i % 290}", "text": f"{ZH_GOOD}第{i}篇。"}, ensure_ascii=False) for i in range(300)]
    rows[7], rows[150] = "{broken", json.dumps({"uid": "short", "text": "短。"}, ensure_ascii=False)
    path = write_lines(tmp_path / "one.jsonl", [row.encode() for row in rows])
    source = TextSource(kind="jsonl", path=str(path), id_field="uid")
    # Batches and row groups of 7 rows, so parts are gathered across many batches of many units' kept files (in
    # this process: worker processes would not see the patch).
    monkeypatch.setattr(clean_module, "ROW_GROUP_ROWS", 7)
    whole, spans = tmp_path / "whole", tmp_path / "spans"
    whole.mkdir()
    spans.mkdir()
    one_unit = clean_corpus([source], DemoCorpusConfig(), CleanConfig(docs_per_shard=120), whole, 0)
    monkeypatch.setattr(clean_module, "_MIN_UNIT_BYTES", 2000)  # about 15 rows a unit
    many_units = clean_corpus([source], DemoCorpusConfig(), CleanConfig(docs_per_shard=120), spans, 0)
    assert one_unit["units"] == 1 and many_units["units"] > 10
    assert {k: v for k, v in one_unit.items() if k != "units"} == {k: v for k, v in many_units.items() if k != "units"}
    for name in sorted(p.name for p in whole.glob("*.parquet")):
        assert (whole / name).read_bytes() == (spans / name).read_bytes(), name
    docs, rejected = read_output(spans)
    # Ids d0..d9 come back on lines 291..300 (spans later): the first good row with an id owns it, so the broken
    # line 8 does not, and d7 on line 298 is kept.
    assert [d["id"] for d in docs] == [f"d{i}" for i in range(290) if i not in (7, 150)] + ["d7"]
    duplicates = sorted(r["line"] for r in rejected if r["reason"].startswith("duplicate_id"))
    assert duplicates == [line for line in range(291, 301) if line != 298]
    assert {r["line"]: r["rule"] for r in rejected if not r["reason"].startswith("duplicate_id")} == {
        8: "quarantine",
        151: "min_length",
    }


def test_parts_are_written_in_row_groups_sized_for_slicing_readers(tmp_path):
    from zero_chatgpt.data_process.clean import ROW_GROUP_ROWS

    path = write_lines(
        tmp_path / "many.jsonl",
        [json.dumps({"text": f"{EN_GOOD} Number {i}."}).encode() for i in range(2 * ROW_GROUP_ROWS + 10)],
    )
    clean_corpus([TextSource(kind="jsonl", path=str(path))], DemoCorpusConfig(), CleanConfig(), tmp_path, 0)
    metadata = pq.read_metadata(tmp_path / "part_00000.parquet")
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert groups == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 10]


def test_duplicate_ids_are_quarantined_first_occurrence_wins(tmp_path):
    a = write_lines(
        tmp_path / "a.jsonl",
        [
            json.dumps({"uid": "x", "text": EN_GOOD}).encode(),
            json.dumps({"uid": "y", "text": "tiny"}).encode(),  # dropped by min_length, still owns id y
            json.dumps({"uid": "x", "text": EN_GOOD + " Again."}).encode(),
        ],
    )
    b = write_lines(
        tmp_path / "b.jsonl",
        [
            json.dumps({"uid": "y", "text": ZH_GOOD}, ensure_ascii=False).encode(),
            json.dumps({"uid": "z", "text": ZH_GOOD + "再来。"}, ensure_ascii=False).encode(),
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    metrics = clean_corpus(
        [TextSource(kind="jsonl", path=str(tmp_path / "*.jsonl"), id_field="uid")],
        DemoCorpusConfig(),
        CleanConfig(),
        out,
        0,
    )
    docs, rejected = read_output(out)
    assert [d["id"] for d in docs] == ["x", "z"]
    duplicates = sorted((r["source"], r["line"]) for r in rejected if r["reason"].startswith("duplicate_id"))
    assert duplicates == [(str(a), 3), (str(b), 1)]
    assert metrics["quarantine_reasons"] == {"duplicate_id": 2}
    assert metrics["chars_out"] == sum(len(d["text"]) for d in docs)
    assert_identity(metrics)


def test_rule_drops_land_in_rejected_with_their_rule(tmp_path):
    profile = (
        "人物简介：李四，著名企业家。人物经历：早年经商，后创办工厂，产品远销海外。产品介绍：工厂生产各类农具和布匹。"
    )
    path = write_lines(
        tmp_path / "rules.jsonl",
        [
            json.dumps({"text": profile}, ensure_ascii=False).encode(),
            json.dumps(
                {
                    "text": "a     b     c     d     e     f     g     h     i     j     k     l     m     n"
                    "     o     p     q     r     s     t     u"
                }
            ).encode(),
            json.dumps({"text": "[1][2]"}).encode(),
            json.dumps({"text": ZH_GOOD}, ensure_ascii=False).encode(),
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    metrics = clean_corpus([TextSource(kind="jsonl", path=str(path))], DemoCorpusConfig(), CleanConfig(), out, 0)
    _, rejected = read_output(out)
    assert [(r["line"], r["rule"]) for r in rejected] == [(1, "section_keywords"), (2, "whitespace"), (3, "empty")]
    assert metrics["dropped"] == {"empty": 1, "min_length": 0, "whitespace": 1, "section_keywords": 1}
    assert metrics["docs_out"] == 1
    assert_identity(metrics)


def test_missing_path_and_all_bad_source_raise_source_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceError, match=r"missing\.jsonl"):
        clean_corpus(
            [TextSource(kind="jsonl", path=str(tmp_path / "missing.jsonl"))], DemoCorpusConfig(), CleanConfig(), out, 0
        )
    bad = write_lines(tmp_path / "bad.jsonl", [b"{oops", b"[]"])
    with pytest.raises(SourceError, match=r"bad\.jsonl.*no valid rows"):
        clean_corpus([TextSource(kind="jsonl", path=str(bad))], DemoCorpusConfig(), CleanConfig(), out, 0)


def test_limit_source_reads_its_files_in_order_up_to_the_limit(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        write_lines(tmp_path / name, [json.dumps({"text": f"{EN_GOOD} {name} {i}"}).encode() for i in range(3)])
    out = tmp_path / "out"
    out.mkdir()
    metrics = clean_corpus(
        [TextSource(kind="jsonl", path=str(tmp_path / "*.jsonl"), limit=4)], DemoCorpusConfig(), CleanConfig(), out, 0
    )
    docs, _ = read_output(out)
    assert [d["id"].rsplit("/", 1)[1] for d in docs] == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "b.jsonl:1"]
    assert metrics["units"] == 1


def test_shared_dev_data_cleans_with_few_drops(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip("shared dev data not present")
    sources = [
        TextSource(kind="jsonl", path=str(SHARED_DATA / "en_pretrain.jsonl"), limit=150),
        TextSource(kind="jsonl", path=str(SHARED_DATA / "zh_pretrain.jsonl"), limit=150),
    ]
    metrics = clean_corpus(sources, DemoCorpusConfig(), CleanConfig(), tmp_path, 0)
    assert metrics["docs_in"] == 300 and metrics["quarantined"] == 0
    # Real encyclopedia prose and poems are what the rules must keep: at most a few short fragments go.
    assert metrics["docs_out"] >= 290
    assert_identity(metrics)


def test_demo_source_through_the_stage(tmp_path, monkeypatch):
    import sys
    import types

    fake = types.ModuleType("zero_chatgpt.data_process.demo_corpus")
    fake.demo_documents = lambda cfg, seed: [
        {"id": f"demo-{i}", "text": f"{EN_GOOD} Seed {seed}, place {i}.", "lang": "en", "planted": False}
        for i in range(cfg.num_entities)
    ]
    monkeypatch.setitem(sys.modules, "zero_chatgpt.data_process.demo_corpus", fake)
    metrics = clean_corpus([TextSource(kind="demo")], DemoCorpusConfig(num_entities=8), CleanConfig(), tmp_path, 3)
    docs, _ = read_output(tmp_path)
    assert [d["id"] for d in docs] == [f"demo-{i}" for i in range(8)]
    assert {d["source"] for d in docs} == {"demo"} and "Seed 3" in docs[0]["text"]
    assert metrics["docs_out"] == 8


def test_real_demo_corpus_mostly_survives_cleaning(tmp_path):
    demo_corpus = pytest.importorskip("zero_chatgpt.data_process.demo_corpus")
    cfg = DemoCorpusConfig(num_entities=8, docs_per_entity=1)
    metrics = clean_corpus([TextSource(kind="demo")], cfg, CleanConfig(), tmp_path, 0)
    assert metrics["docs_in"] == len(demo_corpus.demo_documents(cfg, 0))
    assert metrics["quarantined"] == 0 and metrics["docs_out"] > 0
    assert_identity(metrics)
