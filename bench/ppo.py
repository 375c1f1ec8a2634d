"""One PPO step's time split, and rollout speed of our KV-cached `sample` vs Hugging Face `generate`.

The models are random-init (speed does not depend on the weights): actor and reference causal LMs, and a
one-label sequence classifier as reward model and critic, all of the same shape. Prompts are random token
ids of varied lengths. EOS is a token the random model practically never draws, so every row generates
`max_new_tokens` tokens in both generators; generation repeats are interleaved and medians reported.

    PYTHONPATH=. python bench/ppo.py --quick

The last line printed is one JSON object: {"generate_share", "vs_hf_generate", "step_seconds", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zero_chatgpt.config import ModelConfig, PpoConfig  # noqa: E402
from zero_chatgpt.model.build import build_model, llama_config, resolve_device  # noqa: E402
from zero_chatgpt.model.generation import sample  # noqa: E402
from zero_chatgpt.model.ppo.rollout import RolloutSettings, ValueModel, collect_experience, reward_model_scores  # noqa: E402
from zero_chatgpt.model.ppo.stage import make_ppo_backends  # noqa: E402
from zero_chatgpt.model.ppo.update import UpdateSettings, ppo_update  # noqa: E402
from zero_chatgpt.model.training import autocast, autocast_dtype  # noqa: E402
from zero_chatgpt.tokenizer.chat import IM_END_ID, PAD_ID  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_prompts(count: int, vocab_size: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    """`count` prompts of random ids in [5, vocab) (specials excluded) with lengths in [min_len, max_len]."""
    rng = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=rng)
    return [torch.randint(5, vocab_size, (int(n),), generator=rng).tolist() for n in lengths]


def time_ours(model, prompts, max_new_tokens, device, dtype, seed) -> tuple[float, int]:
    """(seconds, generated tokens) of one `sample` call."""
    generator = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    started = time.perf_counter()
    with autocast(device, dtype):
        rollout = sample(model, prompts, max_new_tokens, IM_END_ID, PAD_ID, temperature=1.0, generator=generator)
    _sync(device)
    return time.perf_counter() - started, int(rollout.response_mask.sum())


def time_hf(model, prompts, max_new_tokens, device, dtype) -> tuple[float, int]:
    """(seconds, generated tokens) of one plain `model.generate(do_sample=True)` call on left-padded prompts."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts], device=device)
    mask = (
        torch.arange(width, device=device)[None, :]
        >= torch.tensor([width - len(p) for p in prompts], device=device)[:, None]
    ).long()
    _sync(device)
    started = time.perf_counter()
    with torch.no_grad(), autocast(device, dtype):
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            max_new_tokens=max_new_tokens,
            eos_token_id=IM_END_ID,
            pad_token_id=PAD_ID,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
        )
    _sync(device)
    seconds = time.perf_counter() - started
    new = out[:, width:]
    # Tokens up to and including EOS count; HF pads after EOS.
    after_eos = (new == IM_END_ID).long().cumsum(1) - (new == IM_END_ID).long()
    return seconds, int((after_eos == 0).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-preset model, a few minutes on 2 CPU cores")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)

    if args.quick:
        model_cfg = ModelConfig(hidden_size=128, num_layers=4, num_heads=4, max_seq_len=256)
        vocab_size, batch, max_new_tokens, repeats = 4000, 32, 32, args.repeats or 3
    else:
        model_cfg = ModelConfig(hidden_size=768, num_layers=12, num_heads=12, max_seq_len=1024)
        vocab_size, batch, max_new_tokens, repeats = 32000, 64, 128, args.repeats or 5
    cfg = PpoConfig(rollout_batch_size=batch, max_new_tokens=max_new_tokens)
    dtype = autocast_dtype(cfg.optim.precision, device)

    actor = build_model(model_cfg, vocab_size, eos_token_id=IM_END_ID, pad_token_id=PAD_ID).to(device).eval()
    reference = build_model(model_cfg, vocab_size, eos_token_id=IM_END_ID, pad_token_id=PAD_ID).to(device).eval()
    reference.requires_grad_(False)
    head_config = llama_config(model_cfg, vocab_size, eos_token_id=IM_END_ID, pad_token_id=PAD_ID)
    head_config.num_labels = 1
    reward_model = LlamaForSequenceClassification(head_config).to(device).eval().requires_grad_(False)
    critic = ValueModel.from_reward_model(LlamaForSequenceClassification(head_config)).to(device).eval()
    prompts = random_prompts(batch, vocab_size, 16, 48, seed=0)

    # One PPO step (after one warm-up step), split into generation / scoring / update.
    rollout_settings = RolloutSettings(
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        eos_id=IM_END_ID,
        pad_id=PAD_ID,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        reward_clip=cfg.reward_clip,
    )
    update_settings = UpdateSettings.from_config(cfg)
    actor_backend, critic_backend = make_ppo_backends(actor, critic, cfg, update_settings, device, parallel=None)
    reward_fn = reward_model_scores(reward_model)
    generator = torch.Generator(device=device).manual_seed(0)
    split = {}
    for _ in range(2):
        _sync(device)
        started = time.perf_counter()
        with autocast(device, dtype):
            experience, generate_seconds = collect_experience(
                prompts, actor, reference, critic, reward_fn, rollout_settings, cfg.kl_coef, generator
            )
        _sync(device)
        scored = time.perf_counter()
        ppo_update(experience, actor_backend, critic_backend, update_settings, device)
        _sync(device)
        done = time.perf_counter()
        split = {
            "step_seconds": done - started,
            "generate_seconds": generate_seconds,
            "score_seconds": scored - started - generate_seconds,
            "update_seconds": done - scored,
        }

    # Rollout generation: ours vs HF generate, interleaved, same prompts, same max_new_tokens, same model.
    ours, hf = [], []
    time_ours(actor, prompts[:4], 4, device, dtype, 0)  # warm-up both paths
    time_hf(actor, prompts[:4], 4, device, dtype)
    for repeat in range(repeats):
        seconds, tokens = time_ours(actor, prompts, max_new_tokens, device, dtype, repeat)
        ours.append(tokens / seconds)
        seconds, tokens = time_hf(actor, prompts, max_new_tokens, device, dtype)
        hf.append(tokens / seconds)
    ours_tps, hf_tps = statistics.median(ours), statistics.median(hf)

    result = {
        "generate_share": split["generate_seconds"] / split["step_seconds"],
        "vs_hf_generate": ours_tps / hf_tps,
        "step_seconds": split["step_seconds"],
        "generate_seconds": split["generate_seconds"],
        "score_seconds": split["score_seconds"],
        "update_seconds": split["update_seconds"],
        "sample_tokens_per_s": ours_tps,
        "hf_generate_tokens_per_s": hf_tps,
        "rollout_batch_size": batch,
        "max_new_tokens": max_new_tokens,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    print(f"{'PPO step (rollout batch ' + str(batch) + ')':<38}{'seconds':>10}{'share':>8}")
    for name in ("generate", "score", "update"):
        print(f"  {name:<36}{split[name + '_seconds']:>10.3f}{split[name + '_seconds'] / split['step_seconds']:>8.1%}")
    print(f"  {'total':<36}{split['step_seconds']:>10.3f}")
    print(f"{'rollout tokens/s (median of ' + str(repeats) + ')':<38}{'tokens/s':>10}")
    print(f"  {'model.generation.sample':<36}{ours_tps:>10.0f}")
    print(f"  {'HF model.generate':<36}{hf_tps:>10.0f}")
    print(f"  {'vs_hf_generate':<36}{ours_tps / hf_tps:>10.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
