"""The scalar-head reward model as its users see it: load it, and score token sequences with it.

train_rm trains it, ppo reads rewards (and initialises its critic) from it, evaluate judges answers with it.
A sequence is the chat prompt followed by the answer and `<|im_end|>`; its score is the head's output at the
last real token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from zero_chatgpt.model.generation import positions_from_mask
from zero_chatgpt.tokenizer.chat import PAD_ID


def load_reward_model(model_dir: Path, pad_id: int = PAD_ID) -> torch.nn.Module:
    """A one-label sequence-classification model from `model_dir` (an SFT causal LM or a saved reward model).

    From a causal LM the score head is new (randomly initialised) and the LM head is dropped. The pad id
    is set so Hugging Face's own forward also pools at the last real token.
    """
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, pad_token_id=pad_id)
    model.config.pad_token_id = pad_id
    return model


def per_token_scores(
    backbone: torch.nn.Module, head: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The scalar head at every position: (B, L) ids and mask -> (B, L) fp32 scores.

    Position ids follow the mask, so left-padded (rollouts) and right-padded (pairs) rows score alike.
    """
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    return head(hidden).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B,) index of each row's last real token (left or right padding)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def sequence_scores(
    reward_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Rewards (B,) of whole sequences (B, L): the head read at each row's last real token.

    Pooling by the mask rather than by the pad id (as the model's own forward does) stays right when a
    sampled response happens to contain the pad token.
    """
    scores = per_token_scores(reward_model.base_model, reward_model.score, input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
