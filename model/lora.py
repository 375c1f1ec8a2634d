"""LoRA adapters on any causal LM or scalar-head model, and their merge back into plain weights for export.

The adapters go on every linear layer of the transformer blocks (peft's `all-linear`: attention and MLP
projections whatever each family calls them — `q_proj`/`o_proj` in LLaMA and Qwen2, `c_attn`/`c_fc` in GPT-2,
`query_key_value` in BLOOM, `fc1`/`out_proj` in OPT) and never on the output layer; a config may name the modules
instead. The exported model is always merged, so loading it needs neither peft nor the base.
"""

from __future__ import annotations

from typing import Literal

import torch

TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]


def with_lora(
    model: torch.nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: list[str] | str = "all-linear",
    task_type: TaskType = "CAUSAL_LM",
    trainable_tokens: list[int] | None = None,
) -> torch.nn.Module:
    """`model` wrapped with trainable LoRA adapters of `rank` (alpha defaults to 2 x rank); all other weights are
    frozen, except a scalar head (`SEQ_CLS`), which stays trainable, and the embeddings of `trainable_tokens`
    (tokens added to the vocabulary, whose embeddings would otherwise keep their random initialisation)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError(
            "LoRA (a stage's lora.rank > 0) needs the `peft` package, which is not installed: run `pip install peft`, "
            "or set the stage's lora.rank to 0"
        ) from err

    # GPT-2 stores its projections transposed (`Conv1D`); peft must be told, or it warns and guesses.
    transposed = any(type(module).__name__ == "Conv1D" for module in model.modules())
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        fan_in_fan_out=transposed,
        trainable_token_indices=list(trainable_tokens) if trainable_tokens else None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft names the modules it could not find; say which key picks them
        raise ValueError(
            f"LoRA target_modules={target_modules!r} do not fit this {type(model).__name__}: {err}. "
            "Set the stage's `lora.target_modules` to names of its linear layers, or 'all-linear'"
        ) from err


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with LoRA weights folded in (a model without adapters is returned as it is)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a LoRA wrapper, adapters still in place (a model without adapters is returned as it is)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def apply_lora(
    model: torch.nn.Module, settings, task_type: TaskType = "CAUSAL_LM", trainable_tokens: list[int] | None = None
) -> torch.nn.Module:
    """`model` with the adapters a stage's `lora` section asks for (a `LoraSettings`), the embeddings of
    `trainable_tokens` training too; rank 0: `model` unchanged (all of it trains)."""
    if settings.rank == 0:
        return model
    return with_lora(
        model, settings.rank, settings.alpha, settings.dropout, settings.target_modules, task_type, trainable_tokens
    )
