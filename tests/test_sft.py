"""sft: response-only masks, the template boundary, truncation, splits, resumable batches, and the stage end to end,
on the project's own tokenizer and model (foreign models and multi-turn rows: tests/test_align_sft_prefs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zero_chatgpt.config import DemoCorpusConfig, ModelConfig, SftConfig, SftSource, TrainTokenizerConfig
from zero_chatgpt.data_process.conversations import conversation
from zero_chatgpt.data_process.demo_corpus import demo_documents, demo_sft_pairs
from zero_chatgpt.model.artifact_io import read_jsonl
from zero_chatgpt.model.batching import ShuffledBatches
from zero_chatgpt.model.build import build_model
from zero_chatgpt.model.generation import response_texts, sample
from zero_chatgpt.model.losses import IGNORE_INDEX
from zero_chatgpt.model.sft import (
    collate,
    encode_rows,
    sft,
    sft_batches,
    split_sft_rows,
    supervised_token_count,
)
from zero_chatgpt.stage_files import REJECTED, RLHF_PROMPTS, SFT_TRAIN, SFT_VAL
from zero_chatgpt.tokenizer.chat import IM_END, IM_END_ID, render_chat
from zero_chatgpt.tokenizer.chat_encoding import encode_conversation, encode_prompts
from zero_chatgpt.tokenizer.toy_corpus import write_corpus_parts
from zero_chatgpt.tokenizer.train import train_tokenizer

DEMO = DemoCorpusConfig(num_entities=8, docs_per_entity=1)
SEED = 5


def chat_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """What generation feeds the model for single-turn prompts (the chat template's generation prompt)."""
    return encode_prompts(tokenizer, prompts)[0]


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory) -> Path:
    """A tokenizer trained on the small demo world and a freshly initialised tiny model, saved like pretrain."""
    root = tmp_path_factory.mktemp("sft_pretrain")
    texts = [doc["text"] for doc in demo_documents(DEMO, SEED)]
    texts += [f"{pair['prompt']}\n\n{pair['response']}" for pair in demo_sft_pairs(DEMO, SEED)]
    write_corpus_parts(texts, root / "corpus")
    out = root / "model"
    train_tokenizer(TrainTokenizerConfig(vocab_size=600, heldout_docs=0), root / "corpus", out, seed=SEED)
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(SEED)
    model = build_model(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128),
        len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(pretrain_dir):
    return AutoTokenizer.from_pretrained(pretrain_dir)


def supervised_ids(example) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


def encode(tokenizer, prompt: str, response: str, max_seq_len: int):
    """One single-turn row as the stage encodes it."""
    return encode_conversation(tokenizer, conversation(prompt, response), max_seq_len)


# ---------------------------------------------------------------------------------------------- masks


def test_loss_only_on_response_and_im_end(tokenizer):
    prompt, response = "Name the capital city of Galvador.", "Almer is the capital of Galvador."
    example = encode(tokenizer, prompt, response, max_seq_len=256)
    (prompt_ids,) = chat_prompt_ids(tokenizer, [prompt])
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert example.labels[len(prompt_ids) :] == example.input_ids[len(prompt_ids) :]
    assert example.labels[-1] == IM_END_ID
    assert tokenizer.decode(supervised_ids(example)) == response + IM_END
    # Where the template boundary does not merge, this is exactly the chat template's assistant mask.
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    template_supervised = [t for t, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m]
    assert supervised_ids(example) == template_supervised


def test_demo_rows_encode_exactly_as_before(tokenizer):
    """The demo run trains on the same ids and labels as when the stage rendered ChatML itself: the prompt with
    its generation prompt, then `response + <|im_end|>` tokenized on its own, the loss on the latter."""
    rows = demo_sft_pairs(DEMO, SEED)
    examples, dropped, _ = encode_rows(tokenizer, rows, max_seq_len=96)
    assert dropped == 0 and len(examples) == len(rows)
    for row, example in zip(rows, examples):
        text = render_chat([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(row["response"] + IM_END, add_special_tokens=False)["input_ids"]
        assert len(prompt_ids) + len(response_ids) <= 96
        assert example.input_ids == prompt_ids + response_ids
        assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids


# Since sft encodes through `tokenizer.chat_encoding.encode_conversation` (one tokenization of the whole rendered
# conversation), a reply that starts with a newline merges with the template's newline: the first reply token is
# no longer supervised and the training prompt is no longer the one generation feeds. Fixed in chat_encoding by
# tokenizing the last reply apart from its prompt when the joint tokenization does not extend the prompt's ids.
@pytest.mark.parametrize("response", ["\nThe answer is 42.", "\n\n首都是阿尔默。"])
def test_first_response_token_survives_template_boundary(tokenizer, response):
    prompt = "Where is it?"
    (prompt_ids,) = chat_prompt_ids(tokenizer, [prompt])
    example = encode(tokenizer, prompt, response, max_seq_len=256)
    first = example.labels[len(prompt_ids)]
    assert first != IGNORE_INDEX
    assert tokenizer.decode(supervised_ids(example)) == response + IM_END
    # The prompt part is token-for-token what generation feeds the model, ending in "assistant\n".
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")


def test_a_leading_space_stays_on_the_first_response_token(tokenizer):
    prompt, response = "Where is it?", " leading space"
    (prompt_ids,) = chat_prompt_ids(tokenizer, [prompt])
    example = encode(tokenizer, prompt, response, max_seq_len=256)
    assert example.labels[len(prompt_ids)] != IGNORE_INDEX
    assert tokenizer.decode(supervised_ids(example)) == response + IM_END
    assert example.input_ids[: len(prompt_ids)] == prompt_ids


def test_joint_tokenization_would_merge_the_boundary(tokenizer):
    """Guards the previous test's meaning: with this tokenizer "\\n" + "\\n..." does merge when encoded together."""
    (prompt_ids,) = chat_prompt_ids(tokenizer, ["Where is it?"])
    joint = tokenizer(tokenizer.decode(prompt_ids) + "\n\nX", add_special_tokens=False)["input_ids"]
    assert joint[: len(prompt_ids)] != prompt_ids


# ------------------------------------------------------------------------------------------ truncation


def test_truncation_keeps_prompt_end_and_response_start(tokenizer):
    long_prompt = " ".join(f"word{i}" for i in range(80))
    long_response = " ".join(f"reply{i}" for i in range(80))
    (prompt_ids,) = chat_prompt_ids(tokenizer, [long_prompt])
    assert len(prompt_ids) > 40
    # Both sides long: the reply gets half the window, the prompt keeps its end.
    example = encode(tokenizer, long_prompt, long_response, max_seq_len=40)
    assert example.truncated and len(example.input_ids) == 40
    assert len(supervised_ids(example)) == 20
    assert example.input_ids[:20] == prompt_ids[-20:]
    assert tokenizer.decode(supervised_ids(example)).startswith("reply0")
    # Zero-Chatgpt's bug cut the answer by the prompt's length; here a long prompt leaves a short answer whole.
    example = encode(tokenizer, long_prompt, "Yes.", max_seq_len=40)
    assert tokenizer.decode(supervised_ids(example)) == "Yes." + IM_END
    assert example.input_ids[: 40 - len(supervised_ids(example))] == prompt_ids[-(40 - len(supervised_ids(example))) :]
    # A short prompt keeps everything and the response takes the rest.
    (short_ids,) = chat_prompt_ids(tokenizer, ["Hi"])
    example = encode(tokenizer, "Hi", long_response, max_seq_len=40)
    assert example.input_ids[: len(short_ids)] == short_ids and len(supervised_ids(example)) == 40 - len(short_ids)
    assert not encode(tokenizer, "Hi", "Yes.", max_seq_len=40).truncated


def test_long_rows_are_truncated_with_supervised_tokens(tokenizer):
    prompt = "Tell me about the river. " * 40
    response = "It is long and wide. " * 40
    example = encode(tokenizer, prompt, response, max_seq_len=64)
    assert example.truncated and len(example.input_ids) == 64
    supervised = supervised_ids(example)
    assert len(supervised) >= 32
    assert tokenizer.decode(supervised).startswith("It is long")
    (prompt_ids,) = chat_prompt_ids(tokenizer, [prompt])
    assert example.input_ids[: 64 - len(supervised)] == prompt_ids[-(64 - len(supervised)) :]


def test_rows_without_room_for_a_response_token_are_dropped_and_counted(tokenizer):
    assert encode(tokenizer, "question", "answer", max_seq_len=1) is None
    rows = [{"id": "a", "prompt": "q", "response": "r"}, {"id": "b", "prompt": "q2", "response": "r2"}]
    examples, dropped, truncated = encode_rows(tokenizer, rows, max_seq_len=1)
    assert (examples, dropped) == ([], 2)
    examples, dropped, truncated = encode_rows(tokenizer, rows, max_seq_len=256)
    assert (len(examples), dropped, truncated) == (2, 0, 0)


# ---------------------------------------------------------------------------------------------- splits


def test_split_is_deterministic_disjoint_and_order_free():
    rows = [{"id": f"row{i}", "prompt": "p", "response": "r"} for i in range(2000)]
    first = split_sft_rows(rows, 0.5, 0.1, seed=1)
    again = split_sft_rows(list(reversed(rows)), 0.5, 0.1, seed=1)
    ids = lambda part: {row["id"] for row in part}  # noqa: E731
    for a, b in ((first.train, again.train), (first.val, again.val), (first.rlhf, again.rlhf)):
        assert ids(a) == ids(b)
    assert not ids(first.train) & ids(first.val)
    assert not ids(first.train) & ids(first.rlhf)
    assert not ids(first.val) & ids(first.rlhf)
    assert len(first.train) + len(first.val) + len(first.rlhf) == 2000
    assert 900 < len(first.rlhf) < 1100
    assert 60 < len(first.val) < 140
    other = split_sft_rows(rows, 0.5, 0.1, seed=2)
    assert ids(other.rlhf) != ids(first.rlhf)


def test_split_never_leaves_val_empty():
    rows = [{"id": f"r{i}", "prompt": "p", "response": "r"} for i in range(3)]
    splits = split_sft_rows(rows, 0.0, 0.01, seed=0)
    assert len(splits.val) == 1 and len(splits.train) == 2


# ---------------------------------------------------------------------------------------------- batches


def test_collate_pads_right_with_pad_id_and_ignored_labels(tokenizer):
    examples = [
        encode(tokenizer, "hi", "hello there", 256),
        encode(tokenizer, "a much longer question here", "ok", 256),
    ]
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    short = min(range(2), key=lambda i: len(examples[i].input_ids))
    length = len(examples[short].input_ids)
    assert (batch["input_ids"][short, length:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][short, length:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][short].sum() == length


def test_sft_batches_resume_exactly(tokenizer):
    examples = [encode(tokenizer, f"question {i}", f"answer {i}", 256) for i in range(7)]
    source = sft_batches(examples, batch_size=3, pad_id=2, seed=9)
    for _ in range(4):
        source.next_batch()
    state = json.loads(json.dumps(source.state_dict()))  # the state must survive serialisation
    expected = [source.next_batch() for _ in range(5)]
    resumed = sft_batches(examples, batch_size=3, pad_id=2, seed=123)  # the state carries the seed
    resumed.load_state_dict(state)
    for batch in expected:
        again = resumed.next_batch()
        assert torch.equal(batch["input_ids"], again["input_ids"])
        assert float(batch["loss_normaliser"]) == float(again["loss_normaliser"])
    # One epoch visits every example once, and one rank's normaliser is the batch's supervised token count.
    batch = sft_batches(examples, batch_size=7, pad_id=2, seed=9).next_batch()
    seen = {tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])}
    assert seen == {tuple(example.input_ids) for example in examples}
    assert float(batch["loss_normaliser"]) == sum(supervised_token_count(example) for example in examples)


def test_one_sampler_slices_the_same_global_batch_for_every_rank():
    """N ranks x B/N draw exactly the items of 1 rank x B, epoch after epoch, and share one state."""
    one = ShuffledBatches(list(range(10)), batch_size=6, seed=4)
    thirds = [ShuffledBatches(list(range(10)), batch_size=2, seed=4, rank=r, world_size=3) for r in range(3)]
    for _ in range(7):
        assert sum((part.next_batch() for part in thirds), []) == one.next_batch()
    assert (
        thirds[0].state_dict() == thirds[2].state_dict() == one.state_dict() == {"seed": 4, "epoch": 4, "position": 2}
    )
    with pytest.raises(ValueError, match="no items"):
        ShuffledBatches([], batch_size=1, seed=0)


# ---------------------------------------------------------------------------------------------- stage


@pytest.fixture(scope="module")
def sft_run(pretrain_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_run")
    extra = root / "extra.jsonl"
    extra.write_text(
        json.dumps({"prompt": "What colour is the sky?", "response": "Blue."})
        + "\n"
        + '{"prompt": "broken json"\n'
        + json.dumps({"prompt": "Say hi.", "response": "Hi!"})
        + "\n",
        encoding="utf-8",
    )
    cfg = SftConfig.model_validate(
        {
            "optim": {
                "lr": 3e-3,
                "warmup_steps": 5,
                "max_steps": 40,
                "batch_size": 8,
                "eval_every": 20,
                "eval_batches": 4,
                "checkpoint_every": 1000,
                "precision": "fp32",
            },
            "max_seq_len": 96,
            "rlhf_prompt_fraction": 0.4,
            "val_fraction": 0.15,
        }
    )
    out = root / "out"
    sources = [SftSource(kind="demo"), SftSource(kind="jsonl", path=str(extra))]
    metrics = sft(cfg, sources, DEMO, pretrain_dir, out, seed=SEED, device="cpu")
    return out, metrics, cfg, sources


def test_stage_metrics_and_files(sft_run):
    out, metrics, _, _ = sft_run
    for key in (
        "val_loss",
        "base_val_loss",
        "train_rows",
        "val_rows",
        "rlhf_prompts",
        "quarantined",
        "dropped_too_long",
        "steps",
        "tokens_per_s",
    ):
        assert key in metrics, key
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["val_loss"] < metrics["base_val_loss"] - 0.5
    assert metrics["quarantined"] == 1 and metrics["dropped_too_long"] == 0 and metrics["steps"] == 40
    # The fixture's 600-piece tokenizer saw the SFT text, so only rare characters fall back to bytes.
    for side in ("prompt", "response"):
        assert 0.0 <= metrics[f"{side}_byte_fallback_share"] < 0.2
    rejected = read_jsonl(out / REJECTED)
    assert len(rejected) == 1 and rejected[0]["line"] == 2 and "invalid_json" in rejected[0]["reason"]
    rlhf, val = read_jsonl(out / RLHF_PROMPTS), read_jsonl(out / SFT_VAL)
    assert len(rlhf) == metrics["rlhf_prompts"] > 0 and len(val) == metrics["val_rows"] > 0
    assert set(rlhf[0]) >= {"id", "prompt", "response"}
    # Demo rows keep their short answer for build_prefs; the jsonl rows (no answer_field) have none.
    for row in rlhf:
        assert ("answer" in row) == (row["source"] == "demo")
        if row["source"] == "demo":
            assert row["answer"] in row["response"]
    total = len(demo_sft_pairs(DEMO, SEED)) + 2
    assert metrics["train_rows"] + metrics["val_rows"] + metrics["rlhf_prompts"] == total
    assert not {r["id"] for r in rlhf} & {r["id"] for r in val}
    train = read_jsonl(out / SFT_TRAIN)
    assert len(train) == metrics["train_rows"]  # none dropped as too long here
    assert not {r["id"] for r in train} & ({r["id"] for r in rlhf} | {r["id"] for r in val})
    assert not (out / "checkpoints").exists()


def test_training_lowers_loss_and_changes_parameters(sft_run, pretrain_dir):
    out, _, _, _ = sft_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    before = AutoModelForCausalLM.from_pretrained(pretrain_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)


def test_output_loads_and_generates(sft_run):
    out, _, _, _ = sft_run
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert IM_END_ID in model.generation_config.eos_token_id
    prompts = chat_prompt_ids(tokenizer, ["Name the capital city of Galvador.", "你好"])
    rollout = sample(model, prompts, 12, eos_id=IM_END_ID, pad_id=tokenizer.pad_token_id, temperature=0.0)
    texts = response_texts(tokenizer, rollout)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)
    assert rollout.response_mask.sum() > 0
    ids = torch.tensor([prompts[0]])
    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    assert generated.shape[1] > ids.shape[1]


def test_split_files_are_reproducible(sft_run, pretrain_dir, tmp_path):
    out, _, cfg, sources = sft_run
    quick = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"max_steps": 1})})
    again = tmp_path / "again"
    sft(quick, sources, DEMO, pretrain_dir, again, seed=SEED, device="cpu")
    for name in (RLHF_PROMPTS, SFT_VAL, REJECTED):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
