"""The pretrain stage on a synthetic pattern language: learning, export, metrics and resume after SIGKILL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_and_resume import assert_same_history, assert_same_metrics, read_history, run_killed, run_to_end
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from zero_chatgpt.config import PretrainConfig
from zero_chatgpt.data_process.token_shards import ShardWriter, TokenShards, write_meta
from zero_chatgpt.model.pretrain import consecutive_val_windows, pretrain, unigram_entropy

SPECIALS = ["<unk>", "<s>", "</s>"]
EOS_ID = 2
METRIC_KEYS = {
    "val_loss",
    "unigram_val_loss",
    "train_loss",
    "tokens_seen",
    "tokens_per_s",
    "params",
    "steps",
    "resumed_from",
}


def write_tokenizer(out_dir: Path, num_words: int) -> None:
    """A word-level tokenizer over `w0 .. w{num_words-1}` plus specials, saved as HF files."""
    vocab = {token: i for i, token in enumerate(SPECIALS + [f"w{i}" for i in range(num_words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out_dir)


def write_pattern_shards(
    out_dir: Path, docs: dict[str, int], num_words: int = 40, seed: int = 0, tokens_per_shard: int = 3000
) -> None:
    """Documents that repeat one of five 6-word cycles from a random phase, each ending in EOS.

    Context-free, every word is about equally likely (high unigram entropy); given the previous word, the
    next one is nearly certain, so a model that learns anything beats the unigram loss by far.
    """
    rng = np.random.default_rng(seed)
    cycles = [rng.choice(np.arange(len(SPECIALS), len(SPECIALS) + num_words), size=6, replace=False) for _ in range(5)]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in docs.items():
        writer = ShardWriter(out_dir, split, np.uint16, tokens_per_shard)
        for _ in range(count):
            cycle = np.roll(cycles[rng.integers(len(cycles))], int(rng.integers(6)))
            writer.write(np.append(np.resize(cycle, int(rng.integers(10, 40))), EOS_ID))
        files[split] = writer.close()
    write_meta(out_dir, np.uint16, len(SPECIALS) + num_words, EOS_ID, files)


def tiny_config(**optim) -> PretrainConfig:
    optim_values = dict(
        lr=1e-2, warmup_steps=5, max_steps=60, batch_size=8, eval_every=20, eval_batches=4, checkpoint_every=20
    )
    optim_values.update(optim)
    return PretrainConfig.model_validate(
        {
            "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 32},
            "optim": optim_values,
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain_data")
    write_tokenizer(root / "tokenizer", num_words=40)
    write_pattern_shards(root / "shards", {"train": 400, "val": 40})
    return {"shards": root / "shards", "tokenizer": root / "tokenizer"}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[dict, Path]:
    out_dir = tmp_path_factory.mktemp("pretrain_out")
    return pretrain(tiny_config(), data["shards"], data["tokenizer"], out_dir, seed=0, device="cpu"), out_dir


def test_pretrain_learns_the_pattern_far_below_unigram_loss(trained):
    metrics, out_dir = trained
    assert set(metrics) == METRIC_KEYS  # no mfu on CPU
    assert metrics["val_loss"] < 0.5 * metrics["unigram_val_loss"]
    assert metrics["steps"] == 60 and metrics["tokens_seen"] == 60 * 8 * 32
    assert metrics["params"] > 0 and metrics["tokens_per_s"] > 0
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 60 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40, 60]


def test_pretrain_output_loads_and_generates(trained):
    _, out_dir = trained
    assert not (out_dir / "checkpoints").exists()  # resume state removed, final model kept
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert len(tokenizer) == model.config.vocab_size and tokenizer.eos_token_id == EOS_ID
    prompt = tokenizer("w1 w2", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[0] == 1 and generated.shape[1] > prompt["input_ids"].shape[1]


def test_unigram_entropy_matches_hand_value(tmp_path):
    writer = ShardWriter(tmp_path, "val", np.uint16, 100)
    writer.write(np.array([3, 3, 4, 4, 5, 5, 5, 5]))
    write_meta(tmp_path, np.uint16, 8, EOS_ID, {"val": writer.close()})
    expected = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert unigram_entropy(TokenShards(tmp_path, "val"), chunk_tokens=3) == pytest.approx(expected)


def test_val_windows_score_every_target_once(data):
    val = TokenShards(data["shards"], "val")
    windows = consecutive_val_windows(val, seq_len=32, max_windows=10_000)
    assert all(w.shape == (33,) for w in windows)
    assert torch.equal(windows[1][:1], windows[0][-1:])  # windows overlap by exactly one token
    assert sum(w.numel() - 1 for w in windows) > len(val) - 33
    assert len(consecutive_val_windows(val, seq_len=32, max_windows=3)) == 3


def test_shards_with_a_larger_vocab_than_the_tokenizer_are_rejected(data, tmp_path):
    write_tokenizer(tmp_path / "small_tokenizer", num_words=10)
    with pytest.raises(ValueError, match="vocab_size 43 exceeds"):
        pretrain(tiny_config(max_steps=1), data["shards"], tmp_path / "small_tokenizer", tmp_path / "out", seed=0)


def run_pretrain(shard_dir: str, tokenizer_dir: str, out_dir: str, config_json: str) -> dict:
    """`pretrain` with JSON arguments, so that a `kill_and_resume` child process can call it too."""
    cfg = PretrainConfig.model_validate_json(config_json)
    return pretrain(cfg, Path(shard_dir), Path(tokenizer_dir), Path(out_dir), seed=0, device="cpu")


def test_pretrain_resumes_after_sigkill(data, tmp_path):
    """Killed past the checkpoint at step 10 and rerun into the same out dir (which holds its checkpoints by
    default), it continues from step 10 and ends where an uninterrupted run ends, its metrics history rewritten
    past the checkpoint. The flow's case, a fresh out dir on every attempt: tests/test_resume_after_kill.py."""
    cfg = tiny_config(max_steps=40, checkpoint_every=10, eval_every=10)
    arguments = {
        "shard_dir": str(data["shards"]),
        "tokenizer_dir": str(data["tokenizer"]),
        "config_json": cfg.model_dump_json(),
    }
    target = f"{__name__}:run_pretrain"
    out_dir = tmp_path / "out"

    output = run_killed(target, {**arguments, "out_dir": str(out_dir)}, out_dir / "metrics.jsonl", after_step=15)
    assert (out_dir / "checkpoints" / "latest.pt").is_file(), output

    resumed, output = run_to_end(target, {**arguments, "out_dir": str(out_dir)})
    assert "resuming from step 10 " in output
    assert resumed["resumed_from"] == 10 and resumed["steps"] == 40

    straight = run_pretrain(**arguments, out_dir=str(tmp_path / "straight"))
    assert set(straight) == METRIC_KEYS
    # Same data order and RNG after resume: the runs agree.
    assert_same_metrics(resumed, straight)
    history = read_history(out_dir / "metrics.jsonl")
    assert [record["step"] for record in history if "loss" in record] == list(range(1, 41))
    assert_same_history(history, read_history(tmp_path / "straight" / "metrics.jsonl"))
