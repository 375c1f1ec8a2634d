"""sft and build_prefs on a foreign causal LM with its own tokenizer and chat template, on multi-turn rows.

Tiny random-weight LLaMA (with a Llama-3-style template) and GPT-2 (no template: ChatML is added) stand in for the
models users align; the rows are made-up conversations in the `messages` format and HH transcripts. No downloads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.foreign_models import tiny_causal_lm
from tests.foreign_tokenizers import gpt2_style_tokenizer, llama3_style_tokenizer
from zero_chatgpt.config import (
    BuildPrefsConfig,
    DemoCorpusConfig,
    MinedNegativesConfig,
    PrefSource,
    SftConfig,
    SftSource,
)
from zero_chatgpt.data_process.conversations import prompt_key, prompt_messages
from zero_chatgpt.model.artifact_io import read_jsonl, write_jsonl
from zero_chatgpt.model.build_prefs import SAMPLED_SOURCE, build_prefs, prompt_ids
from zero_chatgpt.model.generation import response_texts, sample
from zero_chatgpt.model.preference_pairs import MISMATCHED_SOURCE, normalise_prompt
from zero_chatgpt.model.sft import sft
from zero_chatgpt.stage_files import HELDOUT_PAIRS, RLHF_PROMPTS, SFT_TRAIN, TRAIN_PAIRS
from zero_chatgpt.tokenizer.chat_encoding import encode_prompt, end_of_turn_id

DEMO = DemoCorpusConfig(num_entities=8, docs_per_entity=1)  # unused by file sources, required by the readers
SEED = 11
PLACES = ["Eldonia", "Varn", "Brenmark", "Corvel", "Aldoria", "Fenwick", "Dunhaven", "Elsmere"]
CITIES = ["Varn", "Pell", "Talmer", "Orvane", "Neran", "Almer", "Kest", "Rook"]
COLOURS = ["blue", "red", "green"]


def chat_rows(count: int = 60) -> list[dict]:
    """Made-up conversations of one or two exchanges, some with a system turn, some in ShareGPT's shape."""
    rng = random.Random(SEED)
    rows = []
    for index in range(count):
        place, city = PLACES[index % len(PLACES)], CITIES[(index * 3) % len(CITIES)]
        messages = [
            {"role": "user", "content": f"What is the capital of {place}?"},
            {"role": "assistant", "content": f"The capital of {place} is {city}."},
        ]
        if index % 3:
            colour = rng.choice(COLOURS)
            messages += [
                {"role": "user", "content": "Name a colour, please."},
                {"role": "assistant", "content": f"{colour.capitalize()}, thank you. {colour} is a colour."},
            ]
        if index % 4 == 0:
            messages.insert(0, {"role": "system", "content": "Answer briefly."})
        if index % 5 == 0:  # ShareGPT: from/value
            messages = [
                {"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                for m in messages
            ]
        rows.append({"id": f"conv{index}", "messages": messages})
    return rows


@pytest.fixture(scope="module")
def chat_source(tmp_path_factory) -> SftSource:
    path = tmp_path_factory.mktemp("chat_rows") / "chats.jsonl"
    write_jsonl(path, chat_rows())
    return SftSource(kind="jsonl", path=str(path), format="messages", id_field="id")


def save_model(root: Path, family: str, tokenizer) -> Path:
    """A tiny random `family` model sized to `tokenizer`, saved with it like a base model directory."""
    model = tiny_causal_lm(family, vocab_size=len(tokenizer), seed=SEED)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("llama") / "base", "llama", llama3_style_tokenizer())


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("gpt2") / "base", "gpt2", gpt2_style_tokenizer())


def sft_config(max_steps: int = 40, **changes) -> SftConfig:
    return SftConfig.model_validate(
        {
            "optim": {
                "lr": 3e-3,
                "warmup_steps": 4,
                "max_steps": max_steps,
                "batch_size": 8,
                "eval_every": max_steps,
                "eval_batches": 2,
                "checkpoint_every": 1000,
                "precision": "fp32",
            },
            "max_seq_len": 96,
            "rlhf_prompt_fraction": 0.3,
            "val_fraction": 0.2,
            **changes,
        }
    )


def run_sft(cfg: SftConfig, source: SftSource, base: Path, out: Path) -> dict:
    return sft(cfg, [source], DEMO, base, out, seed=SEED, device="cpu")


@pytest.fixture(scope="module")
def llama_sft(llama_dir, chat_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_sft") / "out"
    return out, run_sft(sft_config(), chat_source, llama_dir, out)


@pytest.fixture(scope="module")
def gpt2_sft(gpt2_dir, chat_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt2_sft") / "out"
    return out, run_sft(sft_config(), chat_source, gpt2_dir, out)


def changed_share(before: dict, after: dict) -> float:
    """Share of the parameters of the same name and shape that training changed."""
    same = [name for name in before if name in after and before[name].shape == after[name].shape]
    return sum(not torch.equal(before[name], after[name]) for name in same) / len(same)


def check_exported(out: Path, end_of_turn: str) -> None:
    """The export loads as a plain causal LM with a tokenizer carrying its template, and chats."""
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    stop = tokenizer.convert_tokens_to_ids(end_of_turn)
    assert end_of_turn_id(tokenizer) == stop and stop in model.generation_config.eos_token_id
    messages = [{"role": "user", "content": "What is the capital of Varn?"}]
    ids = encode_prompt(tokenizer, messages, 64)
    rollout = sample(model, [ids], 6, eos_id=stop, pad_id=tokenizer.pad_token_id, temperature=0.0)
    assert isinstance(response_texts(tokenizer, rollout)[0], str)


def test_sft_on_a_llama_with_its_own_template_learns_multi_turn_rows(llama_sft, llama_dir):
    out, metrics = llama_sft
    assert metrics["chat_template"] == "tokenizer" and metrics["added_tokens"] == []
    assert metrics["val_loss"] < metrics["base_val_loss"] - 0.5
    assert metrics["quarantined"] == 0 and metrics["dropped_too_long"] == 0
    # A byte-level BPE has no byte-fallback pieces: nothing to report rather than a misleading 0.
    assert metrics["prompt_byte_fallback_share"] is None and metrics["response_byte_fallback_share"] is None
    assert json.loads(json.dumps(metrics)) == metrics
    before = AutoModelForCausalLM.from_pretrained(llama_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert changed_share(before, after) > 0.9
    check_exported(out, "<|eot_id|>")
    # Multi-turn prompts round-trip through the split files as message lists.
    rows = read_jsonl(out / RLHF_PROMPTS) + read_jsonl(out / SFT_TRAIN)
    assert any(isinstance(row["prompt"], list) for row in rows)
    assert all(prompt_messages(row["prompt"])[-1]["role"] == "user" for row in rows)


def test_sft_on_a_gpt2_without_template_adds_chatml(gpt2_sft, gpt2_dir):
    out, metrics = gpt2_sft
    base_tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    assert not base_tokenizer.chat_template
    assert metrics["chat_template"] == "chatml-added"
    assert metrics["added_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert metrics["val_loss"] < metrics["base_val_loss"] - 0.5
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tokenizer) == len(base_tokenizer) + 2
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == model.config.vocab_size
    before = AutoModelForCausalLM.from_pretrained(gpt2_dir).state_dict()
    assert changed_share(before, model.state_dict()) > 0.9
    check_exported(out, "<|im_end|>")


def test_train_on_last_supervises_fewer_tokens(llama_sft, llama_dir, chat_source, tmp_path):
    _, all_turns = llama_sft
    last = run_sft(sft_config(max_steps=1, train_on="last"), chat_source, llama_dir, tmp_path / "last")
    assert last["train_rows"] == all_turns["train_rows"]
    assert 0 < last["supervised_tokens"] < all_turns["supervised_tokens"]


def test_lora_sft_exports_merged_plain_weights(llama_dir, chat_source, tmp_path):
    out = tmp_path / "lora"
    cfg = sft_config(max_steps=30, lora={"rank": 4})
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 1e-2})})
    metrics = run_sft(cfg, chat_source, llama_dir, out)
    assert metrics["lora_rank"] == 4 and 0 < metrics["trainable_params"] < metrics["params"] / 4
    assert metrics["val_loss"] < metrics["base_val_loss"]
    weights = load_file(out / "model.safetensors")
    assert not [name for name in weights if "lora" in name or "base_model" in name]
    assert not (out / "adapter_config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(llama_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert set(before) == set(after)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    # LoRA moves the blocks' linear layers only: embeddings and norms stay as they were.
    assert changed and all("proj" in name for name in changed), changed
    check_exported(out, "<|eot_id|>")


def test_lora_sft_trains_the_embeddings_of_the_chat_tokens_it_added(gpt2_dir, chat_source, tmp_path):
    out = tmp_path / "lora-gpt2"
    cfg = sft_config(max_steps=10, lora={"rank": 4})
    run_sft(cfg, chat_source, gpt2_dir, out)
    base_vocab = AutoModelForCausalLM.from_pretrained(gpt2_dir).get_input_embeddings().weight
    tuned = AutoModelForCausalLM.from_pretrained(out).get_input_embeddings().weight
    tokenizer = AutoTokenizer.from_pretrained(out)
    added = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert min(added) >= base_vocab.shape[0]
    assert torch.equal(tuned[: base_vocab.shape[0]], base_vocab)  # the base's own rows stay frozen
    fresh = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    fresh.resize_token_embeddings(len(tokenizer))
    # Whatever the resize initialised them to, training moved them.
    assert not torch.allclose(tuned[added], fresh.get_input_embeddings().weight[added])


# ---------------------------------------------------------------------------------------------- build_prefs


def hh(*turns: str) -> str:
    """An HH-RLHF transcript of alternating Human / Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {turn}" for i, turn in enumerate(turns))


def hh_rows() -> list[dict]:
    rows = []
    for index, (place, city) in enumerate(zip(PLACES, CITIES)):
        if index % 2:  # two exchanges: the prompt is a conversation
            shared = ("Hello, can you help me?", "Yes, of course.", f"What is the capital of {place}?")
        else:
            shared = (f"What is the capital of {place}?",)
        rows.append({"chosen": hh(*shared, f"It is {city}."), "rejected": hh(*shared, "I do not know.")})
    return rows


@pytest.fixture(scope="module")
def hh_source(tmp_path_factory) -> PrefSource:
    path = tmp_path_factory.mktemp("hh") / "hh.jsonl"
    write_jsonl(path, hh_rows())
    return PrefSource(kind="jsonl", path=str(path), format="hh")


def prefs_config(**changes) -> BuildPrefsConfig:
    values = {"max_new_tokens": 8, "batch_size": 8, "samples_per_prompt": 1, "val_fraction": 0.25, **changes}
    return BuildPrefsConfig.model_validate(values)


def test_pairs_from_hh_rows_alone_without_sampling(hh_source, tmp_path):
    # No sft artifact at all: with samples_per_prompt 0 nothing is read from it and no model is loaded.
    empty = tmp_path / "no_sft"
    empty.mkdir()
    negatives = MinedNegativesConfig(mismatched_per_prompt=1)
    cfg = prefs_config(samples_per_prompt=0, negatives=negatives)
    metrics = build_prefs(cfg, [hh_source], DEMO, empty, tmp_path / "out", seed=SEED, device="cpu")
    assert metrics["prompts"] == metrics["sampled_pairs"] == metrics["generated_tokens"] == 0
    assert metrics["user_pairs"] == metrics["pairs"] == len(hh_rows()) and metrics["quarantined"] == 0
    train = read_jsonl(tmp_path / "out" / TRAIN_PAIRS)
    heldout = read_jsonl(tmp_path / "out" / HELDOUT_PAIRS)
    real = [pair for pair in train if pair["source"] != MISMATCHED_SOURCE] + heldout
    assert all(pair["source"] == hh_source.path for pair in real)
    multi = [pair for pair in real if isinstance(pair["prompt"], list)]
    assert len(multi) == len(hh_rows()) // 2
    for pair in multi:
        assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]
        assert pair["chosen"].startswith("It is ") and pair["rejected"] == "I do not know."
    assert all(isinstance(pair["prompt"], str) for pair in real if pair not in multi)
    # The held-out side shares no prompt with the training side; mined pairs keep their prompt's shape.
    assert not {normalise_prompt(p["prompt"]) for p in train} & {normalise_prompt(p["prompt"]) for p in heldout}
    mined = [pair for pair in train if pair["source"] == MISMATCHED_SOURCE]
    assert len(mined) == metrics["mismatched_pairs"] > 0
    assert any(isinstance(pair["prompt"], list) for pair in mined)


def test_no_sampling_and_no_preference_sources_is_an_error_naming_the_keys(tmp_path):
    with pytest.raises(ValueError, match=r"samples_per_prompt.*pref_sources"):
        build_prefs(prefs_config(samples_per_prompt=0), [], DEMO, tmp_path, tmp_path / "out", seed=SEED)


def test_sampling_multi_turn_prompts_on_a_foreign_tokenizer_cuts_too_long_ones(llama_dir, tmp_path):
    sft_dir = tmp_path / "sft"
    sft_dir.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (sft_dir / name).write_bytes((llama_dir / name).read_bytes())
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(sft_dir)
    long_question = " ".join(["Can you help me with a question about the river by the city?"] * 30)
    rows = [
        {
            "id": f"p{index}",
            "prompt": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello, how are you today?"},
                {"role": "assistant", "content": "I am fine, thank you."},
                {"role": "user", "content": f"What is the capital of {place}?"},
            ]
            if index % 2
            else f"What is the capital of {place}?",
            "response": f"It is {CITIES[index]}.",
            "source": "chats.jsonl",
        }
        for index, place in enumerate(PLACES)
    ]
    rows.append({"id": "long", "prompt": long_question, "response": "Yes.", "source": "chats.jsonl"})
    write_jsonl(sft_dir / RLHF_PROMPTS, rows)

    cfg = prefs_config(samples_per_prompt=2)
    metrics = build_prefs(cfg, [], DEMO, sft_dir, tmp_path / "out", seed=SEED, device="cpu")
    assert metrics["prompts"] == len(rows) and metrics["prompts_cut"] == 1
    assert metrics["generated_tokens"] > 0
    pairs = read_jsonl(tmp_path / "out" / TRAIN_PAIRS) + read_jsonl(tmp_path / "out" / HELDOUT_PAIRS)
    assert pairs and all(pair["source"] == SAMPLED_SOURCE for pair in pairs)
    by_id = {row["id"]: row for row in rows}
    for pair in pairs:
        assert pair["prompt"] == by_id[pair["id"]]["prompt"]
        assert "<|eot_id|>" not in pair["rejected"] and "<|start_header_id|>" not in pair["rejected"]
    assert any(isinstance(pair["prompt"], list) for pair in pairs)

    # What was sampled from: the rendered conversation with the generation prompt, the long one cut to its end.
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    room = 128 - cfg.max_new_tokens  # the tiny model's context
    encoded, cut = prompt_ids(tokenizer, [row["prompt"] for row in rows] * 2, room)
    assert cut == 1 and len(encoded) == 2 * len(rows)
    full = encode_prompt(tokenizer, prompt_messages(long_question), 10_000)
    assert len(full) > room and encoded[len(rows) - 1] == full[-room:]
    assert encoded[1] == encode_prompt(tokenizer, rows[1]["prompt"], room)
    rendered = tokenizer.decode(encoded[1])
    assert rendered.startswith("<|begin_of_text|>") and "I am fine, thank you.<|eot_id|>" in rendered
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_sft_then_build_prefs_on_a_gpt2_with_added_chatml(gpt2_sft, tmp_path):
    """The sft artifact of a foreign model (multi-turn split files, tokenizer with its added template) is what
    build_prefs samples from."""
    out, _ = gpt2_sft
    metrics = build_prefs(prefs_config(), [], DEMO, out, tmp_path / "prefs", seed=SEED, device="cpu")
    prompts = read_jsonl(out / RLHF_PROMPTS)
    assert metrics["prompts"] == len(prompts) and metrics["prompts_cut"] == 0
    assert metrics["sampled_pairs"] > 0
    pairs = read_jsonl(tmp_path / "prefs" / TRAIN_PAIRS) + read_jsonl(tmp_path / "prefs" / HELDOUT_PAIRS)
    assert {prompt_key(pair["prompt"]) for pair in pairs} <= {prompt_key(row["prompt"]) for row in prompts}
    assert all("<|im_end|>" not in pair["rejected"] for pair in pairs)
