"""The PPO update: a few epochs of clipped-loss steps over one scored rollout batch.

Optimizers, schedule and mixed precision come from the training core (`make_optimizer`, `make_scheduler`,
`autocast`): PPO only changes what one optimizer step computes. The actor and the critic are separate
networks with their own optimizers, so their losses never need a relative weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zero_chatgpt.model.distributed import all_reduce_mean_, per_rank_count
from zero_chatgpt.model.losses import causal_lm_window_loss
from zero_chatgpt.model.ppo.maths import masked_mean, policy_loss, token_entropy, value_loss
from zero_chatgpt.model.ppo.rollout import Experience, ValueModel, response_logits, token_logprobs
from zero_chatgpt.model.training import BatchSource, autocast, make_optimizer, make_scheduler
from zero_chatgpt.config import OptimConfig, PpoConfig


@dataclass
class UpdateSettings:
    """The knobs of one PPO update (a subset of `PpoConfig`)."""

    ppo_epochs: int
    mini_batch_size: int
    clip_range: float
    value_clip_range: float
    temperature: float
    grad_clip: float
    ptx_coef: float = 0.0

    @classmethod
    def from_config(cls, cfg: PpoConfig, world_size: int = 1) -> "UpdateSettings":
        """`cfg.mini_batch_size` counts rollouts over all ranks: each of `world_size` ranks takes its equal
        share, so every rank makes the same number of optimizer steps as one rank would."""
        mini_batch_size = per_rank_count("ppo.mini_batch_size", cfg.mini_batch_size, world_size)
        return cls(ppo_epochs=cfg.ppo_epochs, mini_batch_size=mini_batch_size, clip_range=cfg.clip_range,
                   value_clip_range=cfg.value_clip_range, temperature=cfg.temperature,
                   grad_clip=cfg.optim.grad_clip, ptx_coef=cfg.ptx_coef)


class PpoOptimizers:
    """AdamW + schedule for the actor and for the critic, and one loss scaler (used with fp16 only).

    The schedules advance once per PPO step (`step_schedules`), so `optim.max_steps` counts PPO steps.
    With `world_size` > 1 (data-parallel replicas) `average_gradients` makes every rank's gradients the
    mean over ranks before a step, so the replicas stay identical.
    """

    def __init__(self, actor: torch.nn.Module, critic: torch.nn.Module, optim: OptimConfig,
                 critic_lr: float | None, device: torch.device, dtype: torch.dtype | None,
                 world_size: int = 1) -> None:
        critic_optim = optim.model_copy(update={"lr": critic_lr}) if critic_lr is not None else optim
        self.actor = make_optimizer(actor, optim, device)
        self.critic = make_optimizer(critic, critic_optim, device)
        self.actor_schedule = make_scheduler(self.actor, optim)
        self.critic_schedule = make_scheduler(self.critic, critic_optim)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.world_size = world_size

    def average_gradients(self) -> None:
        """All-reduce (mean) the gradients of both optimizers' parameters; a no-op on one rank.

        Done by hand rather than with DDP wrappers: PPO-ptx runs the actor forward twice per backward, which
        DDP's reducer rejects, and the rollouts use the bare models anyway. Still-scaled fp16 gradients are
        fine: after the mean every rank sees the same infs, so the scalers skip and adjust together.
        """
        if self.world_size == 1:
            return
        grads = [param.grad for optimizer in (self.actor, self.critic) for group in optimizer.param_groups
                 for param in group["params"] if param.grad is not None]
        all_reduce_mean_(grads, self.world_size)

    def step_schedules(self) -> None:
        self.actor_schedule.step()
        self.critic_schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_schedule": self.actor_schedule.state_dict(),
                "critic_schedule": self.critic_schedule.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_schedule.load_state_dict(state["actor_schedule"])
        self.critic_schedule.load_state_dict(state["critic_schedule"])
        self.scaler.load_state_dict(state["scaler"])


def _clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float) -> None:
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)


def ppo_update(
    experience: Experience,
    actor: torch.nn.Module,
    critic: ValueModel,
    optimizers: PpoOptimizers,
    settings: UpdateSettings,
    device: torch.device,
    dtype: torch.dtype | None = None,
    ptx_batches: BatchSource | None = None,
) -> dict[str, float]:
    """`ppo_epochs` passes over `experience` in shuffled mini-batches; one actor and one critic step each.

    The models stay in eval mode: dropout would make the first ratio differ from 1 for no reason.
    With `ptx_coef > 0`, each actor step adds `ptx_coef` times the LM loss on a batch of `ptx_batches`
    (pretraining windows, shape (batch, seq_len + 1)) to keep the actor's language modelling (PPO-ptx).
    Returns the means over all steps of: policy_loss, value_loss, entropy, clip_fraction, approx_kl,
    value_clip_fraction (and ptx_loss).
    """
    if settings.ptx_coef > 0 and ptx_batches is None:
        raise ValueError("ptx_coef > 0 needs pretraining batches (pass the shard dir)")
    totals: dict[str, float] = {}
    steps = 0
    prompt_length = experience.prompt_length
    for _ in range(settings.ppo_epochs):
        order = torch.randperm(len(experience)).to(experience.sequences.device)
        for rows in order.split(settings.mini_batch_size):
            batch = experience.select(rows)
            with autocast(device, dtype):
                logits = response_logits(actor, batch.sequences, batch.attention_mask, prompt_length)
                logprobs = token_logprobs(logits, batch.responses, settings.temperature)
                actor_loss, policy_stats = policy_loss(logprobs, batch.logprobs, batch.advantages,
                                                       batch.response_mask, settings.clip_range)
                stats = {"policy_loss": actor_loss.detach(), **policy_stats}
                if settings.ptx_coef > 0:
                    windows = ptx_batches.next_batch().to(device)
                    ptx_loss, _ = causal_lm_window_loss(actor, windows)
                    actor_loss = actor_loss + settings.ptx_coef * ptx_loss
                    stats["ptx_loss"] = ptx_loss.detach()
                values = critic(batch.sequences, batch.attention_mask)[:, prompt_length - 1: -1]
                critic_loss, value_stats = value_loss(values, batch.values, batch.returns, batch.response_mask,
                                                      settings.value_clip_range)
            with torch.no_grad():
                stats["entropy"] = masked_mean(token_entropy(logits.detach()), batch.response_mask)
            stats.update(value_loss=critic_loss.detach(), **value_stats)
            # Actor and critic share no parameters: one backward fills both sets of gradients.
            optimizers.scaler.scale(actor_loss + critic_loss).backward()
            optimizers.average_gradients()
            _clip_and_step(optimizers.actor, optimizers.scaler, settings.grad_clip)
            _clip_and_step(optimizers.critic, optimizers.scaler, settings.grad_clip)
            optimizers.scaler.update()
            optimizers.actor.zero_grad(set_to_none=True)
            optimizers.critic.zero_grad(set_to_none=True)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            steps += 1
    return {key: value / steps for key, value in totals.items()}
