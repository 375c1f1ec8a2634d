"""Evaluation and chat on other model families: tiny random LLaMA / Qwen2 / GPT-2 models with their own tokenizers
(Llama-3's header/eot template, Qwen's ChatML with a default system prompt, GPT-2 with no template, given ChatML by
`prepare_chat_model`), multi-turn held-out prompts, a QA source and a task file; chat and generation stop at each
template's end-of-turn token. No downloads, CPU, one thread."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.foreign_models import FAMILIES, tiny_causal_lm
from tests.foreign_tokenizers import gpt2_style_tokenizer, llama3_style_tokenizer, qwen_style_tokenizer
from zero_chatgpt.config import EvaluateConfig
from zero_chatgpt.model.base_model import prepare_chat_model
from zero_chatgpt.model.chat import ChatSession, generate_replies, load_chat_model, read_prompts
from zero_chatgpt.model.eval_tasks import (
    continuation_logprobs,
    document_start_ids,
    encode_request,
    load_task,
    task_accuracy,
)
from zero_chatgpt.model.evaluate import MODELS, chat_prompt_ids, evaluate, plain_prompt_ids
from zero_chatgpt.stage_files import SFT_VAL, independent_judge_dir
from zero_chatgpt.tokenizer.chat_encoding import end_of_turn_id, pad_id

TOKENIZERS = {"llama": llama3_style_tokenizer, "qwen2": qwen_style_tokenizer, "gpt2": gpt2_style_tokenizer}
TEMPLATE_OF = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "gpt2": "<|im_end|>"}

MULTI_TURN = [
    {"role": "user", "content": "Hello, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": "Can you help me with a question?"},
]
WITH_SYSTEM = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]
HELD_OUT = [
    {"id": "v0", "prompt": MULTI_TURN, "response": "Yes, ask away."},
    {"id": "v1", "prompt": WITH_SYSTEM, "response": "Blue."},
    {"id": "v2", "prompt": "What is the capital?", "response": "It is Varn."},
    {"id": "v3", "prompt": "Two plus two?", "response": "Four."},
]
QUESTIONS = [
    {"question": "What is the capital of Eldonia?", "answer": "Varn"},
    {"question": "Two plus two is?", "answer": "four"},
    {"question": "Name a colour.", "answer": "blue"},
]


def _perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def _save_reward_model(model_dir: Path, out: Path, tokenizer, seed: int) -> Path:
    torch.manual_seed(seed)
    reward_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    reward_model.config.pad_token_id = pad_id(tokenizer)
    reward_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_family_dirs(root: Path, family: str) -> dict[str, Path]:
    """pretrain (the base model with its own tokenizer, as the base-model route leaves it), sft (the base given a
    chat template, with multi-turn held-out prompts), ppo (sft, perturbed), rm (a sequence-classification head on
    sft, with an independent judge beside it and a manifest with train_rm's held-out figures)."""
    tokenizer = TOKENIZERS[family]()
    base = tiny_causal_lm(family, vocab_size=len(tokenizer), seed=0)
    dirs = {name: root / family / name for name in ("pretrain", "sft", "ppo", "rm")}
    base.save_pretrained(dirs["pretrain"])
    tokenizer.save_pretrained(dirs["pretrain"])

    prepare_chat_model(base, tokenizer)  # GPT-2: ChatML and its two tokens added, embeddings grown
    _perturbed(base, seed=1).save_pretrained(dirs["sft"])
    tokenizer.save_pretrained(dirs["sft"])
    (dirs["sft"] / SFT_VAL).write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT), encoding="utf-8")

    ppo = _perturbed(AutoModelForCausalLM.from_pretrained(dirs["sft"]), seed=2, scale=0.2)
    ppo.save_pretrained(dirs["ppo"])
    tokenizer.save_pretrained(dirs["ppo"])

    _save_reward_model(dirs["sft"], dirs["rm"], tokenizer, seed=3)
    _save_reward_model(dirs["sft"], independent_judge_dir(dirs["rm"]), tokenizer, seed=4)
    manifest = {"metrics": {"val_accuracy": 0.75, "length_baseline_accuracy": 0.5, "val_pairs": 8}}
    (dirs["rm"] / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return dirs


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("align")
    return {family: make_family_dirs(root, family) for family in TOKENIZERS}


@pytest.fixture(scope="module")
def task_glob(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("align_tasks")
    rows = [{"text": f"Name a colour {i}", "label": i % 2} for i in range(5)]
    (folder / "colours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    spec = {"template": "{text}: {option}", "label_words": {"0": "blue", "1": "red"}}
    (folder / "colours.json").write_text(json.dumps(spec), encoding="utf-8")
    return str(folder / "*.jsonl")


def _config(tmp_path: Path, task_glob: str, **extra) -> EvaluateConfig:
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS), encoding="utf-8")
    return EvaluateConfig.model_validate(
        {
            "max_prompts": 4,
            "max_new_tokens": 5,
            "batch_size": 3,
            "num_samples": 2,
            "sample_prompts": ["Hello, how are you?"],
            "qa_sources": [{"kind": "jsonl", "path": str(qa)}],
            "task_files": [task_glob],
            "task_models": ["pretrain", "sft"],
            **extra,
        }
    )


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


@pytest.mark.parametrize("family", list(TOKENIZERS))
def test_evaluate_runs_end_to_end_on_a_foreign_family(family, family_dirs, task_glob, tmp_path):
    dirs = family_dirs[family]
    out = tmp_path / "eval"
    metrics = evaluate(
        _config(tmp_path, task_glob),
        None,
        dirs["pretrain"],
        dirs["sft"],
        dirs["rm"],
        dirs["ppo"],
        out,
        seed=0,
        device="cpu",
    )
    assert metrics["prompts"] == 4 and metrics["multi_turn_prompts"] == 1 and metrics["questions"] == 3
    for key in ("win_rate_vs_sft", "win_rate_vs_sft_independent"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for key in ("reward", "reward_independent", "response_tokens", "distinct_1", "repeated_3gram_rate", "exact_match"):
        assert all(_finite(metrics[key][name]) for name in MODELS), (key, metrics[key])
    assert all(0 < metrics["response_tokens"][name] <= 5 for name in MODELS)
    assert metrics["kl_to_sft"]["sft"] == 0.0 and _finite(metrics["kl_to_sft"]["ppo"])
    assert metrics["reward_model_heldout"] == {
        "accuracy": 0.75,
        "length_baseline_accuracy": 0.5,
        "judge_accuracy": None,
        "pairs": 8,
    }
    # GPT-2's base tokenizer lacks the chat tokens SFT added: its base model is asked in plain text, has no KL.
    plain = family == "gpt2"
    assert metrics["pretrain_prompted_in_chat"] is not plain
    assert (metrics["kl_to_sft"]["pretrain"] is None) if plain else _finite(metrics["kl_to_sft"]["pretrain"])
    colours = metrics["tasks"]["colours"]
    assert colours["n"] == 5 and set(colours["accuracy_by_model"]) == {"pretrain", "sft"}

    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    assert MULTI_TURN in [row["prompt"] for row in judged]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(set(row["answers"]) == set(MODELS) for row in samples)
    table = (out / "samples.md").read_text()
    assert "| held-out |" in table and "| question |" in table
    assert json.loads((out / "eval.json").read_text()) == metrics


def test_a_judge_of_another_family_reads_the_answers_in_its_own_template(family_dirs, task_glob, tmp_path):
    llama, qwen = family_dirs["llama"], family_dirs["qwen2"]
    metrics = evaluate(
        _config(tmp_path, task_glob, judge_model=str(qwen["rm"]), task_files=[]),
        None,
        llama["pretrain"],
        llama["sft"],
        llama["rm"],
        llama["ppo"],
        tmp_path / "eval",
        seed=0,
        device="cpu",
    )
    assert metrics["independent_judge"] == str(qwen["rm"])
    assert all(_finite(value) for value in metrics["reward_independent"].values())
    assert metrics["reward_independent"] != metrics["reward"]


def test_prompts_use_each_tokenizers_template_and_plain_text_its_document_start(family_dirs):
    for family, dirs in family_dirs.items():
        tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
        (ids,) = chat_prompt_ids(tokenizer, [MULTI_TURN])
        text = tokenizer.decode(ids)
        assert text == tokenizer.apply_chat_template(MULTI_TURN, tokenize=False, add_generation_prompt=True), family
        assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids(TEMPLATE_OF[family])
        base = AutoTokenizer.from_pretrained(dirs["pretrain"])
        (plain,) = plain_prompt_ids(base, [MULTI_TURN], "{question}\n")
        assert plain[: len(document_start_ids(base))] == document_start_ids(base)
        assert base.decode(plain[len(document_start_ids(base)) :]).startswith("User: Hello, how are you today?")
        context, _ = encode_request(base, "Name a colour:", " blue", 64)
        assert context[0] == (base.bos_token_id if base.bos_token_id is not None else base.eos_token_id)
    # Llama-3 starts documents with its BOS, GPT-2 and Qwen after their end-of-text token.
    llama = AutoTokenizer.from_pretrained(family_dirs["llama"]["pretrain"])
    assert document_start_ids(llama) == [llama.convert_tokens_to_ids("<|begin_of_text|>")]


# ------------------------------------------------------------------------------------------------ chat


def _scripted(tokens: list[int]):
    def scripted_sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature, top_p, generator, on_tokens):
        for token in tokens:
            on_tokens(torch.tensor([token]))

    return scripted_sample


@pytest.mark.parametrize("family", list(TOKENIZERS))
def test_chat_keeps_history_in_the_families_template_and_stops_at_its_end_of_turn(family, family_dirs, monkeypatch):
    model, tokenizer = load_chat_model(family_dirs[family]["ppo"], "cpu")
    words = tokenizer("It is Varn.", add_special_tokens=False)["input_ids"]
    eot = end_of_turn_id(tokenizer)
    monkeypatch.setattr("zero_chatgpt.model.chat.sample", _scripted([*words, eot, *words]))
    session = ChatSession(model, tokenizer, max_new_tokens=4, seed=0)
    assert session.reply("What is the capital?") == "It is Varn."  # nothing after the end-of-turn token
    monkeypatch.undo()
    session.messages.append({"role": "user", "content": "And the river?"})
    prompt = tokenizer.decode(session._prompt_ids())
    assert prompt == tokenizer.apply_chat_template(session.messages, tokenize=False, add_generation_prompt=True)
    assert prompt.count(TEMPLATE_OF[family]) >= 3 and prompt.count("It is Varn.") == 1
    session.messages.pop()
    second = session.reply("And the river?")  # really generated, on top of the first exchange
    assert isinstance(second, str) and [m["role"] for m in session.messages] == ["user", "assistant"] * 2


def test_chat_stops_at_the_end_of_text_token_too(family_dirs, monkeypatch):
    model, tokenizer = load_chat_model(family_dirs["gpt2"]["sft"], "cpu")
    words = tokenizer("Blue.", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr("zero_chatgpt.model.chat.sample", _scripted([*words, tokenizer.eos_token_id, *words]))
    assert ChatSession(model, tokenizer, seed=0).reply("Name a colour.") == "Blue."


def test_a_base_model_without_chat_template_is_refused_by_chat(family_dirs):
    with pytest.raises(ValueError, match="no chat template"):
        load_chat_model(family_dirs["gpt2"]["pretrain"], "cpu")


def test_generate_takes_multi_turn_prompts_on_a_foreign_dir(family_dirs, tmp_path):
    model, tokenizer = load_chat_model(family_dirs["qwen2"]["sft"], "cpu")
    file = tmp_path / "prompts.jsonl"
    file.write_text(json.dumps({"prompt": MULTI_TURN}) + "\n" + json.dumps({"prompt": "Hi"}) + "\n")
    prompts = read_prompts(file)
    assert prompts == [MULTI_TURN, "Hi"]
    rows = generate_replies(model, tokenizer, prompts, max_new_tokens=4, batch_size=2)
    assert [row["prompt"] for row in rows] == prompts and all(isinstance(row["response"], str) for row in rows)
    assert rows == generate_replies(model, tokenizer, prompts, max_new_tokens=4, batch_size=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": MULTI_TURN[:2]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: bad `prompt` conversation"):
        read_prompts(bad)


def test_chat_command_answers_on_a_foreign_dir(family_dirs):
    done = subprocess.run(
        [sys.executable, "-m", "zero_chatgpt.cli", "chat", "--model", str(family_dirs["llama"]["sft"])]
        + ["--max-new-tokens", "4", "--seed", "1", "--device", "cpu"],
        input="Hello, how are you?\nCan you help me?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2, done.stdout


# ----------------------------------------------------------------------------- every family, one token path


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_generation_and_task_scoring_work_on_every_family(family, tmp_path):
    tokenizer = gpt2_style_tokenizer()
    model = tiny_causal_lm(family, vocab_size=len(tokenizer))
    prepare_chat_model(model, tokenizer)
    model.eval()
    rows = generate_replies(model, tokenizer, [MULTI_TURN, "Hi"], max_new_tokens=3, batch_size=2)
    assert rows == generate_replies(model, tokenizer, [MULTI_TURN, "Hi"], max_new_tokens=3, batch_size=1)
    (tmp_path / "t.json").write_text(json.dumps({"template": "{q} {option}", "label_words": {"0": "red", "1": "blue"}}))
    # Five options share each context, so the KV-cache path runs as well as the batched one.
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"q": f"colour {i}", "label": i % 2}) + "\n" for i in range(4))
    )
    (tmp_path / "m.json").write_text(
        json.dumps({"template": "{q} {option}", "choices_field": "c", "label_field": "label"})
    )
    choices = ["red", "blue", "green", "two", "four"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"q": "Name a colour", "c": choices, "label": 1}) + "\n")
    for name in ("t", "m"):
        accuracy = task_accuracy(model, tokenizer, load_task(tmp_path / f"{name}.jsonl"), "sum", batch_size=3)
        assert 0.0 <= accuracy <= 1.0
    # Both scoring paths (left-padded batches, a shared context's KV cache) agree with one plain forward per option.
    requests = [encode_request(tokenizer, "Name a colour:", f" {choice}", 64) for choice in choices]
    requests.append(encode_request(tokenizer, "Two plus", " two is four", 64))
    for (context, continuation), (total, count) in zip(requests, continuation_logprobs(model, requests, 2, 0)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context + continuation])).logits[0].float()
        expected = sum(
            float(torch.log_softmax(logits[len(context) + k - 1], -1)[token]) for k, token in enumerate(continuation)
        )
        assert count == len(continuation) and total == pytest.approx(expected, abs=1e-4), family


def test_prompts_longer_than_the_context_keep_their_end_and_are_counted():
    from tests.foreign_models import tiny_causal_lm
    from tests.foreign_tokenizers import llama3_style_tokenizer
    from zero_chatgpt.model.evaluate import generate

    tokenizer = llama3_style_tokenizer()
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))  # 128 positions
    long, short = list(range(10, 210)), [10, 11, 12]
    result = generate(model, tokenizer, [long, short], 8, eos_id=-1, temperature=0.0, top_p=1.0, seed=0, batch_size=2)
    assert result.prompts_cut == 1 and len(result.token_ids[0]) == 8
