"""The `sft` stage: supervised fine-tuning of a causal LM on chat conversations, loss on the assistant's tokens only.

Data route: every configured SFT source is read (bad rows go to `rejected.jsonl`, counted), each row is
assigned by a hash of its id and the seed to one of three splits — held-out RLHF prompts (`rlhf_prompts.jsonl`,
read by build_prefs and ppo), SFT validation (`sft_val.jsonl`, read by evaluate) or SFT training. A row's prompt
is one user turn (a string) or a multi-turn message list (see `data_process.conversations`); with its response it
is one conversation, rendered by the tokenizer's own chat template and tokenized (`tokenizer.chat_encoding`). The
loss falls only on assistant tokens — the content and the closing end-of-turn token of every assistant turn, or
of the last one (`train_on`); user and system turns and the template's own tokens are labelled -100.

The start model is any Hugging Face causal LM (`base_model.load_causal_lm`) with its tokenizer: this project's
pretrained one (ChatML) or a base model's. A tokenizer without a chat template gets ChatML and its two special
tokens, and the model's embeddings grow to match (`base_model.prepare_chat_model`). With `lora.rank` > 0 only
LoRA adapters train; the export is always the merged, plain model.

Output (in `out_dir`): the HF model + tokenizer with its chat template (`AutoModelForCausalLM.from_pretrained(out_dir)`
works; its generation config stops at the template's end-of-turn token), `metrics.jsonl`, `rlhf_prompts.jsonl`,
`sft_val.jsonl`, `sft_train.jsonl` (the rows trained on; build_prefs can mine negatives from them),
`rejected.jsonl` (file names in zero_chatgpt.stage_files).

Several ranks (`parallel`, from `model.launch`): every rank reads and splits the same rows, draws the same
global batches and trains on its slice of each; the loss is normalised by the global batch's supervised
token count, so 2 ranks x B/2 compute the same loss and gradients as 1 rank x B. Rank 0 writes the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from zero_chatgpt.config import DemoCorpusConfig, SftConfig, SftSource
from zero_chatgpt.data_process.conversations import conversation, prompt_messages
from zero_chatgpt.data_process.sources import read_all_rows
from zero_chatgpt.model.artifact_io import export_trained_model, write_jsonl
from zero_chatgpt.model.base_model import load_causal_lm, prepare_chat_model
from zero_chatgpt.model.batching import ShuffledBatches, hash_fraction
from zero_chatgpt.model.build import count_parameters, resolve_device, seed_everything
from zero_chatgpt.model.generation import context_length
from zero_chatgpt.model.lora import apply_lora, merged, trainable_parameter_count
from zero_chatgpt.model.losses import IGNORE_INDEX, token_cross_entropy
from zero_chatgpt.model.training import Parallel, autocast_dtype, evaluate, train
from zero_chatgpt.stage_files import REJECTED, RLHF_PROMPTS, SFT_TRAIN, SFT_VAL
from zero_chatgpt.tokenizer.chat_encoding import EncodedConversation, TrainOn, encode_conversation, pad_id, stop_ids
from zero_chatgpt.tokenizer.coverage import (
    BYTE_FALLBACK_WARN_SHARE,
    ByteFallbackReport,
    byte_fallback_report,
    byte_piece_ids,
)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"


# ----------------------------------------------------------------------------------------------- splits


@dataclass
class SftSplits:
    """Rows `{"id", "prompt", "response", ...}` per split, each in input order."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    rlhf: list[dict[str, Any]]


def split_sft_rows(
    rows: list[dict[str, Any]], rlhf_prompt_fraction: float, val_fraction: float, seed: int
) -> SftSplits:
    """Assign rows to RLHF prompts / SFT val / SFT train by id hash and seed (independent of row order).

    A row goes to RLHF with probability `rlhf_prompt_fraction`; the rest to val with probability
    `val_fraction`, else train. When val comes out empty but train has two or more rows, the train row with
    the lowest val draw moves to val, so `val_loss` is always defined.
    """
    train_rows, val_rows, rlhf_rows = [], [], []
    for row in rows:
        if hash_fraction(row["id"], seed, "rlhf") < rlhf_prompt_fraction:
            rlhf_rows.append(row)
        elif hash_fraction(row["id"], seed, "val") < val_fraction:
            val_rows.append(row)
        else:
            train_rows.append(row)
    if not val_rows and len(train_rows) >= 2:
        moved = min(train_rows, key=lambda row: hash_fraction(row["id"], seed, "val"))
        train_rows = [row for row in train_rows if row is not moved]
        val_rows = [moved]
    return SftSplits(train_rows, val_rows, rlhf_rows)


# --------------------------------------------------------------------------------------------- encoding

# One tokenized row: `input_ids` and `labels` of equal length (labels -100 off the assistant's tokens).
SftExample = EncodedConversation


def encode_rows(
    tokenizer, rows: list[dict[str, Any]], max_seq_len: int, train_on: TrainOn = "all"
) -> tuple[list[SftExample], int, int]:
    """(examples, dropped rows, truncated rows) for SFT rows `{"prompt", "response"}` (see `encode_conversation`).

    A row's prompt is one user turn or a multi-turn message list; the loss falls on the assistant turns `train_on`
    picks, each through its end-of-turn token. A row with no supervised token left after truncation is dropped.
    """
    examples, dropped, truncated = [], 0, 0
    for row in rows:
        try:
            example = encode_conversation(
                tokenizer, conversation(row["prompt"], row["response"]), max_seq_len, train_on
            )
        except ValueError as err:
            raise ValueError(f"sft: row {row['id']} ({row.get('source', '?')}): {err}") from err
        if example is None:
            dropped += 1
            logger.warning("dropping SFT row %s: no response token fits in %d tokens", row["id"], max_seq_len)
            continue
        truncated += example.truncated
        examples.append(example)
    return examples, dropped, truncated


def check_tokenizer_coverage(
    tokenizer, rows: list[dict[str, Any]]
) -> tuple[ByteFallbackReport | None, ByteFallbackReport | None]:
    """Byte-fallback reports of the rows' prompts (every turn's text) and responses; a warning naming the characters
    when either share is above `BYTE_FALLBACK_WARN_SHARE` (see `tokenizer.coverage` for why that matters).

    (None, None) for a tokenizer without byte-fallback pieces (`<0x..>`): a byte-level BPE (GPT-2, Llama-3, Qwen)
    spells every text with its byte alphabet, which its base model was trained on, so there is nothing to report.
    """
    if not byte_piece_ids(tokenizer):
        logger.info("sft: the tokenizer has no byte-fallback pieces (byte-level BPE): no coverage report")
        return None, None
    reports = (
        byte_fallback_report(
            tokenizer, (message["content"] for row in rows for message in prompt_messages(row["prompt"]))
        ),
        byte_fallback_report(tokenizer, (row["response"] for row in rows)),
    )
    for side, report in zip(("prompt", "response"), reports):
        if report.share > BYTE_FALLBACK_WARN_SHARE:
            logger.warning(
                "sft: %.0f%% of the SFT %s tokens are byte-fallback pieces: the tokenizer has no piece for %s. "
                "A tokenizer trained on a pretraining corpus without them leaves their byte pieces untrained; "
                "pretraining text that uses these characters (or fewer such rows) fixes it",
                100 * report.share,
                side,
                report.most_common(),
            )
    return reports


def sft_batches(
    examples: list[SftExample], batch_size: int, pad_id: int, seed: int, rank: int = 0, world_size: int = 1
) -> ShuffledBatches:
    """Rank `rank`'s training batches: its slice of each seeded global batch of `batch_size * world_size` examples.

    Each batch carries `loss_normaliser`: the global batch's supervised token count / world_size, which
    `sft_loss` divides by, so the mean over ranks of the ranks' losses (and gradients) is the token-weighted mean
    over the global batch, as on one rank.
    """
    if not examples:
        raise ValueError("no SFT training examples")
    return ShuffledBatches(
        examples,
        batch_size,
        seed,
        collate=lambda rows: collate(rows, pad_id),
        rank=rank,
        world_size=world_size,
        loss_weight=supervised_token_count,
    )


def supervised_token_count(example: SftExample) -> int:
    """Tokens the loss scores in one example: labelled positions after the first (see `sft_loss`)."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def collate(examples: list[SftExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids (B, L) with `pad_id`, labels (B, L) with -100,
    attention_mask (B, L) 1 on real tokens."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.as_tensor(example.input_ids)
        labels[row, :length] = torch.as_tensor(example.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# ------------------------------------------------------------------------------------------------- loss


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Cross-entropy over response tokens of a collated batch (see `collate`): their mean, or, when the
    batch holds `loss_normaliser` (a rank's slice of a global batch, see `sft_batches`), their sum divided by it.

    Position t's logits predict token t + 1, so logits[:, :-1] are scored against labels[:, 1:].
    `tokens` (for throughput) counts all real tokens the model read, not just the supervised ones.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    loss, count = token_cross_entropy(logits[:, :-1], batch["labels"][:, 1:])
    if "loss_normaliser" in batch:
        loss = loss * count / batch["loss_normaliser"]
    return loss, {"tokens": int(batch["attention_mask"].sum())}


def make_val_loss_fn(examples: list[SftExample], batch_size: int, pad_id: int, device: torch.device):
    """An eval callback: response-token-weighted mean loss over `examples` -> {"val_loss": float}."""

    def val_loss(model: torch.nn.Module) -> dict[str, float]:
        total, tokens = 0.0, 0
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            loss, count = token_cross_entropy(logits[:, :-1], batch["labels"][:, 1:])
            total += float(loss) * int(count)
            tokens += int(count)
        return {"val_loss": total / tokens}

    return val_loss


# ------------------------------------------------------------------------------------------------ stage


def _public_row(row: dict[str, Any]) -> dict[str, Any]:
    """What later stages read of a prompt row: id, prompt, reference response, where it came from, and the short
    answer a correct response contains when the source gives one (build_prefs uses it)."""
    public = {"id": row["id"], "prompt": row["prompt"], "response": row["response"], "source": row["source"]}
    if "answer" in row:
        public["answer"] = row["answer"]
    return public


def sft(
    cfg: SftConfig,
    sft_sources: list[SftSource],
    demo: DemoCorpusConfig,
    pretrain_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
    parallel: Parallel | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Fine-tune the causal LM in `pretrain_dir` on the SFT rows; write model, tokenizer, splits and metrics to
    `out_dir`.

    `pretrain_dir` holds any Hugging Face causal LM and its tokenizer (the pretrain stage's, or a base model's),
    loaded in `dtype` (`base_model.load_dtype`), running shipped model code only with `trust_remote_code`.
    Resume checkpoints go to `checkpoint_dir` (default `out_dir/checkpoints`) and are deleted at the end.
    `parallel` (from `model.launch`, one call per rank): every rank trains on its slice of each global
    batch, evaluates the same val rows and joins the export; rank 0 alone writes `out_dir`.
    Returns metrics: val_loss, base_val_loss (the start model on the same val set, before training),
    train_loss, train_rows, val_rows (val_scored_rows of them scored), rlhf_prompts, quarantined,
    dropped_too_long, truncated, supervised_tokens (train tokens with a loss), prompt_byte_fallback_share and
    response_byte_fallback_share (see `check_tokenizer_coverage`; null for a byte-level tokenizer), chat_template
    (`tokenizer`: its own; `chatml-added`), added_tokens, lora_rank, trainable_params, steps, tokens_seen,
    tokens_per_s, params, resumed_from.
    """
    pretrain_dir, out_dir = Path(pretrain_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)
    rank, world_size = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
    is_main_process = rank == 0
    optim = cfg.optim
    if cfg.lora.rank > 0 and getattr(parallel, "zero_stage", 0) == 3:
        raise ValueError(
            "sft with lora.rank > 0 cannot run under DeepSpeed ZeRO 3: merging the adapters for the export needs "
            "whole weights on every rank. Set resources.zero_stage to 2 (or 0 / 1), or sft.lora.rank to 0"
        )
    seed_everything(seed)

    rows, quarantined = read_all_rows(sft_sources, demo, seed)
    if is_main_process:
        write_jsonl(out_dir / REJECTED, quarantined)
    if quarantined:
        logger.warning("sft: %d quarantined rows written to %s", len(quarantined), out_dir / REJECTED)
    splits = split_sft_rows(rows, cfg.rlhf_prompt_fraction, cfg.val_fraction, seed)
    if not splits.train or not splits.val:
        raise ValueError(
            f"sft: {len(rows)} usable SFT rows give {len(splits.train)} train / {len(splits.val)} val "
            f"rows after holding out {len(splits.rlhf)} RLHF prompts; add data or lower "
            "sft.rlhf_prompt_fraction"
        )
    if is_main_process:
        write_jsonl(out_dir / RLHF_PROMPTS, map(_public_row, splits.rlhf))
        write_jsonl(out_dir / SFT_VAL, map(_public_row, splits.val))
        write_jsonl(out_dir / SFT_TRAIN, map(_public_row, splits.train))

    tokenizer = AutoTokenizer.from_pretrained(pretrain_dir, trust_remote_code=trust_remote_code)
    model = load_causal_lm(pretrain_dir, dtype, torch_device.type, trust_remote_code, cfg.lora.rank == 0)
    template = prepare_chat_model(model, tokenizer)
    if template.origin == "chatml-added":
        logger.info(
            "sft: the tokenizer has no chat template: using ChatML, with %s added and the embeddings grown to %d",
            ", ".join(template.added_tokens) or "no new token",
            template.vocab_size,
        )
    max_seq_len = cfg.max_seq_len
    context = context_length(model)
    if context is not None and max_seq_len > context:
        logger.warning("sft.max_seq_len %d exceeds the pretrained context %d: using %d", max_seq_len, context, context)
        max_seq_len = context
    padding = pad_id(tokenizer)

    prompt_coverage, response_coverage = check_tokenizer_coverage(tokenizer, splits.train)
    train_examples, dropped_train, truncated_train = encode_rows(tokenizer, splits.train, max_seq_len, cfg.train_on)
    val_examples, dropped_val, truncated_val = encode_rows(tokenizer, splits.val, max_seq_len, cfg.train_on)
    if not train_examples or not val_examples:
        raise ValueError(
            f"sft: no {'train' if not train_examples else 'val'} example fits in max_seq_len "
            f"{max_seq_len}; raise sft.max_seq_len"
        )
    val_rows = len(val_examples)
    # Periodic eval reads at most eval_batches global batches (every rank scores the same rows, so 1 rank x B
    # and 2 ranks x B/2 share a val set); the whole set stays in sft_val.jsonl for `evaluate`.
    val_examples = val_examples[: optim.eval_batches * optim.batch_size * world_size]
    supervised = sum(example.supervised_tokens for example in train_examples)
    logger.info(
        "sft: %d train / %d val rows, %d RLHF prompts held out, %d quarantined, %d dropped as too long; "
        "%s supervised train tokens (train_on %s)",
        len(train_examples),
        val_rows,
        len(splits.rlhf),
        len(quarantined),
        dropped_train + dropped_val,
        f"{supervised:,}",
        cfg.train_on,
    )

    params = count_parameters(model)  # before training: ZeRO 3 leaves empty partitions in `model`
    model.to(torch_device)
    val_loss_fn = make_val_loss_fn(val_examples, optim.batch_size, padding, torch_device)
    base_val_loss = evaluate(model, val_loss_fn, torch_device, autocast_dtype(optim.precision, torch_device))[
        "val_loss"
    ]
    logger.info("sft: base val loss %.4f (the start model on the SFT val set)", base_val_loss)

    # The chat tokens added to a template-less tokenizer start random: under LoRA their embeddings train too.
    added_ids = tokenizer.convert_tokens_to_ids(list(template.added_tokens))
    model = apply_lora(model, cfg.lora, trainable_tokens=added_ids)
    trainable = trainable_parameter_count(model)
    if cfg.lora.rank > 0:
        logger.info("sft: LoRA rank %d, %s of %s parameters train", cfg.lora.rank, f"{trainable:,}", f"{params:,}")

    result = train(
        model,
        sft_batches(train_examples, optim.batch_size, padding, seed, rank, world_size),
        sft_loss,
        optim,
        device=torch_device,
        checkpoint_dir=checkpoint_dir,
        eval_fn=val_loss_fn,
        metrics_path=out_dir / METRICS_LOG,
        parallel=parallel,
    )

    # The export is plain weights (adapters folded in). Chat generation must end at the template's end-of-turn
    # token, not only at the end-of-text token.
    model = merged(model)
    model.generation_config.eos_token_id = stop_ids(tokenizer)
    model.generation_config.pad_token_id = padding
    export_trained_model(model, tokenizer, out_dir, checkpoint_dir, parallel, is_main_process)

    metrics: dict[str, Any] = {
        "val_loss": result.last_eval["val_loss"],
        "base_val_loss": base_val_loss,
        "train_loss": result.train_loss,
        "train_rows": len(train_examples),
        "val_rows": val_rows,
        "val_scored_rows": len(val_examples),
        "rlhf_prompts": len(splits.rlhf),
        "quarantined": len(quarantined),
        "dropped_too_long": dropped_train + dropped_val,
        "truncated": truncated_train + truncated_val,
        "supervised_tokens": supervised,
        "prompt_byte_fallback_share": prompt_coverage.share if prompt_coverage is not None else None,
        "response_byte_fallback_share": response_coverage.share if response_coverage is not None else None,
        "chat_template": template.origin,
        "added_tokens": list(template.added_tokens),
        "lora_rank": cfg.lora.rank,
        "trainable_params": trainable,
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "tokens_per_s": result.tokens_per_s,
        "params": params,
        "resumed_from": result.resumed_from,
    }
    logger.info(
        "sft done: val_loss %.4f (base %.4f), %.0f tokens/s", metrics["val_loss"], base_val_loss, result.tokens_per_s
    )
    return metrics
