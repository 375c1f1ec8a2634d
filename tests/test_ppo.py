"""PPO end to end on a tiny random-init model: a reward we control rises, the stage exports a loadable actor,
and a run killed mid-way resumes to the same result."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from model_fixtures import make_tokenizer_dir
from test_train_rm import make_sft_dir, rm_config, toy_prompts, write_toy_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer

import zero_chatgpt.model.ppo.stage as ppo_stage
from zero_chatgpt.config import OptimConfig, PpoConfig
from zero_chatgpt.model.ppo import ppo
from zero_chatgpt.model.ppo.rollout import RolloutSettings, ValueModel, collect_experience
from zero_chatgpt.model.ppo.update import UpdateSettings, ppo_update
from zero_chatgpt.model.reward_model import load_reward_model
from zero_chatgpt.model.train_rm import train_reward_model
from zero_chatgpt.model.training import IteratorSource, make_backend
from zero_chatgpt.tokenizer.chat import IM_END_ID, PAD_ID
from zero_chatgpt.tokenizer.chat_encoding import encode_prompt

PPO_METRIC_KEYS = {
    "reward_before",
    "reward_after",
    "kl",
    "kl_bound",
    "steps",
    "mean_reward",
    "mean_kl",
    "mean_entropy",
    "mean_response_length",
    "mean_clip_fraction",
    "mean_value_loss",
    "mean_policy_loss",
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ppo_data")
    tokenizer_dir = make_tokenizer_dir(root)
    prompts = toy_prompts(40)
    sft = make_sft_dir(root, tokenizer_dir, prompts)
    prefs = write_toy_pairs(root / "prefs", prompts)
    rm = root / "rm"
    train_reward_model(rm_config(max_steps=15, eval_every=15), sft, prefs, rm, seed=0, device="cpu")
    return {"sft": sft, "rm": rm}


def chat_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """The ids the policy continues to answer each one-turn prompt."""
    return [encode_prompt(tokenizer, [{"role": "user", "content": prompt}], 128) for prompt in prompts]


def ppo_config(**values) -> PpoConfig:
    settings = dict(
        rollout_batch_size=8,
        mini_batch_size=4,
        ppo_epochs=2,
        max_new_tokens=8,
        num_eval_prompts=8,
        optim=dict(lr=3e-3, warmup_steps=0, max_steps=4, min_lr_ratio=1.0, weight_decay=0.0, checkpoint_every=2),
    )
    settings.update(values)
    return PpoConfig.model_validate(settings)


def test_ppo_steps_raise_a_reward_we_control(dirs):
    """Reward = share of response tokens among 40 chosen ids: PPO must raise it well above its start."""
    torch.manual_seed(0)
    favoured = torch.arange(100, 140)

    def reward_fn(sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        responses, mask = sequences[:, prompt_length[0] :], attention_mask[:, prompt_length[0] :].float()
        return (torch.isin(responses, favoured).float() * mask).sum(1) / mask.sum(1)

    tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    prompts = chat_prompt_ids(tokenizer, toy_prompts(16))
    prompt_length = [max(map(len, prompts))]
    actor = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval()
    reference = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval().requires_grad_(False)
    critic = ValueModel.from_reward_model(load_reward_model(dirs["rm"])).eval()
    start = {name: p.detach().clone() for name, p in actor.named_parameters()}
    optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=30, min_lr_ratio=1.0, weight_decay=0.0)
    device = torch.device("cpu")
    update = UpdateSettings(ppo_epochs=2, mini_batch_size=8, clip_range=0.2, value_clip_range=0.2, temperature=1.0)
    steps_per_ppo_step = update.optimizer_steps(len(prompts))
    actor_backend, critic_backend = (
        make_backend(model, optim, device, optimizer_steps_per_step=steps_per_ppo_step) for model in (actor, critic)
    )
    rollout = RolloutSettings(
        max_new_tokens=6,
        temperature=1.0,
        top_p=1.0,
        eos_id=IM_END_ID,
        pad_id=PAD_ID,
        gamma=1.0,
        gae_lambda=0.95,
        reward_clip=5.0,
    )
    generator = torch.Generator().manual_seed(0)
    rewards, stats = [], {}
    for _ in range(12):
        experience, _ = collect_experience(prompts, actor, reference, critic, reward_fn, rollout, 0.01, generator)
        rewards.append(experience.scores.mean().item())
        stats = ppo_update(experience, actor_backend, critic_backend, update, device)
    assert {"policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl"} <= stats.keys()
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    changed = [name for name, p in actor.named_parameters() if not torch.equal(p, start[name])]
    assert changed, "no actor parameter changed"


def test_ppo_ptx_adds_the_language_modelling_loss_to_the_actor_step(dirs):
    """PPO-ptx: each actor step also fits pretraining windows; the critic's step is unchanged by it."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    prompts = chat_prompt_ids(tokenizer, toy_prompts(4))
    actor = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval()
    reference = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval().requires_grad_(False)
    critic = ValueModel.from_reward_model(load_reward_model(dirs["rm"])).eval()
    rollout = RolloutSettings(
        max_new_tokens=4,
        temperature=1.0,
        top_p=1.0,
        eos_id=IM_END_ID,
        pad_id=PAD_ID,
        gamma=1.0,
        gae_lambda=0.95,
        reward_clip=5.0,
    )
    no_reward = lambda sequences, attention_mask: torch.zeros(sequences.size(0))  # noqa: E731
    experience, _ = collect_experience(
        prompts, actor, reference, critic, no_reward, rollout, 0.0, torch.Generator().manual_seed(0)
    )
    windows = torch.randint(100, 200, (2, 9))  # (batch, seq_len + 1)
    update = UpdateSettings(
        ppo_epochs=1, mini_batch_size=4, clip_range=0.2, value_clip_range=0.2, temperature=1.0, ptx_coef=1.0
    )
    optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=2, min_lr_ratio=1.0, weight_decay=0.0)
    backends = [make_backend(model, optim, torch.device("cpu")) for model in (actor, critic)]
    first = ppo_update(experience, *backends, update, torch.device("cpu"), IteratorSource(lambda: windows))["ptx_loss"]
    second = ppo_update(experience, *backends, update, torch.device("cpu"), IteratorSource(lambda: windows))["ptx_loss"]
    assert second < first  # the same windows again: the LM loss on them fell


def test_ppo_stage_exports_a_loadable_actor(dirs, tmp_path):
    out = tmp_path / "ppo"
    metrics = ppo(ppo_config(), dirs["sft"], dirs["rm"], out, seed=0, device="cpu")
    assert PPO_METRIC_KEYS <= metrics.keys()
    assert metrics["steps"] == 4 and metrics["kl_bound"] == 6.0 and metrics["resumed_from"] == 0
    assert metrics["kl"] >= -1.0  # an MC estimate of a KL: near 0 or positive
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"reward", "kl", "entropy", "response_length", "clip_fraction", "value_loss", "policy_loss"} <= records[
        0
    ].keys()
    assert not (out / "checkpoints").exists()

    actor = AutoModelForCausalLM.from_pretrained(out)
    sft = AutoModelForCausalLM.from_pretrained(dirs["sft"])
    assert any(not torch.equal(a, b) for a, b in zip(actor.state_dict().values(), sft.state_dict().values()))
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor(chat_prompt_ids(tokenizer, ["Tell me about place 1."]))
    generated = actor.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=IM_END_ID, pad_token_id=PAD_ID)
    assert generated.shape[1] > ids.shape[1]


def test_ppo_resumes_after_a_crash_to_the_same_run(dirs, tmp_path, monkeypatch, caplog):
    cfg = ppo_config()
    reference_out = tmp_path / "uninterrupted"
    ppo(cfg, dirs["sft"], dirs["rm"], reference_out, seed=0, device="cpu")

    calls = {"count": 0}
    real_update = ppo_stage.ppo_update

    def crashing_update(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt("simulated crash in step 3")
        return real_update(*args, **kwargs)

    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(ppo_stage, "ppo_update", crashing_update)
    with pytest.raises(KeyboardInterrupt):
        ppo(cfg, dirs["sft"], dirs["rm"], tmp_path / "crashed", seed=0, device="cpu", checkpoint_dir=checkpoints)
    assert (checkpoints / "actor" / "latest.pt").is_file() and (checkpoints / "critic" / "latest.pt").is_file()
    monkeypatch.setattr(ppo_stage, "ppo_update", real_update)

    with caplog.at_level(logging.INFO, logger="zero_chatgpt.model.ppo.stage"):
        metrics = ppo(
            cfg, dirs["sft"], dirs["rm"], tmp_path / "resumed", seed=0, device="cpu", checkpoint_dir=checkpoints
        )
    assert "resuming from step 2" in caplog.text
    assert metrics["resumed_from"] == 2
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["reward"] for r in resumed] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed").state_dict()
    b = AutoModelForCausalLM.from_pretrained(reference_out).state_dict()
    assert all(torch.allclose(a[key], b[key], atol=1e-5) for key in a)


def test_ppo_options_fail_clearly(dirs, tmp_path):
    with pytest.raises(ValueError, match="shard dir"):
        ppo(ppo_config(ptx_coef=0.5), dirs["sft"], dirs["rm"], tmp_path / "ptx", seed=0, device="cpu")
    try:
        import peft  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install peft"):
            ppo(ppo_config(lora={"rank": 4}), dirs["sft"], dirs["rm"], tmp_path / "lora", seed=0, device="cpu")


def test_lora_ppo_exports_a_merged_plain_model(dirs, tmp_path):
    pytest.importorskip("peft")
    cfg = ppo_config(lora={"rank": 4}, optim=dict(lr=3e-2, warmup_steps=0, max_steps=2, checkpoint_every=10))
    ppo(cfg, dirs["sft"], dirs["rm"], tmp_path / "lora", seed=0, device="cpu")
    actor = AutoModelForCausalLM.from_pretrained(tmp_path / "lora").state_dict()
    sft = AutoModelForCausalLM.from_pretrained(dirs["sft"]).state_dict()
    assert actor.keys() == sft.keys()  # no adapter weights: a plain causal LM
    assert any(not torch.equal(actor[key], sft[key]) for key in sft)


def test_ppo_with_ema_and_adaptive_kl_runs(dirs, tmp_path):
    cfg = ppo_config(ema_decay=0.5, adaptive_kl=True, target_kl=0.01, optim=dict(lr=3e-3, max_steps=2))
    metrics = ppo(cfg, dirs["sft"], dirs["rm"], tmp_path / "ema", seed=0, device="cpu")
    assert metrics["steps"] == 2
    assert metrics["final_kl_coef"] != cfg.kl_coef  # the controller moved it


@torch.no_grad()
def _exact_two_token_kl(actor, reference, prompt: list[int]) -> float:
    """KL(actor || reference) of whole 2-token answers to one prompt, by enumerating the first token.

    Sequence KL = KL of the first token + E over first tokens (not EOS) of the KL of the second one.
    """

    def next_token_log_probs(model, rows: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model(input_ids=rows).logits[:, -1].float(), dim=-1)

    def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
        return (p_log.exp() * (p_log - q_log)).sum(dim=-1)

    ids = torch.tensor([prompt])
    first_p, first_q = next_token_log_probs(actor, ids)[0], next_token_log_probs(reference, ids)[0]
    vocab = first_p.numel()
    extended = torch.cat([ids.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
    second = kl(next_token_log_probs(actor, extended), next_token_log_probs(reference, extended))
    second[IM_END_ID] = 0.0  # the answer ends at EOS: no second token
    return float(kl(first_p, first_q) + (first_p.exp() * second).sum())


def test_held_out_kl_estimates_the_per_sequence_kl(dirs):
    """`evaluate_policy`'s kl (what is compared with target_kl) is the KL of whole answers, summed over their
    tokens: checked against the exact value for 2-token answers, where the first token can be enumerated."""
    tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    reference = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval()
    actor = AutoModelForCausalLM.from_pretrained(dirs["sft"]).eval()
    with torch.no_grad():
        actor.model.norm.weight.mul_(8.0)  # sharper next-token distributions: a policy some way from the reference
    prompts = chat_prompt_ids(tokenizer, toy_prompts(4))
    exact = sum(_exact_two_token_kl(actor, reference, prompt) for prompt in prompts) / len(prompts)
    cfg = ppo_config(max_new_tokens=2, rollout_batch_size=256, temperature=1.0, top_p=1.0)
    no_reward = lambda sequences, attention_mask: torch.zeros(sequences.size(0))  # noqa: E731
    ids = {"eos_id": IM_END_ID, "pad_id": PAD_ID}
    estimate = ppo_stage.evaluate_policy(
        actor, reference, no_reward, prompts * 128, cfg, torch.device("cpu"), None, seed=0, **ids
    )
    assert exact > 0.1  # the check below would be vacuous for two near-identical policies
    assert estimate["kl"] == pytest.approx(exact, rel=0.15)
    same = ppo_stage.evaluate_policy(
        reference, reference, no_reward, prompts[:2], cfg, torch.device("cpu"), None, 0, **ids
    )
    assert same["kl"] == 0.0


def test_a_reward_model_that_returns_nan_stops_ppo_with_its_name(dirs, tmp_path):
    import shutil

    from zero_chatgpt.model.ppo.maths import NonFiniteError

    broken = tmp_path / "rm-nan"
    shutil.copytree(dirs["rm"], broken)
    model = load_reward_model(broken)
    # Finite weights (NaN weights are refused at load) whose scores overflow float32.
    with torch.no_grad():
        model.score.weight.fill_(3.0e38)
    model.save_pretrained(broken)
    with pytest.raises(NonFiniteError, match="reward model's scores are NaN or infinite; check the train_rm"):
        ppo(ppo_config(), dirs["sft"], broken, tmp_path / "ppo", seed=0, device="cpu")


def test_sampling_from_a_model_with_nan_weights_names_the_cause(dirs):
    from zero_chatgpt.model.generation import sample

    model = AutoModelForCausalLM.from_pretrained(dirs["sft"])
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="next-token logits are NaN or infinite"):
        sample(model, [[5, 6, 7]], 4, eos_id=IM_END_ID, pad_id=PAD_ID)


def test_ppo_at_an_absurd_learning_rate_stops_naming_what_went_non_finite(dirs, tmp_path):
    """lr 1e9 (grad clipping off) blows the weights up within a step or two: the run stops with a named
    non-finite quantity and what to change, never trains on NaN or dies inside torch's sampler."""
    optim = dict(lr=1e9, warmup_steps=0, max_steps=4, min_lr_ratio=1.0, weight_decay=0.0, grad_clip=0.0)
    with pytest.raises(FloatingPointError, match="NaN or infinite") as failure:
        ppo(ppo_config(optim=optim), dirs["sft"], dirs["rm"], tmp_path / "ppo", seed=0, device="cpu")
    assert "ppo." in str(failure.value) or "dtype" in str(failure.value)  # it names a key to change
