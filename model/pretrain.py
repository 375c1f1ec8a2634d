"""The `pretrain` stage: a LLaMA-style causal LM trained from scratch on the token shards.

Input: a shard dir (`data_process.token_shards` format) and a tokenizer dir (Hugging Face files).
Output (in `out_dir`): an HF checkpoint of model and tokenizer (`AutoModelForCausalLM.from_pretrained(out_dir)`
works) and `metrics.jsonl`, one record per step (loss, lr, tokens/s) plus the periodic `val_loss`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from zero_chatgpt.config import PretrainConfig
from zero_chatgpt.data_process.token_shards import TokenShards
from zero_chatgpt.model.artifact_io import export_trained_model
from zero_chatgpt.model.base_model import load_causal_lm
from zero_chatgpt.model.build import build_model, count_parameters, resolve_device, seed_everything
from zero_chatgpt.model.generation import context_length
from zero_chatgpt.model.losses import causal_lm_window_loss, token_cross_entropy
from zero_chatgpt.model.throughput import peak_flops_per_s, training_flops_per_token
from zero_chatgpt.model.training import Parallel, autocast_dtype, evaluate, train

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"


class RandomWindows:
    """Training batches: `batch_size` random windows of `seq_len + 1` tokens, shape (batch_size, seq_len + 1).

    Windows are drawn from a seeded numpy Generator whose state is this source's `state_dict`, so a resumed
    run reads exactly the batches an uninterrupted one would have read.

    With `world_size` ranks, every rank draws the same global batch of `batch_size * world_size` windows
    (same seed) and keeps rows `rank * batch_size` onwards: 2 ranks x B/2 train on exactly the windows of
    1 rank x B, and the data position is the same on every rank (one copy in a checkpoint is enough).
    """

    def __init__(
        self, shards: TokenShards, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.shards = shards
        self.batch_size = batch_size
        self.window = seq_len + 1
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = rank, world_size

    def next_batch(self) -> torch.Tensor:
        if self.world_size == 1:
            return torch.from_numpy(self.shards.sample_windows(self.rng, self.batch_size, self.window))
        starts = self.rng.integers(0, len(self.shards) - self.window + 1, size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return torch.from_numpy(np.stack([self.shards.tokens(int(s), self.window) for s in mine]))

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def consecutive_val_windows(shards: TokenShards, seq_len: int, max_windows: int) -> list[torch.Tensor]:
    """Validation windows of `seq_len + 1` tokens that overlap by one, so each target is scored once.

    Returns at most `max_windows` windows, each shape (seq_len + 1,), from the start of the split; a split
    shorter than one window gives a single window over all of it.
    """
    window = min(seq_len + 1, len(shards))
    if window < 2:
        raise ValueError(f"{shards.dir}: the val split has {len(shards)} tokens; at least 2 are needed")
    windows = [torch.from_numpy(w) for w in shards.iter_windows(window, stride=window - 1)]
    if len(windows) > max_windows:
        logger.info("val_loss is measured on the first %d of %d val windows", max_windows, len(windows))
    return windows[:max_windows]


def unigram_entropy(shards: TokenShards, chunk_tokens: int = 1 << 22) -> float:
    """Entropy in nats/token of the split's token frequencies: the loss of the best context-free model."""
    counts = np.zeros(shards.vocab_size, dtype=np.int64)
    for start in range(0, len(shards), chunk_tokens):
        chunk = shards.tokens(start, min(chunk_tokens, len(shards) - start))
        counts += np.bincount(chunk, minlength=shards.vocab_size)[: shards.vocab_size]
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def make_val_loss_fn(windows: list[torch.Tensor], batch_size: int, device: torch.device):
    """An eval callback: token-weighted mean next-token loss over `windows` -> {"val_loss": float}."""

    def val_loss(model: torch.nn.Module) -> dict[str, float]:
        total, tokens = torch.zeros((), device=device), 0
        for start in range(0, len(windows), batch_size):
            batch = torch.stack(windows[start : start + batch_size]).to(device)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss, count = token_cross_entropy(logits, batch[:, 1:])
            total += loss.float() * count
            tokens += int(count)
        return {"val_loss": float(total) / tokens}

    return val_loss


def pretrain(
    cfg: PretrainConfig,
    shard_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
    parallel: Parallel | None = None,
    init_dir: Path | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Pretrain a causal LM on `shard_dir`; write the HF model + tokenizer and `metrics.jsonl` to `out_dir`.

    From scratch, the model is built from `cfg.model`; with `init_dir` (a base model, continued pretraining) it is
    that model, loaded in `dtype`, and `cfg.model` only gives the window length (capped at the model's context).

    Resume checkpoints go to `checkpoint_dir` (default `out_dir/checkpoints`); a run started again after a
    crash continues from the latest one. Pass a dir that survives the crash when `out_dir` does not (e.g.
    a temporary artifact dir that is rebuilt on every attempt). The checkpoints are deleted at the end:
    optimizer state triples the size of the artifact and the final model is saved on its own.

    `parallel` (from `model.launch`, one call per rank): every rank trains on its slice of each batch
    and joins checkpoints and the export; rank 0 alone writes `out_dir`.

    Returns metrics: val_loss, unigram_val_loss (nats/token), train_loss, tokens_seen, tokens_per_s,
    params, steps, resumed_from, and mfu on a GPU with a known peak.
    """
    shard_dir, tokenizer_dir, out_dir = Path(shard_dir), Path(tokenizer_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)
    rank, world_size = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
    is_main_process = rank == 0
    optim, model_cfg = cfg.optim, cfg.model
    seed_everything(seed)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab_size = len(tokenizer)
    train_shards = TokenShards(shard_dir, "train")
    val_shards = TokenShards(shard_dir, "val")
    if train_shards.vocab_size > vocab_size:
        raise ValueError(
            f"{shard_dir}/meta.json: vocab_size {train_shards.vocab_size} exceeds the "
            f"{vocab_size} tokens of the tokenizer in {tokenizer_dir}: shards and tokenizer disagree"
        )
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != train_shards.eos_id:
        logger.warning(
            "eos id %d in %s/meta.json differs from the tokenizer's %d",
            train_shards.eos_id,
            shard_dir,
            tokenizer.eos_token_id,
        )

    seq_len = model_cfg.max_seq_len
    if init_dir is None:
        model = build_model(
            model_cfg,
            vocab_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        model = load_causal_lm(Path(init_dir), dtype, torch_device.type, trust_remote_code, trains_all_weights=True)
        context = context_length(model)
        if context is not None and seq_len > context:
            logger.warning("pretrain.model.max_seq_len %d exceeds the base model's context %d", seq_len, context)
            seq_len = context
        logger.info("pretrain: continuing %s (pretrain.model sizes other than max_seq_len do not apply)", init_dir)
    params = count_parameters(model)
    batches = RandomWindows(train_shards, optim.batch_size, seq_len, seed, rank, world_size)
    # Every rank scores the same windows, as many as eval_batches global batches: the same val set for
    # 1 rank x B and 2 ranks x B/2.
    val_windows = consecutive_val_windows(val_shards, seq_len, optim.eval_batches * optim.batch_size * world_size)
    unigram_val_loss = unigram_entropy(val_shards)
    logger.info(
        "pretrain: %s params, %s train / %s val tokens, unigram val loss %.3f nats/token",
        f"{params:,}",
        f"{len(train_shards):,}",
        f"{len(val_shards):,}",
        unigram_val_loss,
    )

    val_loss_fn = make_val_loss_fn(val_windows, optim.batch_size, torch_device)
    base_val_loss = None
    if init_dir is not None:
        model.to(torch_device)
        base_val_loss = evaluate(model, val_loss_fn, torch_device, autocast_dtype(optim.precision, torch_device))[
            "val_loss"
        ]
        logger.info("pretrain: the base model's val loss before continuing: %.4f", base_val_loss)

    result = train(
        model,
        batches,
        causal_lm_window_loss,
        optim,
        device=torch_device,
        checkpoint_dir=checkpoint_dir,
        eval_fn=val_loss_fn,
        metrics_path=out_dir / METRICS_LOG,
        parallel=parallel,
    )

    export_trained_model(model, tokenizer, out_dir, checkpoint_dir, parallel, is_main_process)

    metrics: dict[str, Any] = {
        "val_loss": result.last_eval["val_loss"],
        "unigram_val_loss": unigram_val_loss,
        "train_loss": result.train_loss,
        "tokens_seen": result.tokens_seen,
        "tokens_per_s": result.tokens_per_s,
        "params": params,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
    }
    if base_val_loss is not None:
        metrics["base_val_loss"] = base_val_loss
    peak = peak_flops_per_s(torch_device)
    if peak is not None:
        flops_per_token = training_flops_per_token(model.config, params, seq_len)
        metrics["mfu"] = result.tokens_per_s * flops_per_token / (peak * world_size)  # tokens/s is global
    logger.info(
        "pretrain done: val_loss %.4f vs unigram %.4f, %.0f tokens/s",
        metrics["val_loss"],
        unigram_val_loss,
        result.tokens_per_s,
    )
    return metrics
