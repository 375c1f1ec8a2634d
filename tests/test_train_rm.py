"""The train_rm stage on a toy preference set: chosen answers use one word family, rejected ones another.

The fixtures here (a tiny tokenizer trained in-process, a random-init "SFT" model dir, toy pairs laid out as
build_prefs writes them) are reused by tests/test_ppo.py, tests/test_evaluate.py and tests/test_distributed.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from model_fixtures import make_tokenizer_dir
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from zero_chatgpt.config import ModelConfig, TrainRmConfig
from zero_chatgpt.data_process.conversations import prompt_messages
from zero_chatgpt.model.artifact_io import write_jsonl
from zero_chatgpt.model.build import build_model
from zero_chatgpt.model.preference_pairs import normalise_text, split_pairs
from zero_chatgpt.model.reward_model import load_reward_model, reward_pad_id, sequence_scores
from zero_chatgpt.model.train_rm import judge_halves, pair_batch, train_reward_model
from zero_chatgpt.stage_files import HELDOUT_PAIRS, TRAIN_PAIRS, independent_judge_dir, read_pairs
from zero_chatgpt.tokenizer.chat_encoding import encode_answer

GOOD_WORDS = "river bridge harbour lantern garden".split()
BAD_WORDS = "winter stone merchant festival mountain".split()
RM_METRIC_KEYS = {"val_accuracy", "length_baseline_accuracy", "val_loss", "train_pairs", "val_pairs", "reward_margin"}


def make_sft_dir(root: Path, tokenizer_dir: Path, prompts: list[str], seed: int = 0) -> Path:
    """A random-init tiny causal LM + tokenizer + `rlhf_prompts.jsonl`: the shape of an sft artifact dir."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128),
        len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = root / "sft"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(out / "rlhf_prompts.jsonl", "w", encoding="utf-8") as handle:
        for number, prompt in enumerate(prompts):
            handle.write(json.dumps({"id": f"p{number}", "prompt": prompt, "response": "ok"}) + "\n")
    return out


def answer_ids(tokenizer, prompt, answer: str, max_seq_len: int = 64) -> list[int]:
    """What the reward model scores: the prompt (a string or messages) answered by `answer`, through end of turn."""
    return encode_answer(tokenizer, prompt_messages(prompt), answer, max_seq_len)


def toy_prompts(count: int) -> list[str]:
    return [f"Tell me about place {number}." for number in range(count)]


def toy_pairs(prompts: list[str], seed: int = 0) -> list[dict[str, str]]:
    """Two pairs per prompt: chosen = 3 good words; rejected = 5 bad words (longer, so "longer wins" fails)."""
    rng = random.Random(seed)
    return [
        {
            "prompt": prompt,
            "chosen": " ".join(rng.choices(GOOD_WORDS, k=3)),
            "rejected": " ".join(rng.choices(BAD_WORDS, k=5)),
            "source": "toy",
        }
        for prompt in prompts
        for _ in range(2)
    ]


def write_toy_pairs(prefs_dir: Path, prompts: list[str], seed: int = 0) -> Path:
    """A build_prefs-shaped dir of `toy_pairs`: 20% of the prompts held out, as build_prefs splits them."""
    train, heldout = split_pairs(toy_pairs(prompts, seed), 0.2, seed=0)
    prefs_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(prefs_dir / TRAIN_PAIRS, train)
    write_jsonl(prefs_dir / HELDOUT_PAIRS, heldout)
    return prefs_dir


def rm_config(independent_judge: bool = False, **optim) -> TrainRmConfig:
    """A fast config; the judge (on by default in the real config) only where a test asks for it."""
    values = dict(lr=3e-3, warmup_steps=2, max_steps=30, batch_size=8, eval_every=30, checkpoint_every=100)
    values.update(optim)
    return TrainRmConfig.model_validate(
        {"optim": values, "max_seq_len": 64, "independent_judge": independent_judge, "judge_optim": values}
    )


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


def test_read_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / TRAIN_PAIRS
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match=r"train_pairs.jsonl:2: key 'rejected'"):
        read_pairs(path)


def test_score_is_read_at_the_closing_token_whatever_the_padding(toy_dirs):
    """Right padding and left padding of the same sequence give the same score."""
    tokenizer = AutoTokenizer.from_pretrained(toy_dirs["sft"])
    model = load_reward_model(toy_dirs["sft"]).eval()
    short = answer_ids(tokenizer, "hi", "river")
    long = answer_ids(tokenizer, "a much longer prompt here", "stone stone stone")
    assert short[-1] == long[-1] == 4  # <|im_end|>
    batch = pair_batch([(short, long)], reward_pad_id(tokenizer))
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
    held_out = read_pairs(toy_dirs["prefs"] / HELDOUT_PAIRS)
    assert metrics["train_pairs"] + metrics["val_pairs"] == 80 and metrics["val_pairs"] == len(held_out) > 0
    assert metrics["train_pairs_by_source"] == {"toy": metrics["train_pairs"]}
    assert not independent_judge_dir(out).exists() and "judge_val_accuracy" not in metrics
    assert metrics["length_baseline_accuracy"] <= 0.25  # the rejected answers are nearly always longer
    assert metrics["val_accuracy"] >= 0.9 > metrics["length_baseline_accuracy"]
    assert metrics["reward_margin"] > 0
    assert (out / "metrics.jsonl").is_file() and not (out / "checkpoints").exists()

    # The artifact loads with the Auto classes and prefers a fresh good answer to a bad one.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    good = answer_ids(tokenizer, "Tell me about place 999.", "garden lantern river")
    bad = answer_ids(tokenizer, "Tell me about place 999.", "winter stone merchant")
    batch = pair_batch([(good, bad)], reward_pad_id(tokenizer))
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


def test_reward_model_training_lowers_the_loss_and_changes_the_parameters(trained_rm, toy_dirs):
    out, metrics = trained_rm
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) >= 10 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    before = AutoModelForSequenceClassification.from_pretrained(toy_dirs["sft"], num_labels=1).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def test_judge_halves_share_no_pair_prompt_or_reference():
    pairs = toy_pairs(toy_prompts(30))
    # A mined pair rides with the real pairs of its prompt (same prompt, same reference).
    pairs.append(
        {
            "prompt": pairs[0]["prompt"],
            "chosen": pairs[0]["chosen"],
            "rejected": pairs[5]["chosen"],
            "source": "mismatched_reference",
        }
    )
    rm_pairs, judge_pairs = judge_halves(pairs, 0.5, seed=0)
    assert len(rm_pairs) + len(judge_pairs) == len(pairs) and rm_pairs and judge_pairs
    assert not _shared_texts(rm_pairs, judge_pairs, "prompt") and not _shared_texts(rm_pairs, judge_pairs, "chosen")
    assert abs(len({p["prompt"] for p in judge_pairs}) - 15) <= 1
    linked = [{"prompt": f"q{i}", "chosen": "one answer", "rejected": f"r{i}"} for i in range(4)]
    with pytest.raises(ValueError, match="train_rm.independent_judge"):
        judge_halves(linked, 0.5, seed=0)


@pytest.mark.parametrize("disjoint", [False, True])
def test_independent_judge_trains_on_its_share(tmp_path, toy_dirs, disjoint):
    """The judge is a second model in the artifact, trained on a share of the pairs (the reward model on all of
    them, or with judge_disjoint on the rest), and judges too."""
    cfg = rm_config(independent_judge=True, max_steps=20, eval_every=20)
    cfg.judge_disjoint = disjoint
    metrics = train_reward_model(cfg, toy_dirs["sft"], toy_dirs["prefs"], tmp_path, seed=0, device="cpu")
    train = read_pairs(toy_dirs["prefs"] / TRAIN_PAIRS)
    rest, judge_pairs = judge_halves(train, cfg.judge_fraction, seed=0)
    assert metrics["judge_train_pairs"] == len(judge_pairs) < len(train)
    assert metrics["train_pairs"] == (len(rest) if disjoint else len(train))
    assert metrics["judge_steps"] == 20 and metrics["judge_val_accuracy"] >= 0.8

    judge_dir = independent_judge_dir(tmp_path)
    judge = load_reward_model(judge_dir).eval()
    first = load_reward_model(tmp_path).eval()
    assert not torch.equal(judge.score.weight, first.score.weight)  # two models, not one saved twice
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "checkpoints-judge").exists()
    records = [json.loads(line) for line in (judge_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
