"""The `train_rm` stage: scalar reward models initialised from the SFT model, trained on preference pairs.

Input: the sft artifact dir (HF causal LM + tokenizer) and the build_prefs dir: `TRAIN_PAIRS` (real and mined
pairs) and `HELDOUT_PAIRS` (real pairs sharing no prompt or reference with them), rows `{prompt, chosen,
rejected, source}` (see zero_chatgpt.stage_files). This stage only trains and measures; the split and the
mined negatives are build_prefs' work. A sequence is the chat prompt (`<|im_start|>user ...
<|im_start|>assistant\\n`) followed by the answer and `<|im_end|>`, exactly the tokens a PPO rollout
produces, and its score is the head's output at that closing token (model/reward_model.py).

With `independent_judge` a second reward model is trained the same way on a disjoint part of the training
pairs (see `judge_halves`): evaluate's second opinion, which PPO never optimised against.

Output (in `out_dir`): `LlamaForSequenceClassification` (one label) + tokenizer, loadable with
`AutoModelForSequenceClassification` / `AutoTokenizer`, `metrics.jsonl`, and the judge (the same files) in
`INDEPENDENT_JUDGE_DIR`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from zero_chatgpt.config import OptimConfig, TrainRmConfig
from zero_chatgpt.model.artifact_io import export_trained_model
from zero_chatgpt.model.batching import ShuffledBatches
from zero_chatgpt.model.build import count_parameters, resolve_device, seed_everything
from zero_chatgpt.model.generation import positions_from_mask
from zero_chatgpt.model.preference_pairs import split_pairs
from zero_chatgpt.model.reward_model import load_reward_model
from zero_chatgpt.model.training import Parallel, train
from zero_chatgpt.stage_files import HELDOUT_PAIRS, TRAIN_PAIRS, independent_judge_dir, read_pairs
from zero_chatgpt.tokenizer.chat import PAD_ID, render_chat

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
Encoded = list[tuple[list[int], list[int]]]


# ------------------------------------------------------------------------------------------- model


def freeze_lower_layers(model: torch.nn.Module, fraction: float) -> int:
    """Freeze the embeddings and the lowest `round(fraction * num_layers)` blocks; returns that block count.

    Lower layers hold generic language features the preference data is too small to improve.
    """
    layers = model.base_model.layers
    count = round(fraction * len(layers))
    if count == 0:
        return 0
    for param in model.base_model.embed_tokens.parameters():
        param.requires_grad_(False)
    for layer in layers[:count]:
        for param in layer.parameters():
            param.requires_grad_(False)
    return count


# ---------------------------------------------------------------------------------------------- data


def encode_answer(tokenizer, prompt: str, answer: str, max_seq_len: int) -> list[int]:
    """Ids of the chat rendering of (prompt, answer), ending at the answer's `<|im_end|>`; the end is kept if too long.

    The whole text is encoded at once, as SFT encodes it, so the answer tokens look like what the SFT policy
    writes in PPO rollouts.
    """
    text = render_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    ids = tokenizer(text.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    return list(ids)[-max_seq_len:]


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, mask), both (B, L) int64 with L the longest row; mask 1 on real tokens."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids, mask


def pair_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Encoded (chosen, rejected) pairs -> {"input_ids", "attention_mask"}, both (2B, L): chosen rows first.

    One forward pass scores both answers of every pair.
    """
    ids, mask = right_pad([chosen for chosen, _ in encoded] + [rejected for _, rejected in encoded], pad_id)
    return {"input_ids": ids, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------- loss


def pairwise_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) rewards of a `pair_batch`.

    Scored through the model's own forward, so a DDP or DeepSpeed wrapper sees the call (its gradient
    sync hangs on it). For a pair batch this is `sequence_scores`: rows are right-padded and end in
    `<|im_end|>`, so the head's pooling at the last non-pad token is the pooling at the last real token.
    """
    mask = batch["attention_mask"]
    scores = (
        model(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
        )
        .logits.squeeze(-1)
        .float()
    )
    half = scores.size(0) // 2
    return scores[:half], scores[half:]


def pairwise_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Bradley-Terry loss `-logsigmoid(r_chosen - r_rejected)`, mean over pairs; the training core's loss_fn."""
    chosen, rejected = pairwise_scores(model, batch)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {
        "accuracy": (margin > 0).float().mean().detach(),
        "reward_margin": margin.mean().detach(),
        "tokens": int(batch["attention_mask"].sum()),
    }


def make_pair_eval_fn(batches: list[dict[str, torch.Tensor]], device: torch.device):
    """An eval callback over fixed pair batches -> {"val_loss", "val_accuracy", "reward_margin"} (pair means)."""

    def evaluate_pairs(model: torch.nn.Module) -> dict[str, float]:
        margins = []
        for batch in batches:
            chosen, rejected = pairwise_scores(model, {k: v.to(device) for k, v in batch.items()})
            margins.append((chosen - rejected).float())
        margin = torch.cat(margins)
        return {
            "val_loss": float(-F.logsigmoid(margin).mean()),
            "val_accuracy": float((margin > 0).float().mean()),
            "reward_margin": float(margin.mean()),
        }

    return evaluate_pairs


def length_baseline_accuracy(encoded: list[tuple[list[int], list[int]]]) -> float:
    """Accuracy of "the longer answer wins" (in tokens; a tie counts as half right) on encoded pairs."""
    right = sum(1.0 if len(c) > len(r) else 0.5 if len(c) == len(r) else 0.0 for c, r in encoded)
    return right / len(encoded)


# --------------------------------------------------------------------------------------------- stage


def judge_halves(
    train_pairs: list[dict[str, str]], judge_fraction: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(the rest, the independent judge's pairs): a partition of build_prefs' training pairs.

    `split_pairs` with seed + 1 gives `judge_fraction` of the groups of pairs linked by a shared normalised prompt
    or reference answer to the judge; a mined pair goes with the real pairs of its prompt. With
    `train_rm.judge_disjoint` the reward model trains on the rest only, so the two judges share no pair, prompt
    or reference answer; by default it trains on all pairs (the judge is then a second model on a subset).
    Both are measured on the same held-out pairs, which neither trained on.
    """
    rm_pairs, judge_pairs = split_pairs(train_pairs, judge_fraction, seed + 1)
    if not judge_pairs:
        raise ValueError(
            f"train_rm.independent_judge: all {len(train_pairs)} training pairs are linked by a shared "
            "prompt or reference answer, so no disjoint half is left for the judge; set "
            "train_rm.independent_judge=false or add data"
        )
    return rm_pairs, judge_pairs


def fit_reward_model(
    sft_dir: Path,
    tokenizer,
    train_encoded: Encoded,
    val_batches: list[dict[str, torch.Tensor]],
    optim: OptimConfig,
    freeze_fraction: float,
    seed: int,
    device: torch.device,
    out_dir: Path,
    checkpoint_dir: Path,
    parallel: Parallel | None,
) -> dict[str, Any]:
    """Train one reward model from the SFT model in `sft_dir` on `train_encoded`, save it to `out_dir`.

    Returns val_accuracy, val_loss, reward_margin (on `val_batches`), train_loss, steps, resumed_from,
    frozen_layers, params.
    """
    rank, world_size = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
    seed_everything(seed)  # the new score head's initialisation
    model = load_reward_model(sft_dir)
    frozen_layers = freeze_lower_layers(model, freeze_fraction)
    params = count_parameters(model)
    result = train(
        model,
        ShuffledBatches(train_encoded, optim.batch_size, seed, collate=pair_batch, rank=rank, world_size=world_size),
        pairwise_loss,
        optim,
        device=device,
        checkpoint_dir=checkpoint_dir,
        eval_fn=make_pair_eval_fn(val_batches, device),
        metrics_path=out_dir / METRICS_LOG,
        parallel=parallel,
    )
    for param in model.parameters():
        param.requires_grad_(True)  # frozen flags are a training choice, not part of the saved model
    export_trained_model(model, tokenizer, out_dir, checkpoint_dir, parallel, is_main_process=rank == 0)
    return {
        **{key: result.last_eval[key] for key in ("val_accuracy", "val_loss", "reward_margin")},
        "train_loss": result.train_loss,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "frozen_layers": frozen_layers,
        "params": params,
    }


def train_reward_model(
    cfg: TrainRmConfig,
    sft_dir: Path,
    prefs_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Train the reward model (and with `cfg.independent_judge` the judge) on build_prefs' pairs in `prefs_dir`.

    `parallel` (from `model.launch`, one call per rank): every rank trains on its slice of each global
    batch of pairs, scores all held-out pairs and joins the export; rank 0 alone writes `out_dir`.
    Resume checkpoints go to `checkpoint_dir` (default `out_dir/checkpoints`; the judge's to a `-judge` sibling),
    deleted at the end. Returns metrics: val_accuracy, val_loss, reward_margin (mean chosen - rejected score),
    length_baseline_accuracy (all on the held-out pairs), train_pairs, train_pairs_by_source, val_pairs,
    frozen_layers, train_loss, steps, resumed_from, params; with the judge also judge_val_accuracy,
    judge_val_loss, judge_reward_margin, judge_train_pairs, judge_steps, judge_train_loss.
    """
    sft_dir, prefs_dir, out_dir = Path(sft_dir), Path(prefs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    train_pairs = read_pairs(prefs_dir / TRAIN_PAIRS)
    heldout_pairs = read_pairs(prefs_dir / HELDOUT_PAIRS)
    rm_pairs, judge_pairs = train_pairs, []
    if cfg.independent_judge:
        rest, judge_pairs = judge_halves(train_pairs, cfg.judge_fraction, seed)
        # The reward model PPO optimises against is worth all the data; a disjoint judge costs it half.
        rm_pairs = rest if cfg.judge_disjoint else train_pairs

    def encode(rows: list[dict[str, str]]) -> Encoded:
        return [
            (
                encode_answer(tokenizer, row["prompt"], row["chosen"], cfg.max_seq_len),
                encode_answer(tokenizer, row["prompt"], row["rejected"], cfg.max_seq_len),
            )
            for row in rows
        ]

    heldout_encoded = encode(heldout_pairs)
    size = cfg.optim.batch_size
    val_batches = [pair_batch(heldout_encoded[i : i + size]) for i in range(0, len(heldout_encoded), size)]
    by_source = dict(sorted(Counter(pair.get("source", "") for pair in rm_pairs).items()))
    logger.info(
        "train_rm: %d training pairs (%s), %d held out, %d for the independent judge",
        len(rm_pairs),
        ", ".join(f"{count} {source}" for source, count in by_source.items()),
        len(heldout_pairs),
        len(judge_pairs),
    )

    rm_metrics = fit_reward_model(
        sft_dir,
        tokenizer,
        encode(rm_pairs),
        val_batches,
        cfg.optim,
        cfg.freeze_fraction,
        seed,
        torch_device,
        out_dir,
        checkpoint_dir,
        parallel,
    )
    metrics: dict[str, Any] = {
        **rm_metrics,
        "length_baseline_accuracy": length_baseline_accuracy(heldout_encoded),
        "train_pairs": len(rm_pairs),
        "train_pairs_by_source": by_source,
        "val_pairs": len(heldout_pairs),
    }
    if judge_pairs:
        judge_dir = independent_judge_dir(out_dir)
        judge_dir.mkdir(parents=True, exist_ok=True)
        judge_val_batches = [
            pair_batch(heldout_encoded[i : i + cfg.judge_optim.batch_size])
            for i in range(0, len(heldout_encoded), cfg.judge_optim.batch_size)
        ]
        judge = fit_reward_model(
            sft_dir,
            tokenizer,
            encode(judge_pairs),
            judge_val_batches,
            cfg.judge_optim,
            cfg.freeze_fraction,
            seed + 1,
            torch_device,
            judge_dir,
            checkpoint_dir.with_name(checkpoint_dir.name + "-judge"),
            parallel,
        )
        metrics.update(
            {
                "judge_train_pairs": len(judge_pairs),
                **{
                    f"judge_{key}": judge[key]
                    for key in ("val_accuracy", "val_loss", "reward_margin", "train_loss", "steps")
                },
            }
        )
    logger.info(
        "train_rm done: val_accuracy %.3f (longer-answer baseline %.3f), margin %.3f%s",
        metrics["val_accuracy"],
        metrics["length_baseline_accuracy"],
        metrics["reward_margin"],
        f"; independent judge {metrics['judge_val_accuracy']:.3f}" if judge_pairs else "",
    )
    return metrics
