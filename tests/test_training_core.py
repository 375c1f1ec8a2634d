"""The shared training core: schedule, parameter groups, the loop, accumulation, eval and exact resume."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from zero_chatgpt.config import ModelConfig, OptimConfig
from zero_chatgpt.model.build import build_model, derived_intermediate_size, llama_config
from zero_chatgpt.model.losses import IGNORE_INDEX, causal_lm_window_loss, token_cross_entropy
from zero_chatgpt.model.training import lr_multiplier, make_optimizer, make_scheduler, parameter_groups, train

TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=16)
VOCAB = 24


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY, VOCAB)


def pattern_batches(batch_size: int = 4, seq_len: int = 16, seed: int = 0):
    """An endless iterator of (batch_size, seq_len + 1) windows of a cyclic 0..7 pattern at random offsets."""
    generator = torch.Generator().manual_seed(seed)
    cycle = torch.arange(8) + 3
    while True:
        offsets = torch.randint(0, 8, (batch_size,), generator=generator)
        positions = offsets[:, None] + torch.arange(seq_len + 1)[None, :]
        yield cycle[positions % 8]


def optim_config(**overrides) -> OptimConfig:
    values = dict(lr=1e-2, warmup_steps=2, max_steps=20, batch_size=4, eval_every=10, checkpoint_every=10)
    values.update(overrides)
    return OptimConfig(**values)


# ---------------------------------------------------------------------------------------------- build


def test_derived_intermediate_size_is_a_multiple_of_32_near_8_thirds_hidden():
    assert derived_intermediate_size(128) == 352
    assert derived_intermediate_size(256) == 672
    assert derived_intermediate_size(768) == 2048
    for hidden in (64, 96, 192, 320, 512):
        size = derived_intermediate_size(hidden)
        assert size % 32 == 0 and abs(size - 8 * hidden / 3) <= 16


def test_llama_config_defaults_and_checks():
    config = llama_config(ModelConfig(hidden_size=64, num_heads=4, rope_theta=500.0), vocab_size=100, eos_token_id=2)
    assert config.num_key_value_heads == 4
    assert config.intermediate_size == derived_intermediate_size(64)
    assert config.rope_parameters["rope_theta"] == 500.0
    assert config.tie_word_embeddings and config.eos_token_id == 2
    assert llama_config(ModelConfig(hidden_size=64, num_heads=4, num_kv_heads=2), 100).num_key_value_heads == 2
    with pytest.raises(ValueError, match="num_kv_heads"):
        llama_config(ModelConfig(hidden_size=64, num_heads=4, num_kv_heads=3), 100)
    with pytest.raises(ValueError, match="hidden_size"):
        llama_config(ModelConfig(hidden_size=66, num_heads=4), 100)


# ------------------------------------------------------------------------------------------- the maths


def test_schedule_warmup_cosine_and_floor_against_hand_values():
    # warmup 10, decay over steps 10..110, floor 0.1
    expected = {
        0: 0.1,
        4: 0.5,
        9: 1.0,
        10: 1.0,
        35: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)),
        60: 0.55,
        85: 0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)),
        110: 0.1,
        500: 0.1,
    }
    for step, value in expected.items():
        assert lr_multiplier(step, 10, 110, 0.1) == pytest.approx(value), step
    assert lr_multiplier(0, 0, 10, 0.0) == pytest.approx(1.0)  # no warmup: start at the peak


def test_scheduler_drives_the_optimizer_lr():
    optim = optim_config(lr=2e-3, warmup_steps=4, max_steps=12, min_lr_ratio=0.25)
    model = tiny_model()
    optimizer = make_optimizer(model, optim, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, optim)
    seen = []
    for _ in range(14):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3])
    assert seen[8] == pytest.approx(2e-3 * (0.25 + 0.75 * 0.5))  # half way through the decay
    assert seen[12:] == pytest.approx([5e-4, 5e-4])  # the floor, and it stays there


def test_several_optimizer_steps_per_training_step_share_its_lr():
    """PPO steps the optimizer once per mini-batch: 3 per PPO step here, all at that step's lr."""
    optim = optim_config(lr=2e-3, warmup_steps=4, max_steps=12, min_lr_ratio=0.25)
    optimizer = make_optimizer(tiny_model(), optim, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, optim, optimizer_steps_per_step=3)
    seen = []
    for _ in range(3 * 5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr for lr in (5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3) for _ in range(3)])


def test_parameter_groups_decay_matrices_only():
    model = tiny_model()
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    named = dict(model.named_parameters())
    assert any(p is named["model.embed_tokens.weight"] for p in decay["params"])
    assert any(p is named["model.norm.weight"] for p in no_decay["params"])
    # every parameter in exactly one group, the tied embedding once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    for param in model.parameters():  # LoRA-like: only matrices train, so there is no empty group
        param.requires_grad_(param.dim() >= 2)
    assert [group["weight_decay"] for group in parameter_groups(model, 0.1)] == [0.1]


def test_token_cross_entropy_skips_ignored_targets():
    logits = torch.zeros(1, 3, 4)
    targets = torch.tensor([[1, IGNORE_INDEX, 2]])
    loss, tokens = token_cross_entropy(logits, targets)
    assert int(tokens) == 2 and float(loss) == pytest.approx(math.log(4))


# ------------------------------------------------------------------------------------------- the loop


def test_training_lowers_loss_and_changes_parameters(tmp_path):
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, pattern_batches(), causal_lm_window_loss, optim_config(), metrics_path=tmp_path / "m.jsonl")
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in steps)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert result.tokens_seen == 20 * 4 * 16 and result.resumed_from == 0


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    data = next(pattern_batches(batch_size=8))
    optim = optim_config(max_steps=1, warmup_steps=0)
    big, accumulated = tiny_model(), tiny_model()
    train(
        big,
        iter([data]),
        causal_lm_window_loss,
        optim.model_copy(update={"batch_size": 8}),
        metrics_path=tmp_path / "big.jsonl",
    )
    train(
        accumulated,
        iter([data[:4], data[4:]]),
        causal_lm_window_loss,
        optim.model_copy(update={"grad_accum": 2}),
        metrics_path=tmp_path / "acc.jsonl",
    )
    big_record = json.loads((tmp_path / "big.jsonl").read_text().splitlines()[0])
    acc_record = json.loads((tmp_path / "acc.jsonl").read_text().splitlines()[0])
    # Adam is blind to a gradient's scale, so check the pre-clipping gradient norm and the loss directly.
    assert acc_record["grad_norm"] == pytest.approx(big_record["grad_norm"], rel=1e-5)
    assert acc_record["loss"] == pytest.approx(big_record["loss"], rel=1e-6)
    assert acc_record["tokens_seen"] == big_record["tokens_seen"] == 8 * 16
    for a, b in zip(big.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_eval_runs_periodically_in_eval_mode_without_grad():
    calls = []

    def eval_fn(model):
        calls.append((model.training, torch.is_grad_enabled()))
        return {"score": torch.tensor(1.5)}

    model = tiny_model()
    result = train(
        model, pattern_batches(), causal_lm_window_loss, optim_config(max_steps=25, eval_every=10), eval_fn=eval_fn
    )
    assert calls == [(False, False)] * 3  # steps 10, 20 and the last one
    assert result.last_eval == {"score": 1.5} and model.training


def test_non_finite_loss_stops_with_the_step():
    def nan_loss(model, batch):
        return model(input_ids=batch[:, :-1]).logits.sum() * float("nan"), {}

    with pytest.raises(FloatingPointError, match="step 1"):
        train(tiny_model(), pattern_batches(), nan_loss, optim_config())


def test_resume_continues_exactly_where_the_checkpoint_left_off(tmp_path, caplog):
    optim = optim_config(max_steps=12, checkpoint_every=5)
    straight = tiny_model()
    train(
        straight,
        pattern_batches(),
        causal_lm_window_loss,
        optim,
        checkpoint_dir=tmp_path / "ckpt",
        metrics_path=tmp_path / "a.jsonl",
    )
    # The dir now holds the step-10 checkpoint; a new run from a different init must pick it up, replay the
    # plain iterator to the saved data position, and land on the same weights as the uninterrupted run.
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(1, 13)))
    resumed = tiny_model(seed=1)
    with caplog.at_level(logging.INFO, logger="zero_chatgpt.model.training"):
        result = train(
            resumed,
            pattern_batches(),
            causal_lm_window_loss,
            optim,
            checkpoint_dir=tmp_path / "ckpt",
            metrics_path=tmp_path / "b.jsonl",
        )
    assert "resuming from step 10" in caplog.text and result.resumed_from == 10
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # records past the checkpoint were replaced, not duplicated

    # A stage rebuilt after a crash writes into a new dir: the history kept with the checkpoint comes along.
    train(
        tiny_model(seed=2),
        pattern_batches(),
        causal_lm_window_loss,
        optim,
        "cpu",
        tmp_path / "ckpt",
        None,
        tmp_path / "c.jsonl",
    )
    straight_records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    rebuilt = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rebuilt] == list(range(1, 13))
    assert [r["loss"] for r in rebuilt[:10]] == [r["loss"] for r in straight_records[:10]]


def test_plain_iterables_and_callables_are_resumable_by_replay():
    from zero_chatgpt.model.training import as_batch_source

    counter = iter(range(100))
    source = as_batch_source(lambda: next(counter))
    assert [source.next_batch() for _ in range(3)] == [0, 1, 2]
    replayed = as_batch_source([10, 11, 12, 13])
    replayed.load_state_dict({"consumed": 2})  # what a checkpoint after two batches holds
    assert replayed.next_batch() == 12 and replayed.state_dict() == {"consumed": 3}


class _Payload:
    """An object a planted checkpoint pickles: loading it would run code, so resume must refuse it."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_resume_checkpoints_load_as_data_only(tmp_path):
    from zero_chatgpt.model.checkpoint import LATEST, load_checkpoint, restore_rng_states, rng_states, save_checkpoint

    save_checkpoint(tmp_path, {"step": 3, "rng": rng_states()})
    state = load_checkpoint(tmp_path)
    restore_rng_states(state["rng"])  # RNG states round-trip as tensors and plain values
    assert state["step"] == 3
    torch.save({"step": 1, "payload": _Payload()}, tmp_path / LATEST)
    with pytest.raises(RuntimeError, match="cannot read the resume checkpoint"):
        load_checkpoint(tmp_path)
