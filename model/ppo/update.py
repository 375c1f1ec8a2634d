"""The PPO update: a few epochs of clipped-loss steps over one scored rollout batch.

The optimizer steps come from the training core: the actor and the critic each have a `TrainBackend`
(`model.training.make_backend`: AdamW, schedule, clipping, and DDP or a DeepSpeed engine on several
ranks), so PPO only says what one step computes. They are separate networks with their own optimizers, so
their losses never need a relative weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zero_chatgpt.config import PpoConfig
from zero_chatgpt.model.distributed import per_rank_count
from zero_chatgpt.model.losses import causal_lm_window_loss
from zero_chatgpt.model.ppo.maths import masked_mean, policy_loss, require_finite, token_entropy, value_loss
from zero_chatgpt.model.ppo.rollout import Experience, response_logits, token_logprobs
from zero_chatgpt.model.training import BatchSource, TrainBackend, autocast


@dataclass
class UpdateSettings:
    """The knobs of one PPO update (a subset of `PpoConfig`), and this rank's place among `world_size`."""

    ppo_epochs: int
    mini_batch_size: int  # rollouts per rank and optimizer step
    clip_range: float
    value_clip_range: float
    temperature: float
    ptx_coef: float = 0.0
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_config(cls, cfg: PpoConfig, world_size: int = 1, rank: int = 0) -> UpdateSettings:
        """`cfg.mini_batch_size` counts rollouts over all ranks: each of `world_size` ranks takes its equal
        share, so every rank makes the same number of optimizer steps as one rank would."""
        mini_batch_size = per_rank_count("ppo.mini_batch_size", cfg.mini_batch_size, world_size)
        return cls(
            ppo_epochs=cfg.ppo_epochs,
            mini_batch_size=mini_batch_size,
            clip_range=cfg.clip_range,
            value_clip_range=cfg.value_clip_range,
            temperature=cfg.temperature,
            ptx_coef=cfg.ptx_coef,
            rank=rank,
            world_size=world_size,
        )

    def optimizer_steps(self, rollouts: int) -> int:
        """Optimizer steps one update makes over `rollouts` rollouts (the global batch): one per mini-batch."""
        return self.ppo_epochs * math.ceil(rollouts / (self.mini_batch_size * self.world_size))


def ppo_update(
    experience: Experience,
    actor: TrainBackend,
    critic: TrainBackend,
    settings: UpdateSettings,
    device: torch.device,
    ptx_batches: BatchSource | None = None,
) -> dict[str, float]:
    """`ppo_epochs` passes over `experience` in shuffled mini-batches; one actor and one critic step each.

    `actor` trains the causal LM, `critic` the `ValueModel`; their backends average gradients over ranks.
    On several ranks `experience` is the whole global batch (`collect_experience`) and every rank draws
    the same order: each global mini-batch is split between the ranks, and the losses are divided by the
    global mini-batch's token count / world_size, so the averaged gradient is the one rank's gradient.
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
        # The global RNG streams of all ranks are seeded alike (seed_everything) and sampling draws from
        # its own generator, so every rank draws this same order.
        order = torch.randperm(len(experience)).to(experience.sequences.device)
        for global_rows in order.split(settings.mini_batch_size * settings.world_size):
            token_count = experience.response_mask[global_rows].sum() / settings.world_size
            batch = experience.select(global_rows.tensor_split(settings.world_size)[settings.rank])
            with actor.micro_batch(last=True):
                with autocast(device, actor.autocast_dtype):
                    logits = response_logits(actor.forward_model, batch.sequences, batch.attention_mask, prompt_length)
                    logprobs = token_logprobs(logits, batch.responses, settings.temperature)
                    actor_loss, policy_stats = policy_loss(
                        logprobs,
                        batch.logprobs,
                        batch.advantages,
                        batch.response_mask,
                        settings.clip_range,
                        token_count,
                    )
                    stats = {"policy_loss": actor_loss.detach(), **policy_stats}
                    if settings.ptx_coef > 0:
                        # Through the bare module: a second forward of a DDP wrapper before one backward is
                        # an error, while the gradient hooks (DDP's and ZeRO's) still see the summed gradient.
                        windows = ptx_batches.next_batch().to(device)
                        ptx_loss, _ = causal_lm_window_loss(actor.module, windows)
                        actor_loss = actor_loss + settings.ptx_coef * ptx_loss
                        stats["ptx_loss"] = ptx_loss.detach()
                require_finite("policy loss", actor_loss.detach(), "lower ppo.optim.lr or raise ppo.kl_coef")
                actor.backward(actor_loss)
            actor.step()
            with critic.micro_batch(last=True):
                with autocast(device, critic.autocast_dtype):
                    values = critic.forward_model(batch.sequences, batch.attention_mask)[:, prompt_length - 1 : -1]
                    critic_loss, value_stats = value_loss(
                        values, batch.values, batch.returns, batch.response_mask, settings.value_clip_range, token_count
                    )
                require_finite("value loss", critic_loss.detach(), "lower ppo.critic_lr")
                critic.backward(critic_loss)
            critic.step()
            with torch.no_grad():
                stats["entropy"] = masked_mean(token_entropy(logits.detach()), batch.response_mask, token_count)
            stats.update(value_loss=critic_loss.detach(), **value_stats)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            steps += 1
    return {key: value / steps for key, value in totals.items()}
