"""The `ppo` stage: RLHF of the SFT model against the reward model, with a frozen reference for the KL penalty.

Inputs: the sft dir (HF causal LM of any family + tokenizer with its chat template + `rlhf_prompts.jsonl` with
`{id, prompt, response}` rows, `prompt` one user turn or a conversation ending in one), the train_rm dir
(one-label sequence classifier over the same token ids), and for PPO-ptx a shard dir. Models: actor (trained,
from SFT), reference (frozen SFT), reward model (frozen), critic (the reward model's backbone and head,
trained, read per token). With `ppo.lora` the actor and the critic train LoRA adapters (the critic's head in
full) instead of all weights. Prompts are rendered by the tokenizer's chat template (`encode_prompt`), answers
stop at its end-of-turn token and batches pad with its pad id. Each PPO step samples `rollout_batch_size`
prompts, scores the rollouts (`rollout.py`) and runs `ppo_epochs` clipped updates over them (`update.py`).
Output (in `out_dir`): the actor as a plain HF checkpoint (adapters merged) + tokenizer and `metrics.jsonl`
(one record per step).

On several ranks (`model.launch`) PPO is data-parallel: every rank samples its own slice of each global
rollout batch. The actor and the critic train through the training core's backends (`make_backend`): DDP
replicas, or DeepSpeed engines with ZeRO 0-2; the frozen reference and reward model are plain modules.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import AutoTokenizer

from zero_chatgpt.config import PpoConfig
from zero_chatgpt.data_process.token_shards import TokenShards
from zero_chatgpt.model.artifact_io import export_trained_model
from zero_chatgpt.model.base_model import load_causal_lm, load_dtype
from zero_chatgpt.model.batching import ShuffledBatches
from zero_chatgpt.model.build import resolve_device, seed_everything
from zero_chatgpt.model.checkpoint import restore_rng_states, rng_states
from zero_chatgpt.model.distributed import (
    DdpParallel,
    DeepSpeedParallel,
    all_gather_objects,
    broadcast_from_main_,
    mean_over_ranks,
    per_rank_count,
)
from zero_chatgpt.model.generation import context_length, sample
from zero_chatgpt.model.lora import apply_lora, merged
from zero_chatgpt.model.ppo.maths import adaptive_kl_coef
from zero_chatgpt.model.ppo.rollout import (
    RewardFn,
    RolloutSettings,
    ValueModel,
    collect_experience,
    response_logits,
    reward_model_scores,
    token_logprobs,
)
from zero_chatgpt.model.ppo.update import UpdateSettings, ppo_update
from zero_chatgpt.model.pretrain import RandomWindows
from zero_chatgpt.model.reward_model import load_reward_model
from zero_chatgpt.model.training import MetricsLog, TrainBackend, autocast, autocast_dtype, make_backend
from zero_chatgpt.progress import ProgressBar
from zero_chatgpt.stage_files import RLHF_PROMPTS, read_chat_rows
from zero_chatgpt.tokenizer.chat_encoding import encode_prompts, end_of_turn_id, pad_id

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
LOG_EVERY_STEPS = 10
STEP_METRICS = ("reward", "kl", "entropy", "response_length", "clip_fraction", "value_loss", "policy_loss")
# Rollouts sample from the bare actor token by token: its weights must be whole on every rank.
DEEPSPEED_ZERO_STAGES = (0, 1, 2)


def check_parallel(parallel: DdpParallel | DeepSpeedParallel | None) -> None:
    """Refuse, before any work, a ZeRO stage PPO cannot run (ZeRO 3 partitions the weights rollouts read)."""
    if isinstance(parallel, DeepSpeedParallel) and parallel.zero_stage not in DEEPSPEED_ZERO_STAGES:
        raise ValueError(
            f"ppo with resources.engine deepspeed runs resources.zero_stage "
            f"{' / '.join(map(str, DEEPSPEED_ZERO_STAGES))}, not {parallel.zero_stage}: ZeRO 3 "
            "partitions the actor's weights, which rollouts sample from on every rank. Set "
            "resources.zero_stage to 2 (or 0 / 1)"
        )


Prompt = str | list[dict[str, str]]


def read_prompts(path: Path) -> list[Prompt]:
    """The `prompt` of each row of `rlhf_prompts.jsonl`: a string (one user turn) or a conversation ending in a
    user turn (`prompt_messages`); a bad line is an error naming file and line."""
    prompts = [row["prompt"] for row in read_chat_rows(path.parent, path.name, require_response=False)]
    if len(prompts) < 2:
        raise ValueError(f"{path}: {len(prompts)} prompts; PPO needs at least 2 (training and held-out)")
    return prompts


def split_prompts(prompts: list[Prompt], num_eval: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """(train, held-out): a seeded shuffle; at most half of the prompts are held out, at least one."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    num_eval = max(1, min(num_eval, len(prompts) // 2))
    return [prompts[i] for i in order[num_eval:]], [prompts[i] for i in order[:num_eval]]


def rank_prompt_batches(
    prompts: list[list[int]], rollout_batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> ShuffledBatches:
    """This rank's prompts of each PPO step: `rollout_batch_size` counts prompts over all ranks.

    Every rank draws the same seeded global batch and keeps its own disjoint `rollout_batch_size //
    world_size` of them (rank r: the r-th slice), so the ranks together take exactly what one rank would.
    """
    per_rank = per_rank_count("ppo.rollout_batch_size", rollout_batch_size, world_size)
    return ShuffledBatches(prompts, per_rank, seed, rank=rank, world_size=world_size)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s sampling generator: `seed` itself on rank 0 (a 1-rank run is unchanged),
    an unrelated stream on the others (not `seed + rank`, which would collide with other seeded streams)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def prompt_budget(cfg: PpoConfig, context: int | None) -> int:
    """Prompt tokens a rollout may keep: `max_prompt_tokens`, and no more than the context leaves after
    `max_new_tokens` (the actor's, the reference's and the reward model's positions)."""
    if context is None:
        return cfg.max_prompt_tokens
    if context - cfg.max_new_tokens < 1:
        raise ValueError(
            f"ppo.max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the models' context of "
            f"{context} positions; lower it"
        )
    return min(cfg.max_prompt_tokens, context - cfg.max_new_tokens)


def check_vocabularies(tokenizer, actor: torch.nn.Module, reward_model: torch.nn.Module, rm_dir: Path) -> None:
    """Raise when the actor or the reward model has fewer token embeddings than the SFT tokenizer has tokens: the
    reward model scores the actor's ids as they are (train_rm resizes it to the SFT tokenizer)."""
    for name, model in (("the SFT model", actor), (f"the reward model in {rm_dir}", reward_model)):
        rows = model.get_input_embeddings().num_embeddings
        if rows < len(tokenizer):
            raise ValueError(
                f"ppo: {name} has {rows} token embeddings but the SFT tokenizer {len(tokenizer)} tokens: the actor, "
                "the reward model and the critic must share the SFT tokenizer's ids (train the reward model with "
                "this sft artifact)"
            )


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


@torch.no_grad()
def evaluate_policy(
    actor: torch.nn.Module,
    reference: torch.nn.Module,
    reward_fn: RewardFn,
    prompts: list[list[int]],
    cfg: PpoConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    seed: int,
    *,
    eos_id: int,
    pad_id: int,
) -> dict[str, float]:
    """Held-out figures of a policy: mean reward of its greedy answers, and mean per-sequence KL to the
    reference, estimated on sampled answers (sum over tokens of log pi - log pi_ref; greedy answers would
    bias it). Also the mean length of the sampled answers. The same seed gives the same draws. Answers stop
    at `eos_id` (the template's end-of-turn token); batches pad with `pad_id`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    rewards, kls, lengths = [], [], []
    with autocast(device, dtype):
        for start in range(0, len(prompts), cfg.rollout_batch_size):
            batch = prompts[start : start + cfg.rollout_batch_size]
            greedy = sample(actor, batch, cfg.max_new_tokens, eos_id, pad_id, temperature=0.0)
            rewards.append(reward_fn(greedy.sequences, greedy.attention_mask).float())
            drawn = sample(
                actor,
                batch,
                cfg.max_new_tokens,
                eos_id,
                pad_id,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                generator=generator,
            )
            mask = drawn.response_mask.float()
            logprobs = [
                token_logprobs(
                    response_logits(model, drawn.sequences, drawn.attention_mask, drawn.prompt_length),
                    drawn.responses,
                    cfg.temperature,
                )
                for model in (actor, reference)
            ]
            kls.append(((logprobs[0] - logprobs[1]) * mask).sum(dim=1))
            lengths.append(mask.sum(dim=1))
    return {
        "reward": float(torch.cat(rewards).mean()),
        "kl": float(torch.cat(kls).mean()),
        "response_length": float(torch.cat(lengths).mean()),
    }


def ppo(
    cfg: PpoConfig,
    sft_dir: Path,
    rm_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    shard_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    parallel: DdpParallel | DeepSpeedParallel | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run `cfg.optim.max_steps` PPO steps from the SFT model against the reward model; save the actor.

    The models load in `dtype` (`base_model.load_dtype`), running shipped model code only with
    `trust_remote_code`. `shard_dir` (the token shards, for PPO-ptx) may be None when `ptx_coef` is 0: a base
    model aligned without continued pretraining has none. Prompts keep their last `max_prompt_tokens` tokens,
    and no more than the models' context leaves after `max_new_tokens` (`prompt_budget`).

    Resume checkpoints go to `checkpoint_dir` (default `out_dir/checkpoints`, deleted at the end) every
    `cfg.optim.checkpoint_every` steps: the actor's and the critic's backends each save theirs (`actor/`,
    `critic/`), the actor's with PPO's own state (data positions, every rank's sampling state, kl_coef, EMA).

    `parallel` (from `model.launch`, one call per rank): DDP or DeepSpeed (ZeRO 0-2) for actor and critic.
    Each rank samples its `rollout_batch_size / world_size` prompts of every step (`rank_prompt_batches`)
    with its own sampling seed, then the scored rollouts are gathered on every rank, so advantages are
    whitened and mini-batches drawn over the global batch; `mini_batch_size` and `ptx_batch_size` are global
    counts too; the backends average gradients over ranks. Given the same rollouts, N ranks train exactly
    as one rank would (the sampling draws themselves are per-rank streams). Step metrics and held-out
    figures (each rank evaluates its share of the held-out prompts) are means over ranks; rank 0 alone
    writes `metrics.jsonl` and the exported actor.

    Returns metrics: reward_before / reward_after (mean reward of the greedy answers of the SFT model / the
    trained actor on held-out prompts), kl (mean per-sequence KL of the actor to the reference there),
    kl_bound (= target_kl), steps, resumed_from, train/eval prompt counts, prompts_cut (prompts that kept only
    their end), trainable_params (the actor's; with LoRA its adapters), and `mean_<name>` of each per-step
    metric (reward, kl, entropy, response_length, clip_fraction, value_loss, policy_loss).
    """
    check_parallel(parallel)
    sft_dir, rm_dir, out_dir = Path(sft_dir), Path(rm_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)
    amp_dtype = autocast_dtype(cfg.optim.precision, torch_device)
    if cfg.ptx_coef > 0 and shard_dir is None:
        raise ValueError(
            f"ppo.ptx_coef {cfg.ptx_coef} mixes in the pretraining loss on the corpus' token shards, but this run "
            "has no shard dir (a base model aligned without base_model.continue_pretraining tokenises no corpus): "
            "set ppo.ptx_coef to 0, or base_model.continue_pretraining to true"
        )
    rank, world_size = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
    is_main_process = rank == 0
    seed_everything(seed)

    tokenizer = AutoTokenizer.from_pretrained(sft_dir, trust_remote_code=trust_remote_code)
    stop_id, padding = end_of_turn_id(tokenizer), pad_id(tokenizer)
    train_prompts, eval_prompts = split_prompts(read_prompts(sft_dir / RLHF_PROMPTS), cfg.num_eval_prompts, seed)

    trains_all_weights = cfg.lora.rank == 0  # the actor and the critic; the reference and reward model are frozen

    def causal_lm(trains: bool) -> torch.nn.Module:
        return load_causal_lm(sft_dir, dtype, torch_device.type, trust_remote_code, trains).to(torch_device)

    def reward_model_copy(trains: bool) -> torch.nn.Module:
        weights = load_dtype(dtype, torch_device.type, trains)
        return load_reward_model(rm_dir, dtype=weights, trust_remote_code=trust_remote_code).to(torch_device)

    actor = causal_lm(trains_all_weights)
    reference = _frozen(causal_lm(False))
    reward_model = _frozen(reward_model_copy(False))
    check_vocabularies(tokenizer, actor, reward_model, rm_dir)
    critic_source = reward_model_copy(trains_all_weights)
    reward_fn = reward_model_scores(reward_model)
    budget = prompt_budget(cfg, context_length(actor, reward_model))
    train_ids, train_cut = encode_prompts(tokenizer, train_prompts, budget)
    eval_ids, eval_cut = encode_prompts(tokenizer, eval_prompts, budget)
    if is_main_process and train_cut + eval_cut:
        logger.warning(
            "ppo: %d of %d prompts are longer than %d tokens (ppo.max_prompt_tokens %d, and the context left after "
            "max_new_tokens %d): they keep their last %d tokens",
            train_cut + eval_cut,
            len(train_ids) + len(eval_ids),
            budget,
            cfg.max_prompt_tokens,
            cfg.max_new_tokens,
            budget,
        )
    actor = apply_lora(actor, cfg.lora, "CAUSAL_LM")
    # The critic is the reward model read per token: with LoRA, adapters on its backbone and its head in full.
    critic = ValueModel.from_reward_model(apply_lora(critic_source, cfg.lora, "SEQ_CLS"))
    trainable_params = sum(p.numel() for p in actor.parameters() if p.requires_grad)
    actor.eval()  # no dropout anywhere in PPO (see ppo_update); gradients still flow
    critic.eval()
    if world_size > 1:
        # Same seed and files give the same start on every rank; broadcasting rank 0's copy makes sure of
        # it (LoRA's random init included), since averaged gradients keep replicas equal only from equal.
        broadcast_from_main_([*actor.state_dict().values(), *critic.state_dict().values()])

    update_settings = UpdateSettings.from_config(cfg, world_size, rank)
    actor_backend, critic_backend = make_ppo_backends(actor, critic, cfg, update_settings, torch_device, parallel)
    actor, critic = actor_backend.module, critic_backend.module  # rollouts and eval use the bare models
    if is_main_process:
        logger.info("ppo: actor and critic train through %s on %d rank(s)", type(actor_backend).__name__, world_size)
    ema = (
        AveragedModel(actor, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0
        else None
    )
    prompt_batches = rank_prompt_batches(train_ids, cfg.rollout_batch_size, seed, rank, world_size)
    ptx_batches = (
        RandomWindows(
            TokenShards(shard_dir, "train"),
            per_rank_count("ppo.ptx_batch_size", cfg.ptx_batch_size, world_size),
            cfg.ptx_seq_len,
            seed,
            rank,
            world_size,
        )
        if cfg.ptx_coef > 0
        else None
    )
    generator = torch.Generator(device=torch_device).manual_seed(rank_seed(seed, rank))
    rollout_settings = RolloutSettings(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        eos_id=stop_id,
        pad_id=padding,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        reward_clip=cfg.reward_clip,
    )
    log = MetricsLog(out_dir / METRICS_LOG, enabled=is_main_process)
    if log.path is not None and log.path.exists():
        log.path.unlink()

    # Evaluation draws use their own seed so before and after see the same prompts and RNG stream. Each
    # rank scores its share of the held-out prompts; the means are weighted by the prompts each scored.
    eval_share = eval_ids[rank::world_size]

    def evaluate(policy: torch.nn.Module) -> dict[str, float]:
        if eval_share:
            figures = evaluate_policy(
                policy,
                reference,
                reward_fn,
                eval_share,
                cfg,
                torch_device,
                amp_dtype,
                rank_seed(seed + 1, rank),
                eos_id=stop_id,
                pad_id=padding,
            )
        else:  # more ranks than held-out prompts: this rank only joins the all-reduce
            figures = {"reward": 0.0, "kl": 0.0, "response_length": 0.0}
        return mean_over_ranks(figures, world_size, torch_device, weight=len(eval_share))

    kl_coef, start_step, history = cfg.kl_coef, 0, []
    state = load_ppo_checkpoint(checkpoint_dir, actor_backend, critic_backend)
    if state is not None:
        if ema is not None:
            ema.load_state_dict(state["ema"])
        prompt_batches.load_state_dict(state["prompts"])
        if ptx_batches is not None:
            ptx_batches.load_state_dict(state["ptx"])
        rank_states = state["rank_states"]
        if len(rank_states) == world_size:
            generator.set_state(rank_states[rank]["generator"].cpu())
            restore_rng_states(rank_states[rank]["rng"])
        elif is_main_process:
            logger.warning(
                "the PPO checkpoint was written by %d rank(s), this run has %d: model, optimizer and "
                "data position resume, sampling restarts from fresh seeded generators",
                len(rank_states),
                world_size,
            )
        kl_coef, start_step, history = state["kl_coef"], state["step"], state["history"]
        before = state["before"]
        for record in history:  # the log may live in a dir that did not survive the crash
            log.write(record)
        logger.info("resuming from step %d in %s", start_step, checkpoint_dir)
    else:
        before = evaluate(actor)
        logger.info(
            "ppo: %d train / %d held-out prompts; SFT policy reward %.4f",
            len(train_ids),
            len(eval_ids),
            before["reward"],
        )

    progress = ProgressBar("ppo", cfg.optim.max_steps, initial=start_step, enabled=is_main_process)
    for step in range(start_step, cfg.optim.max_steps):
        started = time.perf_counter()
        with autocast(torch_device, amp_dtype):
            experience, generate_seconds = collect_experience(
                prompt_batches.next_batch(),
                actor,
                reference,
                critic,
                reward_fn,
                rollout_settings,
                kl_coef,
                generator,
                world_size,
            )
        update_stats = ppo_update(experience, actor_backend, critic_backend, update_settings, torch_device, ptx_batches)
        if ema is not None:
            ema.update_parameters(actor)
        step_seconds = time.perf_counter() - started
        # `experience` is the global batch on every rank; the update's figures and timings are means over
        # ranks: every rank logs, and moves its adaptive kl_coef by, the same numbers.
        measured = mean_over_ranks(
            {
                "reward": float(experience.scores.mean()),
                "kl": float(experience.kl.sum(dim=1).mean()),
                "response_length": float(experience.response_mask.sum(dim=1).mean()),
                **update_stats,
                "step_seconds": step_seconds,
                "generate_share": generate_seconds / step_seconds,
            },
            world_size,
            torch_device,
        )
        record = {
            "step": step + 1,
            "reward": measured.pop("reward"),
            "kl": measured.pop("kl"),
            "response_length": measured.pop("response_length"),
            "kl_coef": kl_coef,
            **measured,
        }
        if cfg.adaptive_kl:
            kl_coef = adaptive_kl_coef(kl_coef, record["kl"], cfg.target_kl, len(experience), cfg.kl_horizon)
        history.append(record)
        log.write(record)
        # PPO's tokens/s counts the answer tokens sampled: rollouts are most of a step's time.
        sampled_tokens = round(record["response_length"] * cfg.rollout_batch_size)
        progress.update(1, tokens=sampled_tokens, reward=record["reward"], kl=record["kl"])
        if is_main_process and ((step + 1) % LOG_EVERY_STEPS == 0 or step == start_step):  # the bar shows every step
            logger.info(
                "ppo step %d/%d reward %.4f kl %.3f entropy %.3f length %.1f clip %.3f vloss %.4f (%.1fs)",
                step + 1,
                cfg.optim.max_steps,
                record["reward"],
                record["kl"],
                record["entropy"],
                record["response_length"],
                record["clip_fraction"],
                record["value_loss"],
                step_seconds,
            )
        last = step + 1 == cfg.optim.max_steps
        if (step + 1) % cfg.optim.checkpoint_every == 0 and not last:
            save_ppo_checkpoint(
                checkpoint_dir,
                actor_backend,
                critic_backend,
                {
                    "step": step + 1,
                    "ema": ema.state_dict() if ema is not None else None,
                    "prompts": prompt_batches.state_dict(),
                    "ptx": ptx_batches.state_dict() if ptx_batches is not None else None,
                    # Each rank resumes its own sampling stream: rank 0's copy of the state holds all of them.
                    "rank_states": all_gather_objects(
                        {"generator": generator.get_state(), "rng": rng_states()}, world_size
                    ),
                    "kl_coef": kl_coef,
                    "history": history,
                    "before": before,
                },
            )
            if is_main_process:
                logger.info("saved PPO checkpoint at step %d", step + 1)
    progress.close()

    policy = ema.module if ema is not None else actor
    policy = merged(policy)  # LoRA: a plain causal LM, loading the output needs no peft
    after = evaluate(policy)
    export_trained_model(policy, tokenizer, out_dir, checkpoint_dir, parallel=parallel, is_main_process=is_main_process)

    metrics: dict[str, Any] = {
        "reward_before": before["reward"],
        "reward_after": after["reward"],
        "kl": after["kl"],
        "kl_bound": cfg.target_kl,
        "kl_before": before["kl"],
        "response_length_before": before["response_length"],
        "response_length_after": after["response_length"],
        "steps": cfg.optim.max_steps,
        "resumed_from": start_step,
        "train_prompts": len(train_ids),
        "eval_prompts": len(eval_ids),
        "prompts_cut": train_cut + eval_cut,
        "trainable_params": trainable_params,
        "final_kl_coef": kl_coef,
    }
    for name in STEP_METRICS:
        metrics[f"mean_{name}"] = float(np.mean([record[name] for record in history])) if history else float("nan")
    if is_main_process:
        logger.info(
            "ppo done: reward %.4f -> %.4f, kl %.3f (bound %.1f)",
            metrics["reward_before"],
            metrics["reward_after"],
            metrics["kl"],
            metrics["kl_bound"],
        )
    return metrics


def make_ppo_backends(
    actor: torch.nn.Module,
    critic: torch.nn.Module,
    cfg: PpoConfig,
    settings: UpdateSettings,
    device: torch.device,
    parallel: DdpParallel | DeepSpeedParallel | None,
) -> tuple[TrainBackend, TrainBackend]:
    """The core's backends of the actor (`cfg.optim`) and the critic (lr `cfg.critic_lr` if set).

    One optimizer step per mini-batch, no accumulation; the schedules count PPO steps (`optim.max_steps`),
    each of which makes `settings.optimizer_steps` optimizer steps over the global rollout batch.
    """
    steps_per_ppo_step = settings.optimizer_steps(cfg.rollout_batch_size)
    actor_optim = cfg.optim.model_copy(update={"batch_size": settings.mini_batch_size, "grad_accum": 1})
    critic_optim = actor_optim.model_copy(update={"lr": cfg.critic_lr}) if cfg.critic_lr is not None else actor_optim
    return (
        make_backend(actor, actor_optim, device, parallel, optimizer_steps_per_step=steps_per_ppo_step),
        make_backend(critic, critic_optim, device, parallel, optimizer_steps_per_step=steps_per_ppo_step),
    )


def save_ppo_checkpoint(
    checkpoint_dir: Path, actor: TrainBackend, critic: TrainBackend, ppo_state: dict[str, Any]
) -> None:
    """Every rank: the critic's backend saves it (with the step), then the actor's saves it with `ppo_state`.

    The actor goes last: its checkpoint marks the step complete (see `load_ppo_checkpoint`).
    """
    critic.save(checkpoint_dir / "critic", {"step": ppo_state["step"]})
    actor.save(checkpoint_dir / "actor", ppo_state)


def load_ppo_checkpoint(checkpoint_dir: Path, actor: TrainBackend, critic: TrainBackend) -> dict[str, Any] | None:
    """Restore both backends from `save_ppo_checkpoint`'s files; return the PPO state, or None when there is none."""
    state = actor.load(checkpoint_dir / "actor")
    if state is None:
        return None
    critic_state = critic.load(checkpoint_dir / "critic")
    critic_step = critic_state["step"] if critic_state is not None else None
    if critic_step != state["step"]:
        raise RuntimeError(
            f"{checkpoint_dir}: the actor's checkpoint is at step {state['step']} but the critic's "
            f"at {critic_step} (a save was interrupted): delete the dir to start over"
        )
    return state
