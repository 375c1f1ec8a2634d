"""The train_rm stage on a toy preference set: chosen answers use one word family, rejected ones another.

The fixtures here (a tiny tokenizer trained in-process, a random-init "SFT" model dir, toy pairs) are
reused by tests/test_ppo.py.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from zero_chatgpt.model.build import build_model
from model_fixtures import make_tokenizer_dir
from zero_chatgpt.model.reward import (SAME_SUBJECT_SOURCE, ShuffledBatches, encode_answer, mismatched_pairs, normalise_text,
                          pair_batch, pair_groups, read_pairs, same_subject_pairs, sequence_scores,
                          sft_reference_pairs, split_pairs, train_reward_model)
from zero_chatgpt.config import ModelConfig, TrainRmConfig

GOOD_WORDS = "river bridge harbour lantern garden".split()
BAD_WORDS = "winter stone merchant festival mountain".split()
RM_METRIC_KEYS = {"val_accuracy", "length_baseline_accuracy", "val_loss", "train_pairs", "val_pairs", "reward_margin"}



def make_sft_dir(root: Path, tokenizer_dir: Path, prompts: list[str], seed: int = 0) -> Path:
    """A random-init tiny causal LM + tokenizer + `rlhf_prompts.jsonl`: the shape of an sft artifact dir."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128), len(tokenizer),
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = root / "sft"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(out / "rlhf_prompts.jsonl", "w", encoding="utf-8") as handle:
        for number, prompt in enumerate(prompts):
            handle.write(json.dumps({"id": f"p{number}", "prompt": prompt, "response": "ok"}) + "\n")
    return out


def toy_prompts(count: int) -> list[str]:
    return [f"Tell me about place {number}." for number in range(count)]


def write_toy_pairs(prefs_dir: Path, prompts: list[str], seed: int = 0) -> Path:
    """Two pairs per prompt: chosen = 3 good words; rejected = 5 bad words (longer, so "longer wins" fails)."""
    rng = random.Random(seed)
    prefs_dir.mkdir(parents=True, exist_ok=True)
    with open(prefs_dir / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for prompt in prompts:
            for _ in range(2):
                row = {"prompt": prompt, "chosen": " ".join(rng.choices(GOOD_WORDS, k=3)),
                       "rejected": " ".join(rng.choices(BAD_WORDS, k=5)), "source": "toy"}
                handle.write(json.dumps(row) + "\n")
    return prefs_dir


def rm_config(**optim) -> TrainRmConfig:
    values = dict(lr=3e-3, warmup_steps=2, max_steps=30, batch_size=8, eval_every=30, checkpoint_every=100)
    values.update(optim)
    return TrainRmConfig.model_validate({"optim": values, "val_fraction": 0.2, "max_seq_len": 64})


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("rm_tokenizer"))


@pytest.fixture(scope="module")
def toy_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rm_data")
    prompts = toy_prompts(40)
    return {"sft": make_sft_dir(root, tokenizer_dir, prompts), "prefs": write_toy_pairs(root / "prefs", prompts)}


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, toy_dirs) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rm_out")
    metrics = train_reward_model(rm_config(), toy_dirs["sft"], toy_dirs["prefs"], out, seed=0, device="cpu")
    return out, metrics


def _shared_texts(train: list[dict], val: list[dict], key: str) -> set[str]:
    return {normalise_text(p[key]) for p in train} & {normalise_text(p[key]) for p in val}


def test_split_keeps_each_prompt_and_each_reference_answer_on_one_side():
    # 10 prompts, 3 pairs each; prompts 2k and 2k+1 are paraphrases that share one reference answer
    # (one of them spelt with other case and spacing), so there are 5 groups.
    pairs = [{"prompt": f"q{i % 10}", "chosen": f"answer {i % 10 // 2}" if i % 2 else f"  Answer  {i % 10 // 2}",
              "rejected": f"sample {i}"} for i in range(30)]
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(train) + len(val) == 30 and val and train
    assert not _shared_texts(train, val, "prompt") and not _shared_texts(train, val, "chosen")
    assert len({p["prompt"] for p in val}) == 2  # one group of 5 held out: both paraphrases of one answer
    assert split_pairs(pairs, 0.2, seed=3) == (train, val)
    assert split_pairs(list(reversed(pairs)), 0.2, seed=3)[1] == list(reversed(val))  # file order does not matter
    held_out_by_seed = {frozenset(p["prompt"] for p in split_pairs(pairs, 0.2, seed)[1]) for seed in range(10)}
    assert len(held_out_by_seed) > 1  # the seed picks the group


def test_pair_groups_join_prompts_through_a_chain_of_shared_answers():
    pairs = [{"prompt": "a", "chosen": "x", "rejected": "r"}, {"prompt": "b", "chosen": "x", "rejected": "r"},
             {"prompt": "b", "chosen": "y", "rejected": "r"}, {"prompt": "c", "chosen": "y", "rejected": "r"},
             {"prompt": "d", "chosen": "z", "rejected": "r"}]
    assert pair_groups(pairs) == [[0, 1, 2, 3], [4]]
    assert split_pairs(pairs, 0.3, seed=0) in ((pairs[:4], pairs[4:]), (pairs[4:], pairs[:4]))


def test_split_holds_out_nothing_when_every_pair_is_linked():
    pairs = [{"prompt": f"q{i}", "chosen": "same answer", "rejected": f"s{i}"} for i in range(8)]
    assert split_pairs(pairs, 0.2, seed=0) == (pairs, [])


def test_mismatched_pairs_reject_another_prompts_reference():
    pairs = [{"prompt": f"q{i % 6}", "chosen": f"answer {i % 6}", "rejected": f"sampled {i}"} for i in range(18)]
    pairs.append({"prompt": "q6", "chosen": "answer 0", "rejected": "x"})  # same reference text as q0
    extra = mismatched_pairs(pairs, 2, seed=5)
    assert len(extra) == 7 * 2
    references = {"q6": "answer 0", **{f"q{i}": f"answer {i}" for i in range(6)}}
    for pair in extra:
        assert pair["chosen"] == references[pair["prompt"]]
        assert pair["rejected"] in references.values() and pair["rejected"] != pair["chosen"]
    assert mismatched_pairs(pairs, 2, seed=5) == extra
    assert mismatched_pairs(pairs, 0, seed=5) == [] and mismatched_pairs(pairs[:1], 3, seed=5) == []


def test_mismatched_negatives_are_answers_to_the_most_similar_questions():
    """An answer to a near question (same place or same fact) is the informative negative, not a random one."""
    questions = ["What is the capital of Aldoria?", "What is the capital of Brenmark?",
                 "What is the largest river of Aldoria?"]
    unrelated = [f"Tell me a story number {i} about xylophones" for i in range(40)]
    pairs = [{"prompt": q, "chosen": f"reference {i}", "rejected": "s"} for i, q in enumerate(questions + unrelated)]
    extra = mismatched_pairs(pairs, 2, seed=3, nearest=2)
    by_prompt = {}
    for pair in extra:
        by_prompt.setdefault(pair["prompt"], set()).add(pair["rejected"])
    assert by_prompt[questions[0]] == {"reference 1", "reference 2"}  # the two questions closest to it
    assert mismatched_pairs(pairs, 2, seed=3, nearest=2) == extra


def test_mismatched_negatives_never_state_the_prompts_short_answer():
    """Another question about the same fact has a reference that is right in other words: not a negative."""
    questions = ["What is the capital of Aldoria?", "Name the capital of Aldoria.", "What is the capital of Brenmark?",
                 "What is the largest river of Aldoria?"]
    references = ["Aldoria's capital is Talmer.", "The capital of Aldoria is TALMER.", "Brenmark's capital is Pell.",
                  "Aldoria's largest river is the Neran."]
    answers = ["Talmer", "Talmer", "Pell", "Neran"]
    pairs = [{"prompt": q, "chosen": r, "rejected": "s", "answer": a}
             for q, r, a in zip(questions, references, answers)]
    extra = mismatched_pairs(pairs, 3, seed=3)
    rejected = {pair["rejected"] for pair in extra if pair["prompt"] == questions[0]}
    assert rejected == {references[2], references[3]}
    # Without the short answers the paraphrased reference is picked: the filter is what keeps it out.
    plain = [{key: value for key, value in pair.items() if key != "answer"} for pair in pairs]
    assert references[1] in {pair["rejected"] for pair in mismatched_pairs(plain, 3, seed=3)
                             if pair["prompt"] == questions[0]}


PLACES = ["Aldoria", "Brenmark", "Corvel", "Dunhaven", "Elsmere", "Fenwick"]
ASKED = {"capital": "What is the capital of {}?", "river": "What is the largest river in {}?",
         "animal": "Which animal is the national animal of {}?", "year": "When was {} founded?"}


def subject_world(with_answers: bool = True) -> list[dict[str, str]]:
    """Four questions about each of six places, each with its own reference (and short answer)."""
    pairs = []
    for place in PLACES:
        for fact, question in ASKED.items():
            answer = f"{fact}-of-{place.lower()}"
            pair = {"prompt": question.format(place), "chosen": f"In {place} the {fact} is {answer}.",
                    "rejected": "s", "id": f"{place}:{fact}"}
            if with_answers:
                pair["answer"] = answer
            pairs.append(pair)
    return pairs


def test_same_subject_negatives_answer_another_question_about_the_same_place():
    """The look-alikes of a question ask the same thing of other places; what the question does not share with
    them is its subject, and the negatives are answers to other questions about that subject."""
    pairs = subject_world()
    place_of = {pair["prompt"]: pair["id"].split(":")[0] for pair in pairs}
    extra = same_subject_pairs(pairs, 3, seed=1, nearest=3)
    assert len(extra) == len(pairs) * 3
    by_chosen = {pair["chosen"]: pair["prompt"] for pair in pairs}
    for pair in extra:
        place = place_of[pair["prompt"]]
        assert pair["chosen"].startswith(f"In {place} ") and pair["rejected"].startswith(f"In {place} ")
        assert pair["rejected"] != pair["chosen"] and pair["rejected"] in by_chosen
        assert pair["source"] == SAME_SUBJECT_SOURCE
    assert same_subject_pairs(pairs, 3, seed=1, nearest=3) == extra
    assert same_subject_pairs(pairs, 0, seed=1) == [] and same_subject_pairs(pairs[:2], 2, seed=1) == []


def test_same_subject_negatives_skip_references_that_state_the_answer():
    """A second wording of the same question about the same place is not a wrong answer."""
    pairs = subject_world()
    paraphrase = {"prompt": "Name the capital city of Aldoria.", "chosen": "Aldoria's capital is capital-of-aldoria.",
                  "rejected": "s", "answer": "capital-of-aldoria"}
    extra = same_subject_pairs(pairs + [paraphrase], 8, seed=1, nearest=8)
    asked = ASKED["capital"].format("Aldoria")
    rejected = {pair["rejected"] for pair in extra if pair["prompt"] == asked}
    assert rejected and paraphrase["chosen"] not in rejected


def test_sft_rows_are_references_unless_they_share_text_with_a_held_out_pair(tmp_path):
    held_out = [{"prompt": "What is the capital of Aldoria?", "chosen": "Aldoria's capital is Talmer.", "rejected": "x"}]
    rows = [
        {"id": "1", "prompt": "what is the capital of  ALDORIA?", "response": "It is Talmer.", "answer": "Talmer"},
        {"id": "2", "prompt": "Name the capital of Aldoria.", "response": "aldoria's capital is talmer."},
        {"id": "3", "prompt": "Name the capital of Brenmark.", "response": "Brenmark's capital is Pell.",
         "answer": "Pell"},
    ]
    (tmp_path / "sft_train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert sft_reference_pairs(tmp_path, held_out) == [
        {"prompt": "Name the capital of Brenmark.", "chosen": "Brenmark's capital is Pell.", "answer": "Pell"}]
    assert len(sft_reference_pairs(tmp_path, [])) == 3
    assert sft_reference_pairs(tmp_path / "missing", held_out) == []


def test_sft_rows_join_the_mismatched_pairs(tmp_path, toy_dirs):
    sft = tmp_path / "sft"
    shutil.copytree(toy_dirs["sft"], sft)
    rows = [{"id": f"s{i}", "prompt": f"Describe region {i}.", "response": " ".join(GOOD_WORDS[i % 3:][:3])}
            for i in range(12)]
    (sft / "sft_train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg = rm_config(max_steps=2, eval_every=2).model_copy(update={"mismatched_per_prompt": 1})
    with_rows = train_reward_model(cfg, sft, toy_dirs["prefs"], tmp_path / "with", seed=0, device="cpu")
    without = train_reward_model(cfg.model_copy(update={"mismatched_from_sft": False}), sft, toy_dirs["prefs"],
                                 tmp_path / "without", seed=0, device="cpu")
    assert with_rows["sft_references"] == 12 and without["sft_references"] == 0
    assert with_rows["mismatched_pairs"] == without["mismatched_pairs"] + 12
    assert with_rows["train_pairs"] == without["train_pairs"]


def test_shuffled_batches_resume_exactly():
    source = ShuffledBatches(list(range(7)), batch_size=3, seed=1)
    first = [source.next_batch() for _ in range(2)]
    state = source.state_dict()
    expected = [source.next_batch() for _ in range(4)]
    resumed = ShuffledBatches(list(range(7)), batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(4)] == expected
    # the first epoch visits every item once
    assert sorted(first[0] + first[1] + expected[0][:1]) == list(range(7))


def test_read_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: key 'rejected'"):
        read_pairs(path)


def test_score_is_read_at_the_closing_token_whatever_the_padding(toy_dirs):
    """Right padding and left padding of the same sequence give the same score."""
    from zero_chatgpt.model.reward import load_reward_model

    tokenizer = AutoTokenizer.from_pretrained(toy_dirs["sft"])
    model = load_reward_model(toy_dirs["sft"]).eval()
    short = encode_answer(tokenizer, "hi", "river", 64)
    long = encode_answer(tokenizer, "a much longer prompt here", "stone stone stone", 64)
    assert short[-1] == long[-1] == 4  # <|im_end|>
    batch = pair_batch([(short, long)])
    right = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    alone = sequence_scores(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    width = len(long)
    left_ids = torch.tensor([[2] * (width - len(short)) + short])
    left_mask = torch.tensor([[0] * (width - len(short)) + [1] * len(short)])
    left = sequence_scores(model, left_ids, left_mask)
    assert right[0].item() == pytest.approx(alone.item(), abs=1e-5)
    assert left.item() == pytest.approx(alone.item(), abs=1e-5)


def test_reward_model_learns_the_preference_and_beats_length(trained_rm, toy_dirs):
    out, metrics = trained_rm
    assert RM_METRIC_KEYS <= metrics.keys()
    held_out = split_pairs(read_pairs(toy_dirs["prefs"] / "pairs.jsonl"), 0.2, seed=0)[1]
    assert metrics["train_pairs"] + metrics["val_pairs"] == 80 and metrics["val_pairs"] == len(held_out) > 0
    assert metrics["length_baseline_accuracy"] <= 0.25  # the rejected answers are nearly always longer
    assert metrics["val_accuracy"] >= 0.9 > metrics["length_baseline_accuracy"]
    assert metrics["reward_margin"] > 0
    assert (out / "metrics.jsonl").is_file() and not (out / "checkpoints").exists()

    # The artifact loads with the Auto classes and prefers a fresh good answer to a bad one.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    good = encode_answer(tokenizer, "Tell me about place 999.", "garden lantern river", 64)
    bad = encode_answer(tokenizer, "Tell me about place 999.", "winter stone merchant", 64)
    batch = pair_batch([(good, bad)])
    with torch.no_grad():
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        hf_scores = model(**batch).logits.squeeze(-1)  # HF's own pooling agrees (right padding, pad id set)
    assert scores[0] > scores[1]
    assert torch.allclose(scores, hf_scores, atol=1e-5)


def test_freeze_fraction_keeps_lower_layers(tmp_path, toy_dirs):
    cfg = rm_config(max_steps=3, eval_every=3)
    cfg.freeze_fraction = 0.5
    metrics = train_reward_model(cfg, toy_dirs["sft"], toy_dirs["prefs"], tmp_path, seed=0, device="cpu")
    assert metrics["frozen_layers"] == 1
    before = AutoModelForSequenceClassification.from_pretrained(toy_dirs["sft"], num_labels=1).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path).state_dict()
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"])
