"""Byte-fallback coverage of chat data, and the sft stage's warning when the tokenizer does not cover it."""

from __future__ import annotations

import logging

import pytest
from model_fixtures import make_tokenizer_dir
from transformers import AutoTokenizer

from zero_chatgpt.model.sft import check_tokenizer_coverage
from zero_chatgpt.tokenizer.coverage import byte_fallback_report, byte_piece_ids

# Characters the toy corpus (tokenizer/toy_corpus.py) never uses: they can only be spelled as bytes.
UNSEEN = "鹮魁"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_tokenizer_dir(tmp_path_factory.mktemp("coverage")))


def test_byte_piece_ids_are_the_256_bytes(tokenizer):
    ids = byte_piece_ids(tokenizer)
    assert len(ids) == 256
    assert all(tokenizer.convert_ids_to_tokens(index).startswith("<0x") for index in ids)


def test_covered_text_has_no_byte_pieces(tokenizer):
    report = byte_fallback_report(tokenizer, ["the old market bridge", "的一是在"])
    assert report.tokens > 0 and report.byte_tokens == 0 and report.share == 0.0 and not report.characters


def test_unseen_characters_are_counted_and_named(tokenizer):
    texts = [f"the {UNSEEN[0]} market", f"{UNSEEN}{UNSEEN[0]}的人"]
    report = byte_fallback_report(tokenizer, texts)
    # Each unseen CJK character is 3 UTF-8 bytes, so 3 byte pieces; the other characters have pieces.
    assert report.byte_tokens == 3 * 4
    assert report.characters == {UNSEEN[0]: 3, UNSEEN[1]: 1}
    assert 0 < report.share < 1
    assert report.most_common(1) == f"{UNSEEN[0]!r} x3"


def test_sft_warns_about_uncovered_prompts_and_names_the_characters(tokenizer, caplog):
    rows = [{"prompt": f"{UNSEEN}{UNSEEN}？", "response": "the old market"} for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="zero_chatgpt.model.sft"):
        prompt, response = check_tokenizer_coverage(tokenizer, rows)
    assert prompt.share > 0.5 and response.share == 0.0
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "prompt tokens" in warnings[0] and repr(UNSEEN[0]) in warnings[0]


def test_sft_is_silent_when_the_data_is_covered(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="zero_chatgpt.model.sft"):
        check_tokenizer_coverage(tokenizer, [{"prompt": "the old road", "response": "的一是在"}])
    assert not caplog.records
