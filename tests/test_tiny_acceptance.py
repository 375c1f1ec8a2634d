"""The real `tiny` preset, end to end on the demo corpus: every model learns what the issues promise.

This is the one test that trains at full tiny size (several minutes on 2 cores); the caching tests in
test_pipeline.py use shortened budgets instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from zero_chatgpt.artifacts import read_manifest
from zero_chatgpt.cli import main
from zero_chatgpt.config import load_config, route_stages

# The stages the tiny preset runs: from scratch, so no base_model stage.
PIPELINE_STAGES = route_stages(load_config("tiny"))

# The first test pays for the whole tiny run (about 11 minutes on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400), pytest.mark.usefixtures("prefect_api")]

# Only bars that hold at each of seeds 1234, 7 and 99 (`python bench/tiny_seeds.py`; floors are the lowest of the
# three, rounded down), so none rests on one seed. The README's table gives mean and range, and names the bars
# that hold at some seeds only (PPO raising the held-out reward, the independent judge preferring PPO).
RM_ACCURACY_FLOOR = 0.80  # measured 0.82, 0.93, 0.83
WIN_RATE_FLOOR = 0.45  # win_rate_vs_sft measured 0.48, 0.48, 0.55


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-acceptance")
    started = time.perf_counter()
    assert main(["run", "--preset", "tiny", "--root", str(root)]) == 0
    seconds = time.perf_counter() - started
    latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
    metrics = {stage: read_manifest(entry["path"])["metrics"] for stage, entry in latest.items()}
    print(
        f"tiny pipeline: {seconds:.0f} s; per stage: "
        + ", ".join(f"{stage} {entry['seconds']:.0f}s" for stage, entry in latest.items())
    )
    return root, latest, metrics, seconds


def test_every_stage_ran(tiny_run):
    _, latest, _, _ = tiny_run
    assert list(latest) == list(PIPELINE_STAGES)
    assert {entry["status"] for entry in latest.values()} == {"ran"}


def test_pretraining_beats_the_unigram_model_by_30_percent(tiny_run):
    pretrain = tiny_run[2]["pretrain"]
    assert pretrain["val_loss"] <= 0.7 * pretrain["unigram_val_loss"], pretrain


def test_sft_improves_on_the_pretrained_model(tiny_run):
    sft = tiny_run[2]["sft"]
    assert sft["val_loss"] < sft["base_val_loss"], sft
    # The demo corpus uses the question words of the SFT prompts, so the tokenizer has pieces for them.
    assert sft["prompt_byte_fallback_share"] < 0.01 and sft["response_byte_fallback_share"] < 0.01, sft


def test_reward_model_is_accurate_and_not_a_length_shortcut(tiny_run):
    rm = tiny_run[2]["train_rm"]
    # Held-out pairs share neither a prompt nor a reference answer with training pairs (no paraphrase leakage),
    # and the SFT model's rejected answers are fluent and wrong only in content (another place, fact or year).
    assert rm["val_accuracy"] >= RM_ACCURACY_FLOOR, rm
    prefs = tiny_run[2]["build_prefs"]  # the negatives that make it reachable are mined there
    assert prefs["sft_references"] > 0 and prefs["same_subject_pairs"] > 0, prefs
    assert rm["val_accuracy"] > rm["length_baseline_accuracy"] + 0.15, rm


def test_ppo_stays_within_the_kl_bound(tiny_run):
    ppo = tiny_run[2]["ppo"]
    assert ppo["kl"] <= ppo["kl_bound"], ppo


def test_every_model_loads_with_plain_transformers_and_generates(tiny_run):
    latest = tiny_run[1]
    for stage in ("pretrain", "sft", "ppo"):
        path = latest[stage]["path"]
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tokenizer("The capital of", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
    reward = AutoModelForSequenceClassification.from_pretrained(latest["train_rm"]["path"])
    assert reward.config.num_labels == 1


def test_chat_with_the_ppo_model_answers_and_exits_zero(tiny_run):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zero_chatgpt.cli",
            "chat",
            "--model",
            tiny_run[1]["ppo"]["path"],
            "--max-new-tokens",
            "24",
        ],
        input="What is the capital of Eldonia?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_ppo_answers_hold_up_against_sft(tiny_run):
    """PPO does not beat SFT at every seed (README); by the pipeline's judge it must not fall clearly behind."""
    evaluation = tiny_run[2]["evaluate"]
    assert evaluation["win_rate_vs_sft"] >= WIN_RATE_FLOOR, evaluation["win_rate_vs_sft"]
    assert 0.0 <= evaluation["win_rate_vs_sft_independent"] <= 1.0, evaluation


def test_pretrained_model_recalls_the_demo_worlds_capitals(tiny_run):
    """Knowledge comes from pretraining: completing "The capital of X is" names X's capital for most places."""
    import torch

    from zero_chatgpt.config import load_config
    from zero_chatgpt.data_process.demo_corpus import build_demo_world

    cfg = load_config("tiny")
    world = build_demo_world(cfg.data.demo, cfg.run.seed)
    path = tiny_run[1]["pretrain"]["path"]
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    recalled = 0
    for entity in world.entities:
        ids = tokenizer(f"The capital of {entity.name['en']} is", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=6, do_sample=False)
        recalled += entity.fact("capital", "en") in tokenizer.decode(out[0, ids.shape[1] :])
    # The model saw each capital stated ~150 times; chance is about 1 in 24.
    assert recalled >= len(world.entities) // 2, (recalled, len(world.entities))


def test_sft_and_ppo_answer_held_out_fact_questions_no_worse_than_the_pretrained_model(tiny_run):
    """The held-out facts are stated only in the pretraining documents: SFT and PPO must surface them in chat."""
    exact_match = tiny_run[2]["evaluate"]["exact_match"]
    # Strictly better at seeds 1234 and 7; at seed 99 all three models answered 0.29 of the questions.
    assert exact_match["sft"] >= exact_match["pretrain"], exact_match
    assert exact_match["ppo"] >= exact_match["pretrain"], exact_match


def test_report_json_has_the_evaluation_metrics(tiny_run):
    report = json.loads((Path(tiny_run[1]["report"]["path"]) / "report.json").read_text(encoding="utf-8"))
    evaluation = report["stages"]["evaluate"]["metrics"]
    assert {"win_rate_vs_sft", "win_rate_vs_sft_independent"} <= set(evaluation)
    assert set(tiny_run[2]["evaluate"]["exact_match"]) >= {"pretrain", "sft", "ppo"}


def test_second_run_is_cached_and_takes_under_a_quarter_of_the_first(tiny_run):
    root, first, _, first_seconds = tiny_run
    started = time.perf_counter()
    assert main(["run", "--preset", "tiny", "--root", str(root)]) == 0
    seconds = time.perf_counter() - started
    latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
    assert {entry["status"] for entry in latest.values()} == {"cached"}
    assert seconds < first_seconds / 4, (seconds, first_seconds)
