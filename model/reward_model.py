"""The scalar-head reward model as its users see it: load it, and score token sequences with it.

train_rm trains it, ppo reads rewards (and initialises its critic) from it, evaluate judges answers with it.
A sequence is the chat prompt (under the policy tokenizer's own template) followed by the answer and its
end-of-turn token; its score is the head's output at the last real token. Any family Hugging Face gives a
`*ForSequenceClassification` class works (LLaMA, Qwen2, GPT-2, BLOOM, OPT, ...): all of them keep the
transformer in `base_model` and the scalar head in `score`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from zero_chatgpt.model.base_model import check_finite_weights
from zero_chatgpt.model.generation import position_kwargs, positions_from_mask
from zero_chatgpt.model.lora import unwrapped
from zero_chatgpt.tokenizer.chat_encoding import end_of_turn_id, pad_id

logger = logging.getLogger(__name__)


def reward_pad_id(tokenizer) -> int:
    """The id a reward model's batches are right-padded with, and the one its config holds.

    The tokenizer's pad id (`chat_encoding.pad_id`), unless that is also the end-of-turn token every scored
    sequence ends with (a tokenizer without a pad token whose end-of-text token closes turns): Hugging Face's
    own pooling reads the last token that is not the pad id, so then another id that never ends a sequence
    stands in. Pads are masked out, so which id it is changes nothing else.
    """
    end = end_of_turn_id(tokenizer)
    try:
        first = pad_id(tokenizer)
    except ValueError:
        first = None
    for candidate in (first, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id, 0, 1):
        if candidate is not None and int(candidate) != end:
            return int(candidate)
    raise AssertionError("unreachable: 0 and 1 cannot both be the end-of-turn id")


def saved_pad_id(model_dir: Path) -> int:
    """The pad id a model dir declares: its config's (train_rm writes the reward model's there), else that of the
    tokenizer saved beside it."""
    config = AutoConfig.from_pretrained(model_dir)
    value = getattr(config.get_text_config(), "pad_token_id", None)
    if value is not None:
        return int(value)
    from transformers import AutoTokenizer

    try:
        return reward_pad_id(AutoTokenizer.from_pretrained(model_dir))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{model_dir}: neither its config nor a tokenizer saved beside it gives a pad token id; pass pad_id"
        ) from err


def load_reward_model(
    model_dir: Path, pad_id: int | None = None, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False
) -> torch.nn.Module:
    """A one-label sequence-classification model from `model_dir` (a causal LM or a saved reward model).

    From a causal LM the score head is new (randomly initialised) and the LM head is dropped. `pad_id` (from
    the tokenizer: `reward_pad_id`; None: the one `model_dir` declares, see `saved_pad_id`) is set so Hugging
    Face's own forward also pools at the last real token. `dtype`: as `from_pretrained` takes it (None: its
    default); remote model code runs only with `trust_remote_code`.
    """
    pad = saved_pad_id(model_dir) if pad_id is None else int(pad_id)
    options = {"dtype": dtype} if dtype is not None else {}
    # transformers reports the new head and the dropped LM head as a warning table on every load from a causal
    # LM; those two are expected, so the report is replaced by a warning about anything else.
    with _quiet_load_report():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=1,
            pad_token_id=pad,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **options,
        )
    unexpected_gaps = [key for key in info.get("missing_keys", ()) if not _is_head(key)]
    if unexpected_gaps or info.get("mismatched_keys"):
        logger.warning(
            "%s: weights not in the checkpoint were initialised at random: %s%s",
            model_dir,
            ", ".join(sorted(unexpected_gaps)[:5]) or "none",
            f"; size mismatches: {info['mismatched_keys'][:5]}" if info.get("mismatched_keys") else "",
        )
    model.config.pad_token_id = pad
    return check_finite_weights(model, model_dir)


def _is_head(key: str) -> bool:
    return key.split(".")[0] in ("score", "classifier")


@contextmanager
def _quiet_load_report():
    report_logger = logging.getLogger("transformers.modeling_utils")
    level = report_logger.level
    report_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        report_logger.setLevel(level)


def backbone_and_head(reward_model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformer, scalar head) of a `*ForSequenceClassification` model, also one wrapped with LoRA adapters
    (peft's wrapper hides the model; the adapters themselves live inside the transformer's layers)."""
    model = unwrapped(reward_model)
    head = getattr(model, "score", None)
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no scalar head `score`: a reward model must be a Hugging Face "
            "*ForSequenceClassification model of a decoder family (LLaMA, Qwen2, GPT-2, BLOOM, OPT, ...)"
        )
    return model.base_model, head


def per_token_scores(
    backbone: torch.nn.Module, head: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The scalar head at every position: (B, L) ids and mask -> (B, L) fp32 scores.

    Position ids follow the mask (where the family takes them), so left-padded (rollouts) and right-padded
    (pairs) rows score alike.
    """
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **position_kwargs(backbone, positions_from_mask(attention_mask)),
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
    scores = per_token_scores(*backbone_and_head(reward_model), input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)
