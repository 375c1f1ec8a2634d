"""Batched, KV-cached sampling from a causal LM: the one generation routine of build_prefs, PPO and chat.

Prompts of different lengths are left-padded to a common length P so that every row's next token sits in
the last column; position ids come from the attention mask (a row's first real token is position 0), so a
padded row computes exactly what it would alone. Each step feeds one new token per row and reuses the
key/value cache. A row stops at `eos_id`: the EOS token is kept (it is part of the response the policy
chose), later columns hold `pad_id` and are masked out. Generation ends early once every row has stopped.

Shapes: B prompts, P = longest prompt, T = generated columns (<= max_new_tokens).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

logger = logging.getLogger(__name__)


@dataclass
class Rollout:
    """Prompts and what the model wrote after them.

    sequences:      (B, P + T) int64; prompts left-padded to P, then generated tokens, `pad_id` after EOS.
    attention_mask: (B, P + T) int64; 1 on real prompt tokens and on generated tokens up to and including EOS.
    prompt_length:  P.
    response_mask:  (B, T) bool; True on generated tokens up to and including EOS.
    """

    sequences: torch.LongTensor
    attention_mask: torch.LongTensor
    prompt_length: int
    response_mask: torch.BoolTensor

    @property
    def responses(self) -> torch.LongTensor:
        """(B, T) the generated columns of `sequences`."""
        return self.sequences[:, self.prompt_length :]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-pad token id lists to the longest one.

    Returns (ids, mask), both (B, P) int64 with P = the longest prompt; mask is 1 on real tokens.
    Raises ValueError on an empty batch or an empty prompt (nothing to condition the first token on).
    """
    if not prompts:
        raise ValueError("left_pad: no prompts")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"left_pad: prompt {index} is empty; every prompt needs at least one token")
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """(B, L) position ids counting real tokens only: 0 at a row's first real token; pads get 0 too."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def context_length(*models: torch.nn.Module) -> int | None:
    """The shortest context (`max_position_embeddings`) of `models`; None when none states one (BLOOM's ALiBi)."""
    lengths = []
    for model in models:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
        value = getattr(config, "max_position_embeddings", None)
        if isinstance(value, int):
            lengths.append(value)
    return min(lengths) if lengths else None


def position_kwargs(model: torch.nn.Module, position_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{"position_ids": ...}` for a model whose forward takes them; `{}` for one that has no positions to pass
    (BLOOM's ALiBi reads distances from the attention mask, so left padding needs nothing more)."""
    return {"position_ids": position_ids} if _takes_positions(type(model)) else {}


def cache_kwargs(cache) -> dict:
    """The keyword a forward takes its key/value cache by: `cache` in transformers >= 5.2x (`past_key_values` is
    deprecated there and warns on every call), `past_key_values` before."""
    return {_cache_keyword(): cache}


@functools.cache
def _cache_keyword() -> str:
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@functools.cache
def _takes_positions(model_class: type) -> bool:
    forward = getattr(model_class, "forward", None)
    if forward is None:
        return True
    parameters = inspect.signature(forward).parameters
    # Wrappers (DDP, peft) pass everything on through **kwargs: assume the model inside takes them.
    return "position_ids" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def next_token_distribution_filter(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Turn last-position logits (B, V) into sampling probabilities (B, V) with temperature and nucleus top-p.

    Top-p keeps the smallest set of most likely tokens whose probability reaches `top_p` (always at least
    the most likely one) and renormalises over it.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Mass strictly before each token: a token is kept while what precedes it is still short of top_p.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def pick_next_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.LongTensor:
    """(B, V) logits -> (B,) token ids; argmax when `temperature == 0`, else a draw from the filtered softmax."""
    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):
        raise FloatingPointError(
            "the model's next-token logits are NaN or infinite (a diverged model, or half-precision overflow: try "
            "base_model.dtype float32 / optim.precision fp32); sampling cannot go on"
        )
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = next_token_distribution_filter(logits, temperature, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    on_tokens: Callable[[torch.LongTensor], None] | None = None,
) -> Rollout:
    """Generate up to `max_new_tokens` tokens after each prompt (token id lists), batched with a KV cache.

    `temperature=0.0` is greedy decoding (argmax). A seeded `generator` (on the model's device) makes the
    draws reproducible. The model runs in eval mode (no dropout) and is put back in its previous mode; it must
    accept Hugging Face causal-LM arguments (a key/value cache, `position_ids`, `logits_to_keep`).
    Returns a `Rollout` whose T is the number of generated columns (< max_new_tokens when all rows hit EOS).
    `on_tokens`, if given, receives each step's (B,) new tokens as they are chosen (streaming output).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    batch, prompt_length = prompt_ids.shape
    limit = context_length(model)
    if limit is not None and prompt_length + max_new_tokens > limit:
        logger.warning(
            "sampling up to %d positions, beyond the model's max_position_embeddings %d",
            prompt_length + max_new_tokens,
            limit,
        )

    was_training = model.training
    model.eval()
    try:
        attention_mask = prompt_mask
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        new_tokens: list[torch.Tensor] = []
        new_mask: list[torch.Tensor] = []
        cache = DynamicCache(config=model.config) if hasattr(model, "config") else DynamicCache()
        # The first step reads the whole prompt; later steps read only the token just chosen.
        step_ids, step_positions = prompt_ids, positions_from_mask(prompt_mask)
        for _ in range(max_new_tokens):
            # logits_to_keep=1: only the last position's logits are needed, which spares the (B, P, V)
            # vocabulary projection over the whole prompt on the first step.
            out = model(
                input_ids=step_ids,
                attention_mask=attention_mask,
                **position_kwargs(model, step_positions),
                **cache_kwargs(cache),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
            token = pick_next_tokens(out.logits[:, -1, :], temperature, top_p, generator)
            token = token.masked_fill(finished, pad_id)
            alive = (~finished).long()
            new_tokens.append(token)
            new_mask.append(alive)
            finished = finished | (token == eos_id)
            if on_tokens is not None:
                on_tokens(token)
            attention_mask = torch.cat([attention_mask, alive[:, None]], dim=1)
            if bool(finished.all()):
                break
            step_ids = token[:, None]
            # A row's next position is the count of its real tokens so far (0-based).
            step_positions = (attention_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    finally:
        model.train(was_training)

    responses = torch.stack(new_tokens, dim=1)
    response_mask = torch.stack(new_mask, dim=1).bool()
    return Rollout(
        sequences=torch.cat([prompt_ids, responses], dim=1),
        attention_mask=attention_mask,
        prompt_length=prompt_length,
        response_mask=response_mask,
    )


def response_texts(tokenizer, rollout: Rollout) -> list[str]:
    """The generated text of each row: tokens under `response_mask`, special tokens (EOS included) removed."""
    texts = []
    for tokens, mask in zip(rollout.responses.tolist(), rollout.response_mask.tolist()):
        kept = [token for token, keep in zip(tokens, mask) if keep]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts


__all__ = ["Rollout", "left_pad", "positions_from_mask", "sample", "response_texts"]
