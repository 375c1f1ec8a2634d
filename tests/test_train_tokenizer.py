"""train_tokenizer: exact round trip, HF export equal to sentencepiece, special tokens, chat template, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from zero_chatgpt.config import TrainTokenizerConfig
from zero_chatgpt.parallel import ProcessMap
from zero_chatgpt.tokenizer.chat import (
    ENDOFTEXT,
    ENDOFTEXT_ID,
    IM_END,
    IM_END_ID,
    IM_START,
    IM_START_ID,
    PAD,
    PAD_ID,
    SPECIAL_TOKENS,
    render_chat,
)
from zero_chatgpt.tokenizer.corpus import doc_hash_keys
from zero_chatgpt.tokenizer.files import SP_MODEL_FILE
from zero_chatgpt.tokenizer.sample import draw_sample
from zero_chatgpt.tokenizer.toy_corpus import toy_documents, write_corpus_parts
from zero_chatgpt.tokenizer.train import train_tokenizer, training_lines

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TRICKY = [
    "Hello, world!",
    "你好，世界。今天天气很好。",
    "mixed 中英文 text: GPT-4 与 ChatGPT 的区别",
    "digits 0123456789 and 3.14159, 1,000,000",
    "emoji 😀👍🏽 🇨🇳 👨‍👩‍👧",
    "rare CJK 𠀀 𪚥 龘 𰻞",
    "multiple   spaces    here",
    "   leading and trailing   ",
    "new\nlines\n\n\nand\ttabs\t\there",
    "\r\nwindows line\r\n",
    " ",
    "\n",
    "",
    "a\u00a0non-breaking\u3000ideographic space",
    "combining e\u0301 vs \u00e9, ﬁ ligature, ＦＵＬＬＷＩＤＴＨ",
    "<unk> <s> </s> look like special pieces but are text",
    "zero\u200bwidth\u200djoiner",
]


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("dedup")
    write_corpus_parts(toy_documents(240, seed=1), corpus, docs_per_part=100)
    return corpus


@pytest.fixture(scope="module")
def trained(toy_corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tokenizer")
    metrics = train_tokenizer(TrainTokenizerConfig(vocab_size=700), toy_corpus, out, seed=7)
    return out, metrics


def _sp(out: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(out / SP_MODEL_FILE))


def test_round_trip_on_tricky_text(trained):
    out, _ = trained
    sp, hf = _sp(out), AutoTokenizer.from_pretrained(out)
    for text in TRICKY:
        ids = sp.encode(text)
        assert sp.decode(ids) == text, text
        hf_ids = hf.encode(text, add_special_tokens=False)
        assert hf_ids == ids, text
        assert hf.decode(hf_ids) == text, text


def test_no_unknown_ids_and_digits_split(trained):
    out, _ = trained
    sp = _sp(out)
    ids = sp.encode("𠀀 龘 😀 " + "".join(chr(c) for c in range(0x0600, 0x0620)))
    assert sp.unk_id() not in ids
    assert all(len(sp.id_to_piece(i)) == 1 for i in sp.encode("1234567890"))


def test_autotokenizer_loads_with_sensible_special_tokens(trained):
    out, metrics = trained
    hf = AutoTokenizer.from_pretrained(out)
    assert len(hf) == metrics["vocab_size"] == 700
    assert (hf.eos_token, hf.eos_token_id) == (ENDOFTEXT, ENDOFTEXT_ID)
    assert (hf.pad_token, hf.pad_token_id) == (PAD, PAD_ID)
    assert hf.bos_token is None
    # Nothing is added around plain text: documents are separated by EOS in the shards instead.
    assert hf("hello world")["input_ids"] == _sp(out).encode("hello world")


def test_hf_ids_equal_sentencepiece_on_corpus(trained):
    out, _ = trained
    sp, hf = _sp(out), AutoTokenizer.from_pretrained(out)
    docs = toy_documents(60, seed=99)
    assert hf(docs, add_special_tokens=False)["input_ids"] == sp.encode(docs)


def test_special_tokens_are_single_ids_never_made_from_plain_text(trained):
    out, _ = trained
    sp, hf = _sp(out), AutoTokenizer.from_pretrained(out)
    expected = {ENDOFTEXT: ENDOFTEXT_ID, PAD: PAD_ID, IM_START: IM_START_ID, IM_END: IM_END_ID}
    for token, token_id in expected.items():
        assert hf.encode(token, add_special_tokens=False) == [token_id]
        assert sp.piece_to_id(token) == token_id
        # sentencepiece (the shard encoder) spells the same string with ordinary pieces.
        plain = sp.encode(token)
        assert len(plain) > 1 and not set(plain) & set(expected.values())
    special_ids = set(expected.values())
    for doc in toy_documents(40, seed=5):
        assert not special_ids & set(hf.encode(doc, add_special_tokens=False))


def test_chat_template_renders_chatml(trained):
    out, _ = trained
    hf = AutoTokenizer.from_pretrained(out)
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "河流叫什么名字？"},
        {"role": "assistant", "content": "It is the north river."},
    ]
    text = hf.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n"
        "<|im_start|>user\n河流叫什么名字？<|im_end|>\n"
        "<|im_start|>assistant\nIt is the north river.<|im_end|>\n"
    )
    assert text == render_chat(messages)
    prompt = hf.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prompt == render_chat(messages[:2], add_generation_prompt=True)

    encoded = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert ids.count(IM_START_ID) == 3 and ids.count(IM_END_ID) == 3
    assistant_ids = [i for i, m in zip(ids, mask) if m]
    assert hf.decode(assistant_ids) == "It is the north river.<|im_end|>"


def test_metrics_and_character_budget(trained):
    _, metrics = trained
    for key in ("vocab_size", "chars_per_token_zh", "chars_per_token_en", "sample_chars", "sample_docs"):
        assert metrics[key] is not None, key
    assert metrics["heldout_docs_zh"] > 0 and metrics["heldout_docs_en"] > 0
    assert metrics["sample_docs"] + metrics["heldout_docs_zh"] + metrics["heldout_docs_en"] == 240
    assert metrics["chars_per_token_en"] > 1.5
    # 700 pieces cannot give each of the toy corpus' ~400 Chinese characters its own piece at 0.9995.
    assert metrics["character_coverage"] < 0.9995
    json.dumps(metrics)


def test_same_seed_same_tokenizer_other_seed_other_sample(toy_corpus, trained, tmp_path):
    out, metrics = trained
    again = train_tokenizer(TrainTokenizerConfig(vocab_size=700), toy_corpus, tmp_path / "a", seed=7)
    assert (tmp_path / "a" / SP_MODEL_FILE).read_bytes() == (out / SP_MODEL_FILE).read_bytes()
    assert again["sample_chars"] == metrics["sample_chars"]
    # The trainer thread count is recorded in tokenizer.model but does not change the vocab or merges.
    train_tokenizer(TrainTokenizerConfig(vocab_size=700), toy_corpus, tmp_path / "b", seed=7, num_threads=1)
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()

    first = draw_sample(toy_corpus, seed=7, max_sample_chars=20_000, heldout_docs=10)
    other = draw_sample(toy_corpus, seed=8, max_sample_chars=20_000, heldout_docs=10)
    assert sum(map(len, first.sample)) == 20_000  # the cap holds exactly: the last document is cut
    assert first.sample != other.sample and first.heldout != other.heldout
    assert not set(first.heldout) & set(first.sample)


@pytest.mark.parametrize(
    ("max_sample_chars", "heldout_docs", "max_doc_chars"), [(20_000, 10, None), (5_000, 40, 300), (10**9, 200, None)]
)
def test_the_sample_is_the_first_documents_in_hash_order_whatever_the_parts(
    toy_corpus, max_sample_chars, heldout_docs, max_doc_chars
):
    """draw_sample keeps only what it may still draw while it reads; the result is that of sorting everything."""
    rows = [
        (int(key), number, row, text)
        for number, part in enumerate(sorted(toy_corpus.glob("part_*.parquet")))
        for row, (key, text) in enumerate(
            zip(
                doc_hash_keys(5, pq.read_table(part).column("id").to_pylist()),
                pq.read_table(part).column("text").to_pylist(),
            )
        )
    ]
    in_order = [text for *_, text in sorted(rows)]
    num_heldout = min(heldout_docs, len(in_order) // 10)
    expected, chars = [], 0
    for text in in_order[num_heldout:]:
        if chars >= max_sample_chars:
            break
        text = text[:max_doc_chars] if max_doc_chars else text
        expected.append(text[: max_sample_chars - chars])
        chars += len(expected[-1])
    drawn = draw_sample(toy_corpus, 5, max_sample_chars, heldout_docs, max_doc_chars)
    assert drawn.heldout == in_order[:num_heldout]
    assert drawn.sample == expected
    assert drawn.corpus_docs == len(in_order) == 240


def test_the_sample_is_the_same_from_small_row_groups_and_on_worker_processes(toy_corpus, tmp_path):
    """Workers read parts a batch and a row group at a time; neither the batches nor the pool change the draw."""
    regrouped = tmp_path / "regrouped"
    regrouped.mkdir()
    for part in sorted(toy_corpus.glob("part_*.parquet")):
        pq.write_table(pq.read_table(part), regrouped / part.name, row_group_size=7)
    expected = draw_sample(toy_corpus, 5, 20_000, 10, 300)
    with ProcessMap(2) as parallel_map:
        drawn = draw_sample(regrouped, 5, 20_000, 10, 300, parallel_map=parallel_map)
    assert (drawn.sample, drawn.heldout, drawn.corpus_docs) == (expected.sample, expected.heldout, 240)


def test_training_lines_respect_byte_limit_and_keep_text():
    doc = "短句。\n" * 200 + "x" * 3000 + "\nend"
    lines = list(training_lines([doc], max_bytes=300))
    assert "".join(lines) == doc
    assert max(len(line.encode("utf-8")) for line in lines) <= 300


def test_missing_text_column_names_the_file(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "body": ["text"]}), tmp_path / "part_00000.parquet")
    with pytest.raises(ValueError, match="part_00000.parquet"):
        train_tokenizer(TrainTokenizerConfig(vocab_size=300), tmp_path, tmp_path / "out", seed=0)


def _shared_texts(limit_per_file: int = 40) -> list[str]:
    """String fields of the first lines of every shared JSONL file (pretrain text, prompts, answers...)."""
    texts = []
    for path in sorted(SHARED_DATA.glob("**/*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number >= limit_per_file:
                    break
                row = json.loads(line)
                texts.extend(v for k, v in row.items() if isinstance(v, str) and k != "source")
    return texts


def test_round_trip_and_hf_equality_on_shared_data(tmp_path):
    if not SHARED_DATA.is_dir() or not list(SHARED_DATA.glob("*.jsonl")):
        pytest.skip(f"{SHARED_DATA} not present")
    texts = _shared_texts()
    corpus = tmp_path / "dedup"
    write_corpus_parts(texts, corpus, docs_per_part=200)
    out = tmp_path / "tok"
    train_tokenizer(TrainTokenizerConfig(vocab_size=2000), corpus, out, seed=0)
    sp, hf = _sp(out), AutoTokenizer.from_pretrained(out)
    for text in texts:
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        if not any(token in text for token in SPECIAL_TOKENS):
            assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == text


def test_one_huge_document_cannot_fill_the_sample(tmp_path):
    docs = toy_documents(200, seed=0)
    docs[0] = "x" * 2_000_000  # a dump on one line
    write_corpus_parts(docs, tmp_path / "corpus")
    drawn = draw_sample(tmp_path / "corpus", seed=0, max_sample_chars=200_000, heldout_docs=0, max_doc_chars=5000)
    assert drawn.capped_docs == 1 and max(map(len, drawn.sample)) <= 5000
    assert len(drawn.sample) == 200  # every other document still got in
    metrics = train_tokenizer(
        TrainTokenizerConfig(vocab_size=400, max_doc_chars=5000, heldout_docs=0),
        tmp_path / "corpus",
        tmp_path / "tok",
        seed=0,
        num_threads=1,
    )
    assert metrics["sample_docs_capped"] == 1
