"""PPO rollouts: sample responses with the KV-cached `sample`, then score them once without gradients.

A rollout batch becomes an `Experience`: the tokens, the policy's and the reference's log probabilities of
the sampled tokens, the critic's values, the reward model's scores, and the advantages / returns built
from them by `model.ppo.maths`. Shapes: B rollouts, P prompt columns (left-padded), T response columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from zero_chatgpt.model.distributed import all_gather_objects
from zero_chatgpt.model.generation import Rollout, position_kwargs, positions_from_mask, sample
from zero_chatgpt.model.ppo.maths import gae_advantages, kl_shaped_rewards, require_finite, whiten
from zero_chatgpt.model.reward_model import backbone_and_head, per_token_scores, sequence_scores

# scores(sequences (B, P + T), attention_mask (B, P + T)) -> (B,) float: the reward of each whole sequence
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ValueModel(torch.nn.Module):
    """The critic: a transformer backbone plus a scalar head read at every position.

    Built from a reward model (`*ForSequenceClassification` with one label, of any family, possibly with LoRA
    adapters): the same backbone and score head, but the score is kept per token instead of pooled at the last
    one, so training starts from the reward model's judgement.
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_reward_model(cls, reward_model: torch.nn.Module) -> ValueModel:
        return cls(*backbone_and_head(reward_model))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, L) values (fp32)."""
        return per_token_scores(self.backbone, self.head, input_ids, attention_mask)


def reward_model_scores(reward_model: torch.nn.Module) -> RewardFn:
    """A `RewardFn` reading a sequence-classification reward model at each row's last real token."""

    def scores(sequences: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(reward_model, sequences, attention_mask)

    return scores


def response_logits(
    model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
) -> torch.Tensor:
    """(B, T, V) logits that predicted each response token (positions P - 1 .. P + T - 2)."""
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        **position_kwargs(model, positions_from_mask(attention_mask)),
        use_cache=False,
    ).logits
    return logits[:, prompt_length - 1 : -1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log probabilities (B, T) of `tokens` (B, T) under `logits / temperature` (B, T, V), in fp32.

    The temperature is the one rollouts were sampled with, so the ratio in the PPO loss compares the
    distribution that actually produced the tokens.
    """
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.gather(-1, tokens[..., None]).squeeze(-1)


@dataclass
class Experience:
    """One scored rollout batch. Tensors are (B, P + T) for tokens, (B, T) per response token, (B,) per row."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # (B, T) float, 1 up to and including EOS
    prompt_length: int
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,) raw reward-model scores, before clipping
    kl: torch.Tensor  # (B, T) per-token logprobs - ref_logprobs
    advantages: torch.Tensor  # (B, T) whitened over the whole (global) rollout batch
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.sequences.size(0)

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]

    def select(self, rows: torch.Tensor) -> Experience:
        """The sub-batch of `rows` (a 1-D index tensor), for PPO mini-batches."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return Experience(**{name: value if name == "prompt_length" else value[rows] for name, value in picked.items()})


@dataclass
class RolloutSettings:
    """What `collect_experience` needs besides the models (a subset of `PpoConfig`, plus the token ids)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    eos_id: int
    pad_id: int
    gamma: float
    gae_lambda: float
    reward_clip: float


@torch.no_grad()
def score_rollout(
    rollout: Rollout,
    actor: torch.nn.Module,
    reference: torch.nn.Module,
    critic: ValueModel,
    reward_fn: RewardFn,
    settings: RolloutSettings,
    kl_coef: float,
) -> Experience:
    """Log probabilities, values and rewards of a sampled `rollout`, then KL-shaped rewards and GAE
    (advantages not yet whitened: see `collect_experience`)."""
    sequences, attention_mask, prompt_length = rollout.sequences, rollout.attention_mask, rollout.prompt_length
    mask = rollout.response_mask.float()
    responses = sequences[:, prompt_length:]
    logprobs = token_logprobs(
        response_logits(actor, sequences, attention_mask, prompt_length), responses, settings.temperature
    )
    ref_logprobs = token_logprobs(
        response_logits(reference, sequences, attention_mask, prompt_length), responses, settings.temperature
    )
    # values[:, t] is read at the position that predicts response token t: the state before choosing it.
    values = critic(sequences, attention_mask)[:, prompt_length - 1 : -1] * mask
    scores = reward_fn(sequences, attention_mask).float()
    require_finite("reward model's scores", scores, "check the train_rm artifact (a NaN val_loss) or its dtype")
    # Checked on response tokens only: past a row's end the positions are padding, masked out below.
    real = rollout.response_mask
    require_finite("actor's log-probabilities", logprobs[real], "the policy diverged: lower ppo.optim.lr")
    require_finite("reference's log-probabilities", ref_logprobs[real], "check the sft artifact and base_model.dtype")
    require_finite("critic's values", values[real], "the critic diverged: lower ppo.critic_lr")
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, settings.reward_clip)
    advantages, returns = gae_advantages(rewards, values, mask, settings.gamma, settings.gae_lambda)
    return Experience(
        sequences=sequences,
        attention_mask=attention_mask,
        response_mask=mask,
        prompt_length=prompt_length,
        logprobs=logprobs * mask,
        ref_logprobs=ref_logprobs * mask,
        values=values,
        scores=scores,
        kl=kl,
        advantages=advantages,
        returns=returns,
    )


def gather_experience(experience: Experience, pad_id: int, world_size: int) -> Experience:
    """Every rank's `experience` concatenated in rank order, on every rank (itself on one rank).

    Ranks pad to different widths: prompts are left-padded (`pad_id`, mask 0) to the widest prompt part and
    responses right-padded (`pad_id`, mask 0, zeros per token) to the longest, as one rank's batch would be.
    """
    if world_size == 1:
        return experience
    device = experience.sequences.device
    parts = all_gather_objects(
        {
            f.name: getattr(experience, f.name) if f.name == "prompt_length" else getattr(experience, f.name).cpu()
            for f in fields(experience)
        },
        world_size,
    )
    prompt_length = max(part["prompt_length"] for part in parts)
    response_length = max(part["response_mask"].size(1) for part in parts)

    def padded(part: dict, name: str, fill: int) -> torch.Tensor:
        value = part[name]
        if name in ("sequences", "attention_mask"):  # (B, P + T): pad the prompt on the left, the response right
            left = prompt_length - part["prompt_length"]
            right = response_length - (value.size(1) - part["prompt_length"])
            return torch.nn.functional.pad(value, (left, right), value=fill)
        if value.dim() == 2:  # (B, T) per response token
            return torch.nn.functional.pad(value, (0, response_length - value.size(1)), value=0)
        return value  # (B,) per row

    gathered = {
        f.name: torch.cat([padded(part, f.name, pad_id if f.name == "sequences" else 0) for part in parts]).to(device)
        for f in fields(experience)
        if f.name != "prompt_length"
    }
    return Experience(prompt_length=prompt_length, **gathered)


def collect_experience(
    prompts: list[list[int]],
    actor: torch.nn.Module,
    reference: torch.nn.Module,
    critic: ValueModel,
    reward_fn: RewardFn,
    settings: RolloutSettings,
    kl_coef: float,
    generator: torch.Generator | None = None,
    world_size: int = 1,
) -> tuple[Experience, float]:
    """Sample one response per prompt (token id lists) and score them; returns (experience, generate_seconds).

    With `world_size` > 1 each rank passes its own prompts and gets back the whole global batch (every rank's
    rollouts, `gather_experience`), so that advantages are whitened, and PPO's mini-batches drawn, over
    exactly the rollouts one rank would hold.
    """
    started = time.perf_counter()
    rollout = sample(
        actor,
        prompts,
        settings.max_new_tokens,
        settings.eos_id,
        settings.pad_id,
        temperature=settings.temperature,
        top_p=settings.top_p,
        generator=generator,
    )
    if rollout.sequences.is_cuda:
        torch.cuda.synchronize()
    generate_seconds = time.perf_counter() - started
    experience = gather_experience(
        score_rollout(rollout, actor, reference, critic, reward_fn, settings, kl_coef), settings.pad_id, world_size
    )
    return replace(experience, advantages=whiten(experience.advantages, experience.response_mask)), generate_seconds
