"""sft -> train_rm -> ppo on the families users align (LLaMA, Qwen2, GPT-2, BLOOM, OPT), each with a tokenizer of
its own kind and chat template (ChatML added where it has none), multi-turn conversations, LoRA on some, and the
reward model started from the SFT model, the base model or a model dir: tiny random models, CPU, no downloads.

Per family: a "base" dir (model + tokenizer as a hub checkpoint ships them), the sft stage run on it for a few
steps over multi-turn conversations (template and its tokens added, embeddings grown, RLHF prompts split off), a
few preference pairs (some multi-turn); the reward model trains a few steps, then PPO runs two steps against it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.foreign_models import FAMILIES, tiny_causal_lm
from tests.foreign_tokenizers import gpt2_style_tokenizer, llama3_style_tokenizer, qwen_style_tokenizer
from zero_chatgpt.config import DemoCorpusConfig, PpoConfig, SftConfig, SftSource, TrainRmConfig
from zero_chatgpt.data_process.conversations import prompt_messages
from zero_chatgpt.model.artifact_io import write_jsonl
from zero_chatgpt.model.ppo import ppo
from zero_chatgpt.model.ppo.stage import read_prompts
from zero_chatgpt.model.reward_model import load_reward_model, reward_pad_id, sequence_scores
from zero_chatgpt.model.sft import sft as sft_stage
from zero_chatgpt.model.train_rm import pair_batch, train_reward_model, transformer_blocks
from zero_chatgpt.stage_files import HELDOUT_PAIRS, RLHF_PROMPTS, TRAIN_PAIRS, read_pairs
from zero_chatgpt.tokenizer.chat_encoding import encode_answer, encode_prompt, end_of_turn_id

GOOD_WORDS = "river capital city blue green".split()
BAD_WORDS = "two plus four name question".split()
MAX_PROMPT_TOKENS = 24

# How each family is exercised: its tokenizer, and the reward model's and PPO's options.
SETUPS = {
    "llama": {"tokenizer": "llama3", "rm": {}, "ppo_lora": 0},
    "qwen2": {"tokenizer": "qwen", "rm": {"freeze_fraction": 0.5}, "ppo_lora": 0},
    "gpt2": {"tokenizer": "gpt2", "rm": {}, "ppo_lora": 4},
    "bloom": {"tokenizer": "gpt2", "rm": {"lora": {"rank": 4}}, "ppo_lora": 0},
    # Llama-3 style without a pad token: padding falls back to <|eot_id|>, the end-of-turn token itself.
    "opt": {"tokenizer": "llama3-no-pad", "rm": {"freeze_fraction": 0.5}, "ppo_lora": 0},
}


def make_tokenizer(kind: str):
    if kind == "llama3-no-pad":
        tokenizer = llama3_style_tokenizer()
        tokenizer.pad_token = None
        return tokenizer
    return {"llama3": llama3_style_tokenizer, "qwen": qwen_style_tokenizer, "gpt2": gpt2_style_tokenizer}[kind]()


def prompt(number: int):
    """One user turn, or (every third prompt) a conversation ending in a user turn, some with a system turn."""
    question = f"Tell me about city {number}."
    if number % 3:
        return question
    turns = [{"role": "user", "content": "Hello, how are you?"}, {"role": "assistant", "content": "I am fine."}]
    system = [{"role": "system", "content": "Answer briefly."}] if number % 2 else []
    return [*system, *turns, {"role": "user", "content": question}]


def pairs(numbers: range, seed: int = 0) -> list[dict]:
    """Chosen = 2 good words, rejected = 4 bad ones (longer: the length baseline fails)."""
    rng = random.Random(seed)
    return [
        {
            "prompt": prompt(number),
            "chosen": " ".join(rng.choices(GOOD_WORDS, k=2)),
            "rejected": " ".join(rng.choices(BAD_WORDS, k=4)),
            "source": "toy",
        }
        for number in numbers
    ]


def rm_config(**values) -> TrainRmConfig:
    optim = dict(lr=5e-3, warmup_steps=0, max_steps=16, batch_size=8, eval_every=16, checkpoint_every=100)
    return TrainRmConfig.model_validate(
        {"optim": optim, "max_seq_len": 64, "independent_judge": False, "judge_optim": optim, **values}
    )


def ppo_config(lora_rank: int) -> PpoConfig:
    return PpoConfig.model_validate(
        dict(
            rollout_batch_size=4,
            mini_batch_size=4,
            ppo_epochs=1,
            max_new_tokens=6,
            max_prompt_tokens=MAX_PROMPT_TOKENS,
            num_eval_prompts=2,
            lora={"rank": lora_rank},
            optim=dict(lr=3e-2, warmup_steps=0, max_steps=2, min_lr_ratio=1.0, weight_decay=0.0, checkpoint_every=10),
        )
    )


def make_family_dirs(root: Path, family: str) -> dict[str, Path]:
    """base (model + tokenizer as shipped), sft (the sft stage run on it for a few steps: template and any added
    tokens, grown embeddings, RLHF prompts) and prefs (train / held-out pairs) dirs."""
    tokenizer = make_tokenizer(SETUPS[family]["tokenizer"])
    base = root / "base"
    tiny_causal_lm(family, vocab_size=len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)

    conversations = root / "chat.jsonl"
    reply = {"role": "assistant", "content": "A river city, blue and green."}
    write_jsonl(conversations, [{"messages": [*prompt_messages(prompt(n)), reply]} for n in range(100, 148)])
    sft_config = SftConfig.model_validate(
        {"max_seq_len": 64, "optim": dict(lr=1e-2, warmup_steps=0, max_steps=8, batch_size=8, eval_every=8)}
    )
    source = SftSource(kind="jsonl", path=str(conversations), format="messages")
    sft = root / "sft"
    tuned = sft_stage(sft_config, [source], DemoCorpusConfig(), base, sft, seed=0, device="cpu")
    assert tuned["val_loss"] < tuned["base_val_loss"], tuned

    prefs = root / "prefs"
    prefs.mkdir()
    write_jsonl(prefs / TRAIN_PAIRS, pairs(range(24)) + pairs(range(24), seed=1))
    write_jsonl(prefs / HELDOUT_PAIRS, pairs(range(24, 32)))
    return {"base": base, "sft": sft, "prefs": prefs}


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tmp_path_factory) -> dict:
    """A family's dirs, and its reward model trained from the SFT dir."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    dirs = make_family_dirs(root, family)
    rm = root / "rm"
    metrics = train_reward_model(
        rm_config(**SETUPS[family]["rm"]), dirs["sft"], dirs["prefs"], rm, seed=0, device="cpu"
    )
    return {"family": family, **dirs, "rm": rm, "metrics": metrics}


def _losses(out_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


def test_the_reward_model_trains_and_exports_a_plain_sequence_classifier(trained):
    family, metrics, rm = trained["family"], trained["metrics"], trained["rm"]
    assert metrics["steps"] == 16 and metrics["val_pairs"] == 8 and metrics["multi_turn_pairs"] == 8 + 8 + 3
    assert metrics["length_baseline_accuracy"] < 0.5  # the rejected answers are longer
    assert 0.0 <= metrics["val_accuracy"] <= 1.0  # reported next to the baseline
    losses = _losses(rm)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses

    tokenizer = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert model.config.pad_token_id == reward_pad_id(tokenizer) != end_of_turn_id(tokenizer)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)

    start = load_reward_model(trained["sft"], reward_pad_id(tokenizer)).eval()
    before, after = transformer_blocks(start), transformer_blocks(model)
    changed = [not torch.equal(a, b) for a, b in zip(before[-1].parameters(), after[-1].parameters())]
    assert any(changed), "the top block did not train"
    if metrics["frozen_layers"]:
        assert metrics["frozen_layers"] == 1
        assert all(torch.equal(a, b) for a, b in zip(before[0].parameters(), after[0].parameters()))
        assert torch.equal(start.get_input_embeddings().weight, model.get_input_embeddings().weight)
    if SETUPS[family]["rm"].get("lora"):
        assert metrics["trainable_params"] < metrics["params"] / 2

    # A multi-turn prompt scores the same through our mask pooling and Hugging Face's pad-id pooling.
    good = encode_answer(tokenizer, prompt_messages(prompt(999)), "blue river", 64)
    bad = encode_answer(tokenizer, prompt_messages(prompt(998)), "two plus four name question", 64)
    assert good[-1] == bad[-1] == end_of_turn_id(tokenizer)
    batch = pair_batch([(good, bad)], model.config.pad_token_id)
    with torch.no_grad():
        ours = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        theirs = model(**batch).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_ppo_steps_and_exports_a_plain_causal_lm(trained, tmp_path):
    family = trained["family"]
    lora_rank = SETUPS[family]["ppo_lora"]
    metrics = ppo(ppo_config(lora_rank), trained["sft"], trained["rm"], tmp_path / "ppo", seed=0, device="cpu")
    rlhf_prompts = read_prompts(trained["sft"] / RLHF_PROMPTS)  # the prompts sft held out
    assert metrics["steps"] == 2 and metrics["train_prompts"] == len(rlhf_prompts) - 2 and metrics["eval_prompts"] == 2

    tokenizer = AutoTokenizer.from_pretrained(trained["sft"])
    lengths = [len(encode_prompt(tokenizer, prompt_messages(p), 10_000)) for p in rlhf_prompts]
    assert metrics["prompts_cut"] == sum(length > MAX_PROMPT_TOKENS for length in lengths) > 0

    actor = AutoModelForCausalLM.from_pretrained(tmp_path / "ppo").state_dict()
    sft = AutoModelForCausalLM.from_pretrained(trained["sft"]).state_dict()
    assert actor.keys() == sft.keys()  # no adapter weights: a plain causal LM
    assert any(not torch.equal(actor[key], sft[key]) for key in sft)
    if lora_rank:
        assert metrics["trainable_params"] < sum(value.numel() for value in sft.values()) / 4
    assert AutoTokenizer.from_pretrained(tmp_path / "ppo").chat_template == tokenizer.chat_template


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_reward_model_starts_from_the_base_model_or_a_model_dir(family, tmp_path):
    """gpt2: init base, whose tokenizer lacks the ChatML tokens SFT added (embeddings grow to the SFT tokenizer);
    llama: init a model dir of the same tokenizer. The frozen embeddings show where the weights came from."""
    dirs = make_family_dirs(tmp_path, family)
    init = "base" if family == "gpt2" else str(dirs["base"])
    optim = dict(lr=5e-3, warmup_steps=0, max_steps=2, batch_size=8, eval_every=2)
    cfg = rm_config(init=init, freeze_fraction=0.5, optim=optim)
    metrics = train_reward_model(
        cfg, dirs["sft"], dirs["prefs"], tmp_path / "rm", seed=0, device="cpu", base_dir=dirs["base"]
    )
    assert metrics["steps"] == 2 and metrics["init"] == init
    sft_tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.get_input_embeddings().num_embeddings == len(sft_tokenizer)
    if family == "gpt2":
        assert len(sft_tokenizer) > len(AutoTokenizer.from_pretrained(dirs["base"]))  # ChatML was added
    base = AutoModelForCausalLM.from_pretrained(dirs["base"]).get_input_embeddings().weight
    sft = AutoModelForCausalLM.from_pretrained(dirs["sft"]).get_input_embeddings().weight
    rows = base.size(0)
    assert torch.equal(model.get_input_embeddings().weight[:rows], base)
    assert not torch.equal(model.get_input_embeddings().weight[:rows], sft[:rows])


def test_a_start_model_of_another_vocabulary_or_none_is_refused(tmp_path):
    dirs = make_family_dirs(tmp_path / "llama", "llama")
    other = tmp_path / "other"
    model = tiny_causal_lm("qwen2", vocab_size=len(qwen_style_tokenizer()))
    model.save_pretrained(other)
    qwen_style_tokenizer().save_pretrained(other)
    with pytest.raises(ValueError, match=r"train_rm.init .*vocabulary .* differs from the SFT tokenizer"):
        train_reward_model(rm_config(init=str(other)), dirs["sft"], dirs["prefs"], tmp_path / "rm", 0, "cpu")
    with pytest.raises(ValueError, match="train_rm.init: base .* no base model is configured"):
        train_reward_model(rm_config(init="base"), dirs["sft"], dirs["prefs"], tmp_path / "rm", 0, "cpu")
    with pytest.raises(ValueError, match="train_rm.init .* neither sft, base nor a Hugging Face model directory"):
        train_reward_model(rm_config(init=str(tmp_path)), dirs["sft"], dirs["prefs"], tmp_path / "rm", 0, "cpu")


def test_ppo_ptx_without_token_shards_names_the_keys(tmp_path):
    dirs = make_family_dirs(tmp_path, "qwen2")
    cfg = ppo_config(0).model_copy(update={"ptx_coef": 0.5})
    with pytest.raises(ValueError, match="ppo.ptx_coef .* no shard dir .* base_model.continue_pretraining"):
        ppo(cfg, dirs["sft"], tmp_path / "rm", tmp_path / "ppo", seed=0, device="cpu", shard_dir=None)


def test_prompts_that_are_no_conversation_ending_in_a_user_turn_name_their_line(tmp_path):
    ends_with_reply = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    prompts = tmp_path / RLHF_PROMPTS
    write_jsonl(prompts, [{"prompt": prompt(3)}, {"prompt": ends_with_reply}, {"prompt": "x"}])
    with pytest.raises(ValueError, match=r"rlhf_prompts.jsonl:2: key 'prompt': .*must end with a user turn"):
        read_prompts(prompts)
    write_jsonl(prompts, [{"prompt": prompt(3)}, {"prompt": prompt(4)}])
    assert read_prompts(prompts) == [prompt(3), prompt(4)]

    pairs_file = tmp_path / TRAIN_PAIRS
    write_jsonl(pairs_file, [*pairs(range(3, 4)), {"prompt": ends_with_reply, "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match=r"train_pairs.jsonl:2: key 'prompt': .*must end with a user turn"):
        read_pairs(pairs_file)
