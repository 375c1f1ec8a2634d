"""build_prefs: pair counts, identical and right-in-other-words pairs dropped, user pairs merged (bad rows
quarantined), determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from zero_chatgpt.data_process.demo_corpus import demo_documents, demo_sft_pairs
from zero_chatgpt.model.build import build_model
from zero_chatgpt.model.prefs import PAIRS, SAMPLED_SOURCE, build_prefs, select_prompts
from zero_chatgpt.model.reward import states_the_answer
from zero_chatgpt.model.artifact_io import read_jsonl, write_jsonl
from zero_chatgpt.model.sft import REJECTED, RLHF_PROMPTS
from zero_chatgpt.tokenizer.toy_corpus import write_corpus_parts
from zero_chatgpt.tokenizer.train import train_tokenizer
from zero_chatgpt.config import BuildPrefsConfig, DemoCorpusConfig, ModelConfig, PrefSource, TrainTokenizerConfig

DEMO = DemoCorpusConfig(num_entities=8, docs_per_entity=1)
SEED = 3
NUM_PROMPTS = 20
CFG = BuildPrefsConfig(max_new_tokens=12, temperature=1.0, top_p=0.95, batch_size=8, max_prompts=16,
                       samples_per_prompt=1)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    """Looks like an sft artifact: a tokenizer, a tiny (untrained) model and `rlhf_prompts.jsonl`."""
    root = tmp_path_factory.mktemp("prefs_sft")
    pairs = demo_sft_pairs(DEMO, SEED)
    texts = [doc["text"] for doc in demo_documents(DEMO, SEED)] + [p["prompt"] + "\n" + p["response"] for p in pairs]
    write_corpus_parts(texts, root / "corpus")
    out = root / "sft"
    train_tokenizer(TrainTokenizerConfig(vocab_size=500, heldout_docs=0), root / "corpus", out, seed=SEED)
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(SEED)
    model = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128), len(tokenizer),
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    write_jsonl(out / RLHF_PROMPTS, [{"id": p["id"], "prompt": p["prompt"], "response": p["response"],
                                      "source": "demo"} for p in pairs[:NUM_PROMPTS]])
    return out


@pytest.fixture(scope="module")
def first_run(sft_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs_out")
    metrics = build_prefs(CFG, [], DEMO, sft_dir, out, seed=SEED, device="cpu")
    return out, metrics


def test_pairs_from_sampled_answers(first_run, sft_dir):
    out, metrics = first_run
    pairs = read_jsonl(out / PAIRS)
    for key in ("pairs", "sampled_pairs", "user_pairs", "dropped_identical", "quarantined", "mean_rejected_chars",
                "mean_chosen_chars", "tokens_per_s"):
        assert key in metrics, key
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["prompts"] == CFG.max_prompts
    dropped = metrics["dropped_identical"] + metrics["dropped_repeated"]
    assert metrics["pairs"] == len(pairs) == CFG.max_prompts - dropped
    assert metrics["sampled_pairs"] == metrics["pairs"] and metrics["user_pairs"] == 0
    assert metrics["tokens_per_s"] > 0 and metrics["generated_tokens"] > 0
    references = {row["id"]: row for row in read_jsonl(sft_dir / RLHF_PROMPTS)}
    for pair in pairs:
        assert set(pair) == {"id", "prompt", "chosen", "rejected", "source"}
        assert pair["source"] == SAMPLED_SOURCE
        assert pair["chosen"] == references[pair["id"]]["response"]
        assert pair["prompt"] == references[pair["id"]]["prompt"]
        assert "<|im_end|>" not in pair["rejected"] and "<|pad|>" not in pair["rejected"]
    assert metrics["mean_chosen_chars"] == pytest.approx(sum(len(p["chosen"]) for p in pairs) / len(pairs))


def test_same_seed_same_pairs_other_seed_other_pairs(first_run, sft_dir, tmp_path):
    out, _ = first_run
    build_prefs(CFG, [], DEMO, sft_dir, tmp_path / "again", seed=SEED, device="cpu")
    assert (tmp_path / "again" / PAIRS).read_bytes() == (out / PAIRS).read_bytes()
    build_prefs(CFG, [], DEMO, sft_dir, tmp_path / "other", seed=SEED + 1, device="cpu")
    assert (tmp_path / "other" / PAIRS).read_bytes() != (out / PAIRS).read_bytes()


def test_identical_pairs_are_dropped_and_counted(first_run, sft_dir, tmp_path):
    out, metrics = first_run
    answers = {pair["id"]: pair["rejected"] for pair in read_jsonl(out / PAIRS)}
    # Make three references equal to what the model will answer again (same seed, same prompts, same model).
    parroted = tmp_path / "sft"
    shutil.copytree(sft_dir, parroted)
    rows = read_jsonl(sft_dir / RLHF_PROMPTS)
    targets = [row["id"] for row in rows if row["id"] in answers][:3]
    for row in rows:
        if row["id"] in targets:
            row["response"] = "  " + answers[row["id"]] + "\n"  # equal after stripping
    write_jsonl(parroted / RLHF_PROMPTS, rows)
    again = build_prefs(CFG, [], DEMO, parroted, tmp_path / "out", seed=SEED, device="cpu")
    assert again["dropped_identical"] == metrics["dropped_identical"] + 3
    assert again["pairs"] == metrics["pairs"] - 3
    kept = {pair["id"] for pair in read_jsonl(tmp_path / "out" / PAIRS)}
    assert not kept & set(targets)


def test_sampled_answers_stating_the_short_answer_are_dropped_and_counted(first_run, sft_dir, tmp_path):
    out, metrics = first_run
    assert metrics["dropped_correct"] == 0  # the fixture's prompt rows have no `answer`
    answers = {pair["id"]: pair["rejected"] for pair in read_jsonl(out / PAIRS)}
    with_answers = tmp_path / "sft"
    shutil.copytree(sft_dir, with_answers)
    rows = read_jsonl(sft_dir / RLHF_PROMPTS)
    targets = [row["id"] for row in rows if len(answers.get(row["id"], "").split()) >= 2][:3]
    assert len(targets) == 3
    for row in rows:
        # The model's answer, case changed and spaces doubled, as the short answer of three rows: their sampled
        # answers are "right in other words". Every other row gets an answer the model never writes.
        row["answer"] = "  ".join(answers[row["id"]].upper().split()) if row["id"] in targets else "Qzxv Wkpj"
    write_jsonl(with_answers / RLHF_PROMPTS, rows)
    again = build_prefs(CFG, [], DEMO, with_answers, tmp_path / "out", seed=SEED, device="cpu")
    assert again["dropped_correct"] == 3
    assert again["pairs"] == metrics["pairs"] - 3
    assert again["dropped_identical"] == metrics["dropped_identical"]
    kept = {pair["id"] for pair in read_jsonl(tmp_path / "out" / PAIRS)}
    assert not kept & set(targets)


def test_states_the_answer_ignores_case_and_spacing_and_needs_an_answer():
    assert states_the_answer("The capital is  TALMER.", "talmer")
    assert states_the_answer("首都是 塔尔 默。", "塔尔 默")
    assert not states_the_answer("The capital is Orvane.", "Talmer")
    assert not states_the_answer("anything", None) and not states_the_answer("anything", "  ")


def test_several_samples_per_prompt_give_several_distinct_pairs(sft_dir, tmp_path):
    cfg = CFG.model_copy(update={"max_prompts": 4, "samples_per_prompt": 3})
    metrics = build_prefs(cfg, [], DEMO, sft_dir, tmp_path / "out", seed=SEED, device="cpu")
    pairs = read_jsonl(tmp_path / "out" / PAIRS)
    assert metrics["prompts"] == 4
    assert len(pairs) + metrics["dropped_identical"] + metrics["dropped_repeated"] == 4 * 3
    assert len(pairs) > 4  # an untrained model at temperature 1 rarely says the same thing twice
    triples = [(pair["prompt"], pair["chosen"], pair["rejected"].strip()) for pair in pairs]
    assert len(set(triples)) == len(triples)
    assert len({pair["id"] for pair in pairs}) <= 4


def test_user_pairs_are_merged_and_bad_rows_quarantined(sft_dir, tmp_path):
    user = tmp_path / "user_prefs.jsonl"
    user.write_text("\n".join([
        json.dumps({"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "Purple."}),
        json.dumps({"prompt": "2 + 2?", "chosen": "4"}),  # no rejected answer
        json.dumps({"prompt": "Same?", "chosen": "same", "rejected": " same "}),  # no preference
        json.dumps({"question": "Capital?", "chosen": "A", "rejected": "B", "q": 1}),  # prompt under another name
        json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "..."}),
    ]) + "\n", encoding="utf-8")
    cfg = CFG.model_copy(update={"max_prompts": 4})
    metrics = build_prefs(cfg, [PrefSource(kind="jsonl", path=str(user))], DEMO, sft_dir, tmp_path / "out",
                          seed=SEED, device="cpu")
    assert metrics["user_pairs"] == 2
    assert metrics["quarantined"] == 2
    assert metrics["pairs"] == metrics["sampled_pairs"] + 2
    assert metrics["dropped_identical"] >= 1
    pairs = read_jsonl(tmp_path / "out" / PAIRS)
    user_pairs = [pair for pair in pairs if pair["source"] == str(user)]
    assert [pair["prompt"] for pair in user_pairs] == ["Is water wet?", "Hi"]
    assert user_pairs[0]["chosen"] == "Yes." and user_pairs[0]["rejected"] == "Purple."
    rejected = read_jsonl(tmp_path / "out" / REJECTED)
    assert sorted(row["line"] for row in rejected) == [2, 4]
    assert all("missing_field" in row["reason"] for row in rejected)


def test_select_prompts_is_a_seeded_subset_in_file_order():
    rows = [{"id": f"p{i}"} for i in range(50)]
    picked = select_prompts(rows, 10, seed=1)
    assert len(picked) == 10
    positions = [rows.index(row) for row in picked]
    assert positions == sorted(positions)
    assert picked == select_prompts(rows, 10, seed=1)
    assert picked != select_prompts(rows, 10, seed=2)
    assert select_prompts(rows, None, seed=1) == rows and select_prompts(rows, 60, seed=1) == rows


def test_missing_prompt_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="rlhf_prompts.jsonl"):
        build_prefs(CFG, [], DEMO, tmp_path, tmp_path / "out", seed=SEED, device="cpu")
