"""The PPO maths as small pure functions: KL-shaped rewards, GAE, whitening, the clipped losses.

Shapes: B rollouts, T response columns. `mask` is (B, T), 1.0 (or True) on response tokens up to and
including EOS and 0 after it; every function ignores masked-out positions, whatever they hold.
"""

from __future__ import annotations

import torch


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, token_count: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is set; 0-d. Any shape, `mask` broadcastable to it.

    `token_count` replaces the divisor (the number of masked positions): a rank holding a slice of a
    mini-batch passes the whole mini-batch's count / world_size, so that the mean over ranks of its
    results is the token mean over the whole mini-batch.
    """
    mask = mask.to(values.dtype)
    if token_count is None:
        token_count = mask.sum()
    return (values * mask).sum() / torch.as_tensor(token_count, dtype=values.dtype).clamp(min=1e-8)


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise `values` (B, T) to unit variance (and zero mean when `shift_mean`) over the masked positions.

    Masked-out positions come back as 0. The variance is the population variance of the masked values.
    """
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    reward_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: `-kl_coef * kl_t` everywhere, plus the clipped score on each row's last token.

    scores: (B,) reward-model scores of the whole (prompt, response); logprobs / ref_logprobs: (B, T) log
    probabilities of the sampled tokens under the policy and the frozen reference; mask: (B, T).
    kl_t = logprobs - ref_logprobs is the per-token sample estimate of KL(policy || reference), so its sum
    over a row estimates the sequence KL.
    Returns (rewards (B, T), kl (B, T)), both 0 where the mask is not set.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    # The last response token of each row: the mask has no holes, so it sits at (length - 1).
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    clipped = scores.to(rewards.dtype).clamp(-reward_clip, reward_clip)
    rewards = rewards.scatter_add(1, last[:, None], clipped[:, None])
    return rewards * mask, kl


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    rewards, values, mask: (B, T); values[:, t] is the critic's estimate before token t is chosen. The
    episode ends after the last masked token (its next value is 0), so padding contributes nothing:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lambda * A_{t+1}
    Returns (advantages (B, T), returns = advantages + values (B, T)), both 0 where the mask is not set.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.size(1))):
        next_value = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * gae_lambda * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    token_count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss (to minimise), averaged over masked tokens (see `masked_mean` for
    `token_count`, which applies to the loss and the stats).

    logprobs: (B, T) under the policy being trained; old_logprobs: (B, T) at rollout time; advantages:
    (B, T). ratio = exp(logprobs - old_logprobs); loss_t = max(-A_t * ratio, -A_t * clip(ratio, 1 +- clip)).
    Returns (loss 0-d, {"clip_fraction": share of tokens where the clipped term won, "approx_kl": mean of
    old - new logprob}).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, token_count)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask, token_count)
        approx_kl = masked_mean(old_logprobs - logprobs, mask, token_count)
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    token_count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (to minimise), averaged over masked tokens (`token_count`: see `masked_mean`).

    values: (B, T) from the critic being trained; old_values: (B, T) at rollout time; returns: (B, T).
    The new value may move at most `clip_range` from the old one before the clipped term takes over:
        loss_t = 0.5 * max((V_t - R_t)^2, (clip(V_t, old_t +- clip) - R_t)^2)
    Returns (loss 0-d, {"value_clip_fraction": share of tokens where the clipped term won}).
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask, token_count)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask, token_count)
    return loss, {"value_clip_fraction": clip_fraction}


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target_kl: float, num_rollouts: int, horizon: int) -> float:
    """The next KL coefficient of a proportional controller steering the observed KL toward `target_kl`.

    The relative error is clipped to +-0.2 so one noisy batch cannot swing the coefficient, then
    kl_coef *= 1 + error * num_rollouts / horizon (Ziegler et al., 2019).
    """
    error = max(-0.2, min(0.2, observed_kl / target_kl - 1.0))
    return kl_coef * (1.0 + error * num_rollouts / horizon)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each position's next-token distribution: logits (B, T, V) -> (B, T), in fp32."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


class NonFiniteError(FloatingPointError):
    """A PPO quantity that became NaN or infinite; the message names it and what usually causes it."""


def require_finite(name: str, values: torch.Tensor, hint: str) -> None:
    """Raise `NonFiniteError` naming `name` (and `hint`) when any of `values` is NaN or infinite: one bad number
    would otherwise spread through the advantages into every weight, or crash sampling far from its cause."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteError(f"ppo: {bad} of {values.numel()} values of the {name} are NaN or infinite; {hint}")
