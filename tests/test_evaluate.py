"""The evaluate stage: its metric functions against hand-computed values, KL on identical models, the second
judge found (never trained here), and an end-to-end run on tiny random-init fixture models."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from model_fixtures import make_tokenizer_dir
from test_train_rm import make_sft_dir, rm_config, toy_prompts, write_toy_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

from zero_chatgpt.config import DemoCorpusConfig, EvaluateConfig
from zero_chatgpt.model.eval_text import (
    contains_answer,
    distinct_n,
    exact_match_rate,
    is_refusal,
    pairwise_outcomes,
    refusal_rate,
    repeated_ngram_rate,
    text_statistics,
    win_rate,
)
from zero_chatgpt.model.evaluate import (
    MODELS,
    chat_prompt_ids,
    evaluate,
    find_judge,
    generate,
    heldout_prompt_rows,
    kl_to_reference,
    plain_prompt_ids,
    plain_text,
    samples_markdown,
    seeded_subset,
)
from zero_chatgpt.model.train_rm import train_reward_model
from zero_chatgpt.stage_files import independent_judge_dir
from zero_chatgpt.tokenizer.chat_encoding import end_of_turn_id, pad_id

# ---------------------------------------------------------------------------------- metric functions


def test_distinct_n_counts_unique_ngrams_over_all_answers():
    answers = [["a", "b", "a"], ["a", "b"]]
    assert distinct_n(answers, 1) == pytest.approx(2 / 5)  # a, b among a b a a b
    assert distinct_n(answers, 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n([["x"]], 2) == 0.0


def test_repeated_ngram_rate_counts_repeats_within_one_answer():
    assert repeated_ngram_rate([list("ababab")], 3) == pytest.approx(2 / 4)  # aba bab aba bab
    # the same 3-gram in two different answers is not a repeat
    assert repeated_ngram_rate([list("abc"), list("abc")], 3) == 0.0
    assert repeated_ngram_rate([list("aaaa"), list("xyz")], 3) == pytest.approx(1 / 3)
    assert repeated_ngram_rate([list("ab")], 3) == 0.0


def test_refusals_are_found_in_both_languages():
    assert is_refusal("I'm sorry, but I cannot help with that.")
    assert is_refusal("抱歉，我无法回答这个问题。")
    assert is_refusal("AS AN AI, I have no opinion")
    assert not is_refusal("The capital of Eldonia is Borfen.")
    assert refusal_rate(["I don't know.", "Borfen.", "对不起", "好的"]) == 0.5
    assert refusal_rate([]) == 0.0


def test_exact_match_finds_the_answer_string_in_the_reply():
    assert contains_answer("The capital is Borfen.", "Borfen")
    assert contains_answer("首都是峦银港。", "峦银港")
    assert contains_answer("It was founded in １２６４.", "1264")  # full-width digits normalised
    assert not contains_answer("The capital is Borf.", "Borfen")
    assert not contains_answer("anything", "  ")
    assert exact_match_rate(["Borfen it is", "no idea", "Adel"], ["borfen", "Adel", "adel"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 replies for 1 answers"):
        exact_match_rate(["a", "b"], ["a"])


def test_win_rate_counts_ties_as_half():
    policy, baseline = [1.0, 0.0, 2.0, 3.0], [0.5, 1.0, 2.0, 0.0]
    assert pairwise_outcomes(policy, baseline) == [1.0, 0.0, 0.5, 1.0]
    assert win_rate(policy, baseline) == pytest.approx(2.5 / 4)
    # identical answers tie whatever their (noisy) scores
    assert pairwise_outcomes(policy, baseline, identical=[True, False, False, False]) == [0.5, 0.0, 0.5, 1.0]
    assert math.isnan(win_rate([], []))


def test_text_statistics_of_token_lists():
    stats = text_statistics(["ab", "对不起"], [[1, 2], [3, 3, 3, 3]])
    assert stats["response_tokens"] == 3.0 and stats["response_chars"] == 2.5
    assert stats["distinct_1"] == pytest.approx(3 / 6) and stats["refusal_rate"] == 0.5
    assert stats["repeated_3gram_rate"] == pytest.approx(1 / 2)


def test_seeded_subset_is_order_independent():
    rows = [{"id": f"r{i}"} for i in range(20)]
    picked = seeded_subset(rows, 5, seed=3, purpose="evaluate")
    shuffled = seeded_subset(list(reversed(rows)), 5, seed=3, purpose="evaluate")
    assert len(picked) == 5 and {r["id"] for r in picked} == {r["id"] for r in shuffled}
    assert seeded_subset(rows, None, 3, "evaluate") == rows


def test_the_second_judge_is_the_named_model_else_train_rms(tmp_path):
    rm_dir = tmp_path / "rm"
    rm_dir.mkdir()
    assert find_judge(None, rm_dir) is None  # train_rm ran without a judge
    independent_judge_dir(rm_dir).mkdir()
    assert find_judge(None, rm_dir) == independent_judge_dir(rm_dir)
    assert find_judge(str(tmp_path), rm_dir) == tmp_path
    with pytest.raises(FileNotFoundError, match="evaluate.judge_model"):
        find_judge(str(tmp_path / "missing"), rm_dir)


# ---------------------------------------------------------------------------------- fixture models


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer, random-init pretrain / sft / ppo models (different seeds), toy pairs and a briefly trained RM
    with its independent judge."""
    root = tmp_path_factory.mktemp("evaluate")
    tokenizer_dir = make_tokenizer_dir(root)
    prompts = toy_prompts(24)
    sft = make_sft_dir(root, tokenizer_dir, prompts, seed=0)
    with open(sft / "sft_val.jsonl", "w", encoding="utf-8") as handle:
        for number in range(10):
            handle.write(
                json.dumps(
                    {"id": f"v{number}", "prompt": f"Describe river {number}.", "response": "A river.", "source": "toy"}
                )
                + "\n"
            )
    pretrain = make_sft_dir(root / "pretrain_root", tokenizer_dir, prompts, seed=1)
    ppo = make_sft_dir(root / "ppo_root", tokenizer_dir, prompts, seed=2)
    prefs = write_toy_pairs(root / "prefs", prompts)
    rm = root / "rm"
    train_reward_model(
        rm_config(independent_judge=True, max_steps=4, eval_every=4), sft, prefs, rm, seed=0, device="cpu"
    )
    return {"pretrain": pretrain, "sft": sft, "ppo": ppo, "rm": rm}


def test_kl_to_an_identical_model_is_zero_and_generation_is_batched_consistently(dirs):
    tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    model = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval()
    twin = copy.deepcopy(model)
    prompts = chat_prompt_ids(tokenizer, ["Tell me about place 1.", "Hi", "Describe river 3 in detail please."])
    # The project's ChatML tokenizer: the ids are the ones the pipeline always used.
    assert (
        prompts[1]
        == tokenizer("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    )
    stop, pad = end_of_turn_id(tokenizer), pad_id(tokenizer)
    assert (stop, pad) == (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|pad|>"))
    assert kl_to_reference(model, model, prompts, 5, 1.0, seed=0, batch_size=2, eos_id=stop, pad_id=pad) == 0.0
    assert kl_to_reference(
        model, twin, prompts, 5, 1.0, seed=0, batch_size=2, eos_id=stop, pad_id=pad
    ) == pytest.approx(0.0, abs=1e-4)

    together = generate(model, tokenizer, prompts, 6, stop, 0.0, 1.0, seed=0, batch_size=3)
    alone = [generate(model, tokenizer, [p], 6, stop, 0.0, 1.0, seed=0, batch_size=1) for p in prompts]
    assert together.token_ids == [g.token_ids[0] for g in alone]  # left padding does not change greedy answers
    assert all(stop not in ids for ids in together.token_ids)
    plain = plain_prompt_ids(tokenizer, ["Where?"], "Q: {question}\nA:")
    # no BOS: a plain-text document starts after the end-of-text token, as pretraining separated them
    assert plain[0][0] == tokenizer.eos_token_id and tokenizer.decode(plain[0][1:]) == "Q: Where?\nA:"


def _no_training(*args, **kwargs):
    raise AssertionError("evaluate built an optimizer: it must only load its judges")


def test_evaluate_end_to_end_writes_every_metric_and_file(dirs, tmp_path, monkeypatch):
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "toy.jsonl").write_text(
        "".join(json.dumps({"text": f"place {i}", "label": i % 2}) + "\n" for i in range(6))
    )
    (task_dir / "toy.json").write_text(
        json.dumps({"template": "{text} is {option}", "label_words": {"0": "river", "1": "stone"}})
    )
    cfg = EvaluateConfig.model_validate(
        {
            "max_prompts": 6,
            "max_questions": 8,
            "max_new_tokens": 6,
            "batch_size": 4,
            "num_samples": 2,
            "sample_prompts": ["Hello | there"],
            "task_files": [str(task_dir / "*.jsonl")],
            "few_shot": 1,
            "task_models": ["ppo", "pretrain"],
            "qa_sources": [{"kind": "demo", "lang_field": "lang"}],
        }
    )
    out = tmp_path / "eval"
    judge_files = {path: path.stat().st_mtime_ns for path in dirs["rm"].rglob("*")}
    # evaluate trains nothing: any optimizer built during the run fails it.
    monkeypatch.setattr(torch.optim.AdamW, "__init__", _no_training)
    metrics = evaluate(
        cfg,
        DemoCorpusConfig(num_entities=8, docs_per_entity=1),
        dirs["pretrain"],
        dirs["sft"],
        dirs["rm"],
        dirs["ppo"],
        out,
        seed=0,
        device="cpu",
    )
    monkeypatch.undo()
    assert {path: path.stat().st_mtime_ns for path in dirs["rm"].rglob("*")} == judge_files
    assert metrics["independent_judge"] == str(independent_judge_dir(dirs["rm"]))
    # one tokenizer throughout: the pretrained model answers the held-out prompts in the chat template too
    assert metrics["pretrain_prompted_in_chat"] is True and metrics["multi_turn_prompts"] == 0
    assert metrics["reward_model_heldout"] is None  # train_rm ran without the stage wrapper: no manifest

    for key in ("win_rate_vs_sft", "win_rate_vs_sft_independent"):
        assert 0.0 <= metrics[key] <= 1.0
    per_model = (
        "reward",
        "reward_independent",
        "kl_to_sft",
        "response_tokens",
        "response_chars",
        "distinct_1",
        "distinct_2",
        "repeated_3gram_rate",
        "refusal_rate",
        "exact_match",
    )
    for key in per_model:
        assert set(metrics[key]) == set(MODELS), key
        assert all(isinstance(value, float) for value in metrics[key].values()), key
    assert metrics["kl_to_sft"]["sft"] == 0.0 and metrics["kl_to_sft"]["ppo"] != 0.0
    assert all(0 < metrics["response_tokens"][name] <= 6 for name in MODELS)
    assert set(metrics["exact_match_by_lang"]) == {"en", "zh"}
    assert metrics["prompts"] == 6 and metrics["questions"] == 8

    toy = metrics["tasks"]["toy"]
    assert toy["n"] == 5 and toy["chance"] == 0.5 and toy["few_shot"] == 1
    assert list(toy["accuracy_by_model"]) == ["ppo", "pretrain"]  # as configured, not as the models ran
    assert toy["accuracy"] == toy["accuracy_by_model"]["ppo"] and toy["accuracy"] in {i / 5 for i in range(6)}

    assert metrics["reward_independent"] != metrics["reward"]  # a second model, not the first one again
    assert not (out / "independent_rm").exists()

    assert json.loads((out / "eval.json").read_text()) == metrics
    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    assert len(judged) == 6 and {"sft", "ppo", "reward", "outcome", "outcome_independent"} <= judged[0].keys()
    assert sum(row["outcome"] for row in judged) / 6 == pytest.approx(metrics["win_rate_vs_sft"])
    facts = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert len(facts) == 8 and set(facts[0]["replies"]) == set(MODELS)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 1 + 2 + 2 and all(set(row["answers"]) == set(MODELS) for row in samples)
    table = (out / "samples.md").read_text()
    assert "| kind | prompt | reference | pretrain | sft | ppo |" in table and "Hello \\| there" in table


def test_plain_text_renders_a_conversation_as_a_transcript():
    assert plain_text("Where is it?") == "Where is it?"
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Where is it?"},
    ]
    assert plain_text(conversation) == "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Where is it?"


def test_heldout_rows_take_conversations_and_name_a_bad_row(tmp_path):
    conversation = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    rows = [{"prompt": "plain"}, {"prompt": conversation}]
    (tmp_path / "sft_val.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [row["prompt"] for row in heldout_prompt_rows(tmp_path, 10, seed=0)] in (
        ["plain", conversation],
        [conversation, "plain"],
    )
    ending_with_the_answer = conversation[:2]
    (tmp_path / "sft_val.jsonl").write_text(json.dumps({"prompt": ending_with_the_answer}) + "\n")
    with pytest.raises(ValueError, match=r"sft_val.jsonl:1: key 'prompt': .*must end with a user turn"):
        heldout_prompt_rows(tmp_path, 10, seed=0)


def test_samples_markdown_escapes_cells():
    table = samples_markdown(
        [{"kind": "fixed", "prompt": "a|b\nc", "reference": None, "answers": {"pretrain": "", "sft": "x", "ppo": "y"}}]
    )
    assert "| fixed | a\\|b<br>c | (empty) | (empty) | x | y |" in table


def test_exact_match_comes_from_any_qa_file_and_is_absent_without_one(dirs, tmp_path):
    questions = [{"question": "Where is place 1?", "answer": "place"}, {"question": "Name a river.", "answer": "zq#x"}]
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("".join(json.dumps(row) + "\n" for row in questions))
    common = {"max_prompts": 2, "max_new_tokens": 4, "batch_size": 4, "num_samples": 1, "sample_prompts": []}
    models = (dirs["pretrain"], dirs["sft"], dirs["rm"], dirs["ppo"])
    demo = DemoCorpusConfig(num_entities=8, docs_per_entity=1)

    asked = EvaluateConfig.model_validate({**common, "qa_sources": [{"kind": "jsonl", "path": str(qa_file)}]})
    metrics = evaluate(asked, demo, *models, tmp_path / "asked", seed=0, device="cpu")
    assert metrics["questions"] == 2 and set(metrics["exact_match"]) == set(MODELS)
    assert all(value <= 0.5 for value in metrics["exact_match"].values())  # nobody says "zq#x"
    assert "exact_match_by_lang" not in metrics  # the file has no language field
    facts = [json.loads(line) for line in (tmp_path / "asked" / "questions.jsonl").read_text().splitlines()]
    assert [(row["question"], row["answer"]) for row in facts] == [(q["question"], q["answer"]) for q in questions]

    metrics = evaluate(EvaluateConfig.model_validate(common), demo, *models, tmp_path / "none", seed=0, device="cpu")
    assert metrics["questions"] == 0 and "exact_match" not in metrics and "exact_match_by_lang" not in metrics
