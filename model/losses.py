"""Language-model losses shared by the training stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # target id that contributes no loss (prompt tokens in SFT, padding)


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy in nats and the number of scored tokens.

    logits: (batch, seq, vocab), any float dtype (computed in fp32); targets: (batch, seq) int64, already
    aligned with the logits (position t holds the id that should follow input t); `ignore_index` is skipped.
    Returns (loss: 0-d, tokens: 0-d int64).
    """
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), flat_targets, ignore_index=ignore_index)
    return loss, (flat_targets != ignore_index).sum()


def causal_lm_window_loss(model: torch.nn.Module, windows: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """Pretraining loss on token windows of shape (batch, seq_len + 1): inputs [:-1], targets [1:].

    Reading one extra token per window gives inputs and shifted targets from a single read. Matches the
    training core's `loss_fn(model, batch) -> (loss, metrics)` contract.
    """
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    loss, _ = token_cross_entropy(logits, targets)
    return loss, {"tokens": targets.numel()}
