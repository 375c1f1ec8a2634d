"""The generated demo corpus: deterministic, bilingual, with planted dirt and facts that SFT/eval can check."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from zero_chatgpt.config import CleanConfig, DemoCorpusConfig
from zero_chatgpt.data_process.demo_corpus import (
    FACT_KEYS,
    build_demo_world,
    demo_documents,
    demo_eval_questions,
    demo_sft_pairs,
    planted_counts,
)

REPO = Path(__file__).resolve().parents[1]
CJK = re.compile("[\u4e00-\u9fff]")
WORD = re.compile(r"[^\W_]+")
CITATION = re.compile(r"\[\d+(?:-\d+)?\]")
SMALL = DemoCorpusConfig(num_entities=12, docs_per_entity=2)


@pytest.fixture(scope="module")
def default_corpus():
    cfg = DemoCorpusConfig()
    seed = 1234
    return (
        cfg,
        build_demo_world(cfg, seed),
        demo_documents(cfg, seed),
        demo_sft_pairs(cfg, seed),
        demo_eval_questions(cfg, seed),
    )


def length_units(text: str) -> int:
    """CJK characters plus non-CJK words, the unit of `CleanConfig.min_length`."""
    return len(CJK.findall(text)) + len(WORD.findall(CJK.sub(" ", text)))


def whitespace_ratio(text: str) -> float:
    return sum(map(str.isspace, text)) / len(text)


def keyword_hits(text: str, keywords: list[str]) -> int:
    return sum(text.casefold().count(k.casefold()) for k in keywords)


def shingles(text: str, lang: str) -> set:
    """Char 5-grams for Chinese, 3-grams of whitespace tokens for English (the dedup stage's `auto` shingles)."""
    text = " ".join(CITATION.sub("", text).split())
    if lang == "zh":
        return {text[i : i + 5] for i in range(len(text) - 4)}
    tokens = text.lower().split()
    return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def parse_fact_id(record_id: str) -> tuple[str, int, str]:
    """`demo:sft:en:0017:capital:1` / `demo:eval:zh:0003:neighbour` -> (lang, place index, fact key)."""
    parts = record_id.split(":")
    return parts[2], int(parts[3]), parts[4]


# ----------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_output_and_another_seed_differs():
    first = (demo_documents(SMALL, 3), demo_sft_pairs(SMALL, 3), demo_eval_questions(SMALL, 3))
    again = (demo_documents(SMALL, 3), demo_sft_pairs(SMALL, 3), demo_eval_questions(SMALL, 3))
    other = (demo_documents(SMALL, 4), demo_sft_pairs(SMALL, 4), demo_eval_questions(SMALL, 4))
    assert first == again
    assert [d["text"] for d in first[0]] != [d["text"] for d in other[0]]
    assert [p["response"] for p in first[1]] != [p["response"] for p in other[1]]
    names = {e.name["en"] for e in build_demo_world(SMALL, 3).entities}
    assert names != {e.name["en"] for e in build_demo_world(SMALL, 4).entities}


def _corpus_digest(seed: int) -> str:
    cfg = SMALL
    payload = [demo_documents(cfg, seed), demo_sft_pairs(cfg, seed), demo_eval_questions(cfg, seed)]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def test_output_does_not_depend_on_python_hash_seed():
    code = "from tests.test_demo_corpus import _corpus_digest; print(_corpus_digest(7))"
    digests = set()
    for hash_seed in ("1", "987"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert digests == {_corpus_digest(7)}


def test_world_depends_only_on_place_count_and_seed():
    base = build_demo_world(DemoCorpusConfig(num_entities=10), 5)
    other_sizes = build_demo_world(DemoCorpusConfig(num_entities=10, docs_per_entity=1, languages=["zh"]), 5)
    assert base.entities == other_sizes.entities


def test_generation_with_defaults_is_fast():
    cfg = DemoCorpusConfig()
    start = time.perf_counter()
    demo_documents(cfg, 99), demo_sft_pairs(cfg, 99), demo_eval_questions(cfg, 99)
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------------------------------- documents


def test_both_languages_present_and_chinese_pages_are_mostly_cjk(default_corpus):
    cfg, _, docs, _, _ = default_corpus
    langs = Counter(d["lang"] for d in docs)
    assert set(langs) == {"en", "zh"} and langs["en"] == langs["zh"]
    for doc in docs:
        if doc["planted"] is not None:
            continue
        visible = [c for c in doc["text"] if not c.isspace()]
        cjk_share = len(CJK.findall(doc["text"])) / len(visible)
        if doc["lang"] == "zh":
            assert cjk_share > 0.75, doc["id"]
        else:
            assert cjk_share == 0.0, doc["id"]


def test_total_size_is_half_to_one_and_a_half_megabytes(default_corpus):
    _, _, docs, _, _ = default_corpus
    total_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    assert 500_000 <= total_bytes <= 1_500_000


def test_ids_are_unique_and_name_their_language(default_corpus):
    _, _, docs, sft, questions = default_corpus
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(rf"demo:{d['lang']}:\d{{5}}", d["id"]) for d in docs)
    assert len({p["id"] for p in sft}) == len(sft)
    assert len({q["id"] for q in questions}) == len(questions)
    assert {d["id"] for d in docs}.isdisjoint({p["id"] for p in sft} | {q["id"] for q in questions})


def test_only_configured_languages_are_written():
    cfg = DemoCorpusConfig(num_entities=8, docs_per_entity=1, languages=["zh"])
    for records in (demo_documents(cfg, 1), demo_sft_pairs(cfg, 1), demo_eval_questions(cfg, 1)):
        assert records and {r["lang"] for r in records} == {"zh"}


def test_good_pages_have_realistic_length_and_pass_every_cleaning_rule(default_corpus):
    _, _, docs, _, _ = default_corpus
    clean = CleanConfig()
    for doc in docs:
        if doc["planted"] not in (None, "exact_dup", "near_dup"):
            continue
        text = doc["text"]
        if doc["lang"] == "en":
            assert 60 <= len(WORD.findall(text)) <= 250, doc["id"]
        else:
            assert 100 <= len(CJK.findall(text)) <= 400, doc["id"]
        assert length_units(text) >= clean.min_length
        assert whitespace_ratio(text) <= clean.max_whitespace_ratio
        assert keyword_hits(text, clean.section_keywords) == 0


def test_good_pages_carry_citations_and_punctuation_runs(default_corpus):
    _, _, docs, _, _ = default_corpus
    good = [d for d in docs if d["planted"] is None]
    for lang, run in (("en", "!!!!"), ("zh", "。。。。")):
        pages = [d["text"] for d in good if d["lang"] == lang]
        with_citations = sum(bool(CITATION.search(text)) for text in pages)
        assert 0.1 * len(pages) <= with_citations <= 0.6 * len(pages)
        assert sum(run in text for text in pages) >= 0.05 * len(pages)
        assert any(re.search(r"\[\d+-\d+\]", text) for text in pages)


def test_planted_counts_match_the_config(default_corpus):
    cfg, _, docs, _, _ = default_corpus
    expected = planted_counts(cfg)
    assert expected["exact_dup"] > 0 and expected["near_dup"] > 0 and expected["too_short"] >= 3
    for lang in cfg.languages:
        found = Counter(d["planted"] for d in docs if d["lang"] == lang and d["planted"] is not None)
        assert found == Counter(expected)
        good = sum(d["lang"] == lang and d["planted"] is None for d in docs)
        assert good == cfg.num_entities * cfg.docs_per_entity
        duplicate_share = (found["exact_dup"] + found["near_dup"]) / (good + found["exact_dup"] + found["near_dup"])
        assert 0.05 <= duplicate_share <= 0.10


def test_duplicates_copy_a_good_page_of_their_language(default_corpus):
    _, _, docs, _, _ = default_corpus
    by_id = {d["id"]: d for d in docs}
    originals = []
    for doc in docs:
        if doc["planted"] not in ("exact_dup", "near_dup"):
            assert doc["dup_of"] is None
            continue
        original = by_id[doc["dup_of"]]
        originals.append(original["id"])
        assert original["planted"] is None and original["lang"] == doc["lang"]
        if doc["planted"] == "exact_dup":
            assert doc["text"] == original["text"]
        else:
            assert doc["text"] != original["text"]
            # Well above the dedup threshold (0.7), so banded MinHash finds it almost surely.
            assert jaccard(shingles(doc["text"], doc["lang"]), shingles(original["text"], doc["lang"])) >= 0.85
    assert len(set(originals)) == len(originals)


def test_distinct_good_pages_are_not_near_duplicates():
    cfg = DemoCorpusConfig(num_entities=30, docs_per_entity=4)
    docs = demo_documents(cfg, 11)
    for lang in cfg.languages:
        sets = [shingles(d["text"], lang) for d in docs if d["lang"] == lang and d["planted"] is None]
        worst = max(jaccard(a, b) for a, b in itertools.combinations(sets, 2))
        assert worst < 0.5, f"{lang}: two different pages share {worst:.2f} of their shingles"


def test_each_junk_page_breaks_exactly_its_cleaning_rule(default_corpus):
    _, _, docs, _, _ = default_corpus
    clean = CleanConfig()
    junk = [d for d in docs if d["planted"] in ("too_short", "whitespace", "section_keywords")]
    assert {(d["lang"], d["planted"]) for d in junk} == {
        (lang, rule) for lang in ("en", "zh") for rule in ("too_short", "whitespace", "section_keywords")
    }
    for doc in junk:
        text = doc["text"].strip()
        breaks = {
            "too_short": length_units(text) < clean.min_length,
            "whitespace": whitespace_ratio(text) > clean.max_whitespace_ratio,
            "section_keywords": keyword_hits(text, clean.section_keywords) >= clean.max_section_keyword_hits,
        }
        assert [rule for rule, broken in breaks.items() if broken] == [doc["planted"]], doc


def test_cleaning_stage_keeps_good_pages_and_drops_junk_by_its_rule():
    """Against the real cleaner, when it is there: the corpus and the cleaning rules must agree."""
    clean = pytest.importorskip("zero_chatgpt.data_process.clean")
    if not hasattr(clean, "clean_text"):
        pytest.skip("data_process.clean has no clean_text")
    rule_of = {"too_short": "min_length", "whitespace": "whitespace", "section_keywords": "section_keywords"}
    for doc in demo_documents(DemoCorpusConfig(num_entities=16, docs_per_entity=2), 8):
        result = clean.clean_text(doc["text"], CleanConfig())
        assert result.rule == rule_of.get(doc["planted"]), (doc, result)
        if result.rule is None:
            assert not CITATION.search(result.text) and "!!!!" not in result.text and "。。。。" not in result.text


# ----------------------------------------------------------------------------------------------- world


def test_answer_strings_are_unique_unambiguous_and_normalisation_stable():
    world = build_demo_world(DemoCorpusConfig(num_entities=120), 21)
    for lang in ("en", "zh"):
        proper = [e.name[lang] for e in world.entities]
        for key in ("capital", "largest_river", "highest_mountain"):
            proper += [e.fact(key, lang) for e in world.entities]
        assert len(set(proper)) == len(proper)
        folded = sorted(p.lower() for p in proper)
        assert not any(a in b for a, b in itertools.permutations(folded, 2) if a != b)
        if lang == "zh":
            assert all(CJK.fullmatch(c) for p in proper for c in p)
    for entity in world.entities:
        for key in FACT_KEYS:
            for lang in ("en", "zh"):
                value = entity.fact(key, lang)
                assert value and unicodedata.normalize("NFKC", value) == value


@pytest.mark.parametrize("count", [12, 13])
def test_nearest_neighbours_are_mutual_except_one_triangle(count):
    world = build_demo_world(DemoCorpusConfig(num_entities=count), 2)
    index_of = {e.name["en"]: e.index for e in world.entities}
    neighbour = [index_of[e.fact("neighbour", "en")] for e in world.entities]
    assert all(n != i for i, n in enumerate(neighbour))
    one_sided = sum(neighbour[n] != i for i, n in enumerate(neighbour))
    assert one_sided == (3 if count % 2 else 0)
    for entity in world.entities:
        assert world.entities[neighbour[entity.index]].name["zh"] == entity.fact("neighbour", "zh")


def test_single_page_per_place_still_states_every_fact():
    cfg = DemoCorpusConfig(num_entities=10, docs_per_entity=1)
    world = build_demo_world(cfg, 6)
    docs = [d for d in demo_documents(cfg, 6) if d["planted"] is None]
    for lang in ("en", "zh"):
        for entity in world.entities:
            facts = [entity.fact(key, lang) for key in FACT_KEYS]
            assert any(
                entity.name[lang] in d["text"] and all(f in d["text"] for f in facts) for d in docs if d["lang"] == lang
            ), (lang, entity.name[lang])


# ---------------------------------------------------------------------------------------- SFT and eval


def _pages_stating(docs: list[dict], world, lang: str, index: int, key: str) -> int:
    entity = world.entities[index]
    return sum(
        d["lang"] == lang
        and d["planted"] is None
        and entity.name[lang] in d["text"]
        and entity.fact(key, lang) in d["text"]
        for d in docs
    )


def test_every_sft_response_contains_its_fact_which_the_pages_state(default_corpus):
    cfg, world, docs, sft, _ = default_corpus
    assert len(sft) >= 500
    assert {p["lang"] for p in sft} == {"en", "zh"}
    prompts_per_fact = Counter()
    for pair in sft:
        lang, index, key = parse_fact_id(pair["id"])
        assert lang == pair["lang"] and key in FACT_KEYS
        assert world.entities[index].name[lang] in pair["prompt"]
        assert pair["answer"] == world.entities[index].fact(key, lang)
        assert pair["answer"] in pair["response"], pair
        prompts_per_fact[(lang, index, key)] += 1
    assert set(prompts_per_fact.values()) == {cfg.sft_questions_per_fact}
    for lang, index, key in prompts_per_fact:
        assert _pages_stating(docs, world, lang, index, key) >= 1, (lang, index, key)


def test_heldout_questions_are_disjoint_from_sft_and_answerable_from_pages(default_corpus):
    cfg, world, docs, sft, questions = default_corpus
    asked = {parse_fact_id(q["id"])[1:] for q in questions}
    trained = {parse_fact_id(p["id"])[1:] for p in sft}
    assert asked and asked.isdisjoint(trained)
    assert len(asked | trained) == cfg.num_entities * len(FACT_KEYS)
    per_kind = Counter(key for _, key in asked)
    assert set(per_kind) == set(FACT_KEYS)
    assert set(per_kind.values()) == {round(cfg.heldout_fraction * cfg.num_entities)}
    assert len(questions) == len(asked) * len(cfg.languages)
    for question in questions:
        lang, index, key = parse_fact_id(question["id"])
        assert question["lang"] == lang and question["answer"] == world.entities[index].fact(key, lang)
        assert world.entities[index].name[lang] in question["prompt"]
        assert question["answer"] not in question["prompt"]
        assert _pages_stating(docs, world, lang, index, key) >= 1


def test_no_heldout_fraction_means_no_eval_questions():
    cfg = DemoCorpusConfig(num_entities=8, docs_per_entity=1, heldout_fraction=0.0)
    assert demo_eval_questions(cfg, 1) == []
    assert len(demo_sft_pairs(cfg, 1)) == 8 * len(FACT_KEYS) * 2 * cfg.sft_questions_per_fact


def test_demo_sources_give_the_generators_rows_with_their_ids_and_order():
    """The demo reaches every stage only as a source kind; through it the rows are the generator's, unchanged."""
    from zero_chatgpt.config import QaSource, SftSource, TextSource
    from zero_chatgpt.data_process.sources import read_qa_rows, read_sft_rows, read_text_rows

    def good(rows):
        return [row for row in rows if "id" in row]

    docs = good(read_text_rows(TextSource(kind="demo"), SMALL, seed=3))
    assert [(row["id"], row["text"]) for row in docs] == [
        (doc["id"], doc["text"]) for doc in demo_documents(SMALL, 3) if doc["text"].strip()
    ]
    pairs = good(read_sft_rows(SftSource(kind="demo"), SMALL, seed=3))
    assert [(row["id"], row["prompt"], row["answer"]) for row in pairs] == [
        (pair["id"], pair["prompt"], pair["answer"]) for pair in demo_sft_pairs(SMALL, 3)
    ]
    questions = good(read_qa_rows(QaSource(kind="demo"), SMALL, seed=3))
    assert questions and [(row["id"], row["question"], row["answer"], row["lang"]) for row in questions] == [
        (q["id"], q["prompt"], q["answer"], q["lang"]) for q in demo_eval_questions(SMALL, 3)
    ]
