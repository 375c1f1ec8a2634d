"""The `train_rm` stage: scalar reward models trained on preference pairs, for any causal LM family.

Input: the sft artifact dir (HF causal LM + tokenizer with its chat template) and the build_prefs dir:
`TRAIN_PAIRS` (real and mined pairs) and `HELDOUT_PAIRS` (real pairs sharing no prompt or reference with them),
rows `{prompt, chosen, rejected, source}` where `prompt` is one user turn (a string) or a conversation ending in a
user turn (see zero_chatgpt.stage_files). This stage only trains and measures; the split and the mined negatives
are build_prefs' work. A sequence is the prompt rendered by the SFT tokenizer's chat template with the answer as
the assistant's turn, through its end-of-turn token: exactly the tokens a PPO rollout produces
(`chat_encoding.encode_answer`), and its score is the head's output at that closing token (model/reward_model.py).

The reward model starts from `train_rm.init`: the SFT model, the base model, or any model directory whose
vocabulary is the SFT tokenizer's (ids must agree: PPO scores the actor's samples and trains a critic made from
the reward model, as DeepSpeed-Chat pairs a large actor with a small reward model of the same tokenizer). The
tokenizer is always the SFT model's, and the start model's embeddings grow to its added tokens. With
`train_rm.lora` only adapters (and the new head) train, merged into plain weights for the export.

With `independent_judge` a second reward model is trained the same way on a disjoint part of the training
pairs (see `judge_halves`): evaluate's second opinion, which PPO never optimised against.

Output (in `out_dir`): a `*ForSequenceClassification` (one label, pad id set) + the SFT tokenizer, loadable with
`AutoModelForSequenceClassification` / `AutoTokenizer`, `metrics.jsonl`, and the judge (the same files) in
`INDEPENDENT_JUDGE_DIR`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from zero_chatgpt.artifacts import write_json_atomic
from zero_chatgpt.config import LoraSettings, OptimConfig, TrainRmConfig
from zero_chatgpt.data_process.conversations import prompt_messages
from zero_chatgpt.model.artifact_io import export_trained_model
from zero_chatgpt.model.base_model import load_dtype
from zero_chatgpt.model.batching import ShuffledBatches
from zero_chatgpt.model.build import count_parameters, resolve_device, seed_everything
from zero_chatgpt.model.generation import position_kwargs, positions_from_mask
from zero_chatgpt.model.lora import apply_lora, merged, trainable_parameter_count, unwrapped
from zero_chatgpt.model.preference_pairs import split_pairs
from zero_chatgpt.model.reward_model import load_reward_model, reward_pad_id
from zero_chatgpt.model.training import Parallel, train
from zero_chatgpt.stage_files import HELDOUT_PAIRS, TRAIN_PAIRS, independent_judge_dir, read_pairs
from zero_chatgpt.tokenizer.chat_encoding import encode_answer

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
# Written into a finished reward model's dir when the judge is still to train (see `train_reward_model`).
FINISHED_METRICS = "finished_metrics.json"
Encoded = list[tuple[list[int], list[int]]]


# ------------------------------------------------------------------------------------------- model


def init_model_dir(init: str, sft_dir: Path, base_dir: Path | None) -> Path:
    """The directory `train_rm.init` names: `sft` -> `sft_dir`, `base` -> `base_dir`, else a model directory."""
    if init == "sft":
        return Path(sft_dir)
    if init == "base":
        if base_dir is None:
            raise ValueError(
                "train_rm.init: base starts the reward model from the base model, but no base model is "
                "configured (base_model.path is empty); set base_model.path, or train_rm.init to sft or a model dir"
            )
        return Path(base_dir)
    path = Path(init).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"train_rm.init {init!r} is neither sft, base nor a Hugging Face model directory (no config.json there)"
        )
    return path


def check_same_vocabulary(init_dir: Path, tokenizer, init: str, trust_remote_code: bool = False) -> None:
    """Raise unless the tokenizer saved in `init_dir` gives every token the id the SFT `tokenizer` gives it, and
    the SFT tokenizer has no other tokens than those added on top (a chat template's special tokens, say).

    The reward model must read the policy's token ids: PPO scores the actor's sampled ids with it as they are and
    trains a critic made from it.
    """
    try:
        source = AutoTokenizer.from_pretrained(init_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"train_rm.init {init!r}: {init_dir} has no loadable tokenizer, so its vocabulary cannot be checked "
            f"against the SFT model's ({err})"
        ) from err
    policy_vocab, source_vocab = tokenizer.get_vocab(), source.get_vocab()
    added = set(tokenizer.get_added_vocab())
    moved = sorted((token for token, index in source_vocab.items() if policy_vocab.get(token) != index), key=str)
    unknown = sorted((token for token in policy_vocab if token not in source_vocab and token not in added), key=str)
    if moved or unknown:
        examples = ", ".join(
            [f"{token!r} is {source_vocab[token]} there, {policy_vocab.get(token)} here" for token in moved[:2]]
            + [f"{token!r} is missing there" for token in unknown[:2]]
        )
        raise ValueError(
            f"train_rm.init {init!r}: the vocabulary of {init_dir} ({len(source_vocab)} tokens) differs from the "
            f"SFT tokenizer's ({len(policy_vocab)} tokens, {len(added)} of them added): {len(moved)} tokens have "
            f"other ids and {len(unknown)} are missing ({examples}). The reward model must read the policy's "
            "token ids (PPO scores the actor's samples with it and trains its critic from it): start it from a "
            "model of the same tokenizer, or set train_rm.init to sft or base"
        )


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks of a `*ForSequenceClassification` or causal LM of any family (`layers` in
    LLaMA and Qwen2, `h` in GPT-2 and BLOOM, `decoder.layers` in OPT): the first module list under the backbone
    as long as the config's layer count."""
    inner = unwrapped(model)
    count = getattr(inner.config.get_text_config(), "num_hidden_layers", None)
    for module in inner.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and count and len(module) == count:
            return module
    raise ValueError(
        f"train_rm.freeze_fraction: cannot find the {count} transformer blocks of {type(inner).__name__} "
        "(no module list of that length under its backbone); set train_rm.freeze_fraction to 0"
    )


def freeze_lower_layers(model: torch.nn.Module, fraction: float) -> int:
    """Freeze the embeddings and the lowest `round(fraction * num_layers)` blocks; returns that block count.

    Lower layers hold generic language features the preference data is too small to improve. The embeddings
    are every `nn.Embedding` of the backbone outside the blocks (tokens, and learned positions where the
    family has them). With LoRA the lower blocks' adapters are frozen too.
    """
    if fraction == 0:
        return 0
    layers = transformer_blocks(model)
    count = round(fraction * len(layers))
    if count == 0:
        return 0
    inner = unwrapped(model)
    in_blocks = {id(module) for module in layers.modules()}
    for module in inner.base_model.modules():
        if isinstance(module, torch.nn.Embedding) and id(module) not in in_blocks:
            module.requires_grad_(False)
    for layer in layers[:count]:
        layer.requires_grad_(False)
    return count


def build_reward_model(
    init_dir: Path,
    tokenizer,
    lora: LoraSettings,
    freeze_fraction: float,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, int]:
    """(the reward model to train, frozen block count): `init_dir`'s transformer with a new scalar head, its pad
    id the tokenizer's (`reward_pad_id`), its embeddings grown to the SFT tokenizer, LoRA adapters when
    `lora.rank > 0`, lower layers frozen per `freeze_fraction`. Seed the global generator first: the head's
    initialisation (and the adapters') draws from it."""
    model = load_reward_model(
        init_dir,
        reward_pad_id(tokenizer),
        dtype=load_dtype(dtype, device, trains_all_weights=lora.rank == 0),
        trust_remote_code=trust_remote_code,
    )
    grown = list(range(model.get_input_embeddings().num_embeddings, len(tokenizer)))
    if grown:
        model.resize_token_embeddings(len(tokenizer))
    # Tokens the SFT tokenizer added (a base or another model as the start) start random: under LoRA they train too.
    model = apply_lora(model, lora, "SEQ_CLS", trainable_tokens=grown)
    return model, freeze_lower_layers(model, freeze_fraction)


# ---------------------------------------------------------------------------------------------- data


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids, mask), both (B, L) int64 with L the longest row; mask 1 on real tokens."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return ids, mask


def pair_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Encoded (chosen, rejected) pairs -> {"input_ids", "attention_mask"}, both (2B, L): chosen rows first.

    One forward pass scores both answers of every pair. `pad_id` is the reward model's (`reward_pad_id`).
    """
    ids, mask = right_pad([chosen for chosen, _ in encoded] + [rejected for _, rejected in encoded], pad_id)
    return {"input_ids": ids, "attention_mask": mask}


def encode_pairs(tokenizer, rows: list[dict[str, Any]], max_seq_len: int) -> Encoded:
    """(chosen, rejected) ids of each pair row: `encode_answer` of its prompt's messages and each answer under the
    tokenizer's chat template."""
    encoded = []
    for row in rows:
        messages = prompt_messages(row["prompt"])
        encoded.append(
            (
                encode_answer(tokenizer, messages, row["chosen"], max_seq_len),
                encode_answer(tokenizer, messages, row["rejected"], max_seq_len),
            )
        )
    return encoded


# ---------------------------------------------------------------------------------------------- loss


def pairwise_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) rewards of a `pair_batch`.

    Scored through the model's own forward, so a DDP or DeepSpeed wrapper sees the call (its gradient
    sync hangs on it). For a pair batch this is `sequence_scores`: rows are right-padded with the model's pad
    id and end in the end-of-turn token, which is never that id (`reward_pad_id`), so the head's pooling at the
    last non-pad token is the pooling at the last real token.
    """
    mask = batch["attention_mask"]
    scores = (
        model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            **position_kwargs(model, positions_from_mask(mask)),
            use_cache=False,
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
    init_dir: Path,
    tokenizer,
    train_encoded: Encoded,
    val_batches: list[dict[str, torch.Tensor]],
    optim: OptimConfig,
    cfg: TrainRmConfig,
    seed: int,
    device: torch.device,
    out_dir: Path,
    checkpoint_dir: Path,
    parallel: Parallel | None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    phase: str = "reward model",
) -> dict[str, Any]:
    """Train one reward model from the model in `init_dir` on `train_encoded`, save it to `out_dir`; its
    progress is shown as `phase`.

    Returns val_accuracy, val_loss, reward_margin (on `val_batches`), train_loss, steps, resumed_from,
    frozen_layers, params, trainable_params.
    """
    rank, world_size = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
    seed_everything(seed)  # the new score head's initialisation (and LoRA's)
    model, frozen_layers = build_reward_model(
        init_dir, tokenizer, cfg.lora, cfg.freeze_fraction, dtype, device.type, trust_remote_code
    )
    params, trainable = count_parameters(model), trainable_parameter_count(model)
    result = train(
        model,
        ShuffledBatches(
            train_encoded,
            optim.batch_size,
            seed,
            collate=functools.partial(pair_batch, pad_id=reward_pad_id(tokenizer)),
            rank=rank,
            world_size=world_size,
        ),
        pairwise_loss,
        optim,
        device=device,
        checkpoint_dir=checkpoint_dir,
        eval_fn=make_pair_eval_fn(val_batches, device),
        metrics_path=out_dir / METRICS_LOG,
        parallel=parallel,
        phase=phase,
    )
    model = merged(model)  # LoRA: a plain sequence classifier, loadable without peft
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
        "trainable_params": trainable,
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
    base_dir: Path | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Train the reward model (and with `cfg.independent_judge` the judge) on build_prefs' pairs in `prefs_dir`.

    Both start from `cfg.init` (`init_model_dir`: the SFT model in `sft_dir`, the base model in `base_dir`, or a
    model dir of the same vocabulary), loaded in `dtype` (`base_model.load_dtype`), running shipped model code
    only with `trust_remote_code`; the tokenizer is always the SFT model's.
    `parallel` (from `model.launch`, one call per rank): every rank trains on its slice of each global
    batch of pairs, scores all held-out pairs and joins the export; rank 0 alone writes `out_dir`.
    Resume checkpoints go to `checkpoint_dir` (default `out_dir/checkpoints`; the judge's to a `-judge` sibling),
    deleted at the end. With the judge, the reward model is built in a `-reward_model` sibling and moved into
    `out_dir` once the judge is done, so a run killed while the judge trains does not train it again.
    Returns metrics: val_accuracy, val_loss, reward_margin (mean chosen - rejected score),
    length_baseline_accuracy (all on the held-out pairs), train_pairs, train_pairs_by_source, val_pairs,
    multi_turn_pairs (training and held-out pairs whose prompt has earlier turns), init, frozen_layers,
    train_loss, steps, resumed_from, params, trainable_params; with the judge also judge_val_accuracy,
    judge_val_loss, judge_reward_margin, judge_train_pairs, judge_steps, judge_train_loss.
    """
    sft_dir, prefs_dir, out_dir = Path(sft_dir), Path(prefs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)
    is_main_process = parallel is None or parallel.is_main_process
    if cfg.lora.rank > 0 and getattr(parallel, "zero_stage", 0) == 3:
        raise ValueError(
            "train_rm with lora.rank > 0 cannot run under DeepSpeed ZeRO 3: merging the adapters for the export "
            "needs whole weights on every rank. Set resources.zero_stage to 2 (or 0 / 1), or train_rm.lora.rank to 0"
        )

    tokenizer = AutoTokenizer.from_pretrained(sft_dir, trust_remote_code=trust_remote_code)
    init_dir = init_model_dir(cfg.init, sft_dir, base_dir)
    if cfg.init != "sft":
        check_same_vocabulary(init_dir, tokenizer, cfg.init, trust_remote_code)
    pad = reward_pad_id(tokenizer)
    train_pairs = read_pairs(prefs_dir / TRAIN_PAIRS)
    heldout_pairs = read_pairs(prefs_dir / HELDOUT_PAIRS)
    rm_pairs, judge_pairs = train_pairs, []
    if cfg.independent_judge:
        rest, judge_pairs = judge_halves(train_pairs, cfg.judge_fraction, seed)
        # The reward model PPO optimises against is worth all the data; a disjoint judge costs it half.
        rm_pairs = rest if cfg.judge_disjoint else train_pairs

    def encode(rows: list[dict[str, Any]]) -> Encoded:
        return encode_pairs(tokenizer, rows, cfg.max_seq_len)

    heldout_encoded = encode(heldout_pairs)
    size = cfg.optim.batch_size
    val_batches = [pair_batch(heldout_encoded[i : i + size], pad) for i in range(0, len(heldout_encoded), size)]
    by_source = dict(sorted(Counter(pair.get("source", "") for pair in rm_pairs).items()))
    logger.info(
        "train_rm: %d training pairs (%s), %d held out, %d for the independent judge",
        len(rm_pairs),
        ", ".join(f"{count} {source}" for source, count in by_source.items()),
        len(heldout_pairs),
        len(judge_pairs),
    )

    logger.info(
        "train_rm: the reward model starts from %s (train_rm.init %s)%s",
        init_dir,
        cfg.init,
        f", LoRA rank {cfg.lora.rank}" if cfg.lora.rank else "",
    )
    # The checkpoints' dir outlives a killed run, the artifact dir does not: a reward model finished there waits
    # for the judge to finish, and a rerun finds it.
    rm_dir = checkpoint_dir.with_name(checkpoint_dir.name + "-reward_model") if judge_pairs else out_dir
    rm_metrics = finished_metrics(rm_dir) if judge_pairs else None
    if rm_metrics is not None:
        logger.info("train_rm: the reward model in %s was finished before the restart: on to the judge", rm_dir)
    else:
        rm_dir.mkdir(parents=True, exist_ok=True)
        rm_metrics = fit_reward_model(
            init_dir,
            tokenizer,
            encode(rm_pairs),
            val_batches,
            cfg.optim,
            cfg,
            seed,
            torch_device,
            rm_dir,
            checkpoint_dir,
            parallel,
            dtype,
            trust_remote_code,
        )
        if judge_pairs and is_main_process:
            write_json_atomic(rm_dir / FINISHED_METRICS, rm_metrics)
    metrics: dict[str, Any] = {
        **rm_metrics,
        "length_baseline_accuracy": length_baseline_accuracy(heldout_encoded),
        "train_pairs": len(rm_pairs),
        "train_pairs_by_source": by_source,
        "val_pairs": len(heldout_pairs),
        "multi_turn_pairs": sum(not isinstance(row["prompt"], str) for row in [*rm_pairs, *heldout_pairs]),
        "init": cfg.init,
    }
    if judge_pairs:
        judge_dir = independent_judge_dir(out_dir)
        judge_dir.mkdir(parents=True, exist_ok=True)
        judge_val_batches = [
            pair_batch(heldout_encoded[i : i + cfg.judge_optim.batch_size], pad)
            for i in range(0, len(heldout_encoded), cfg.judge_optim.batch_size)
        ]
        judge = fit_reward_model(
            init_dir,
            tokenizer,
            encode(judge_pairs),
            judge_val_batches,
            cfg.judge_optim,
            cfg,
            seed + 1,
            torch_device,
            judge_dir,
            checkpoint_dir.with_name(checkpoint_dir.name + "-judge"),
            parallel,
            dtype,
            trust_remote_code,
            phase="judge",
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
        if is_main_process:
            move_finished(rm_dir, out_dir)
    logger.info(
        "train_rm done: val_accuracy %.3f (longer-answer baseline %.3f), margin %.3f%s",
        metrics["val_accuracy"],
        metrics["length_baseline_accuracy"],
        metrics["reward_margin"],
        f"; independent judge {metrics['judge_val_accuracy']:.3f}" if judge_pairs else "",
    )
    return metrics


def finished_metrics(model_dir: Path) -> dict[str, Any] | None:
    """The metrics of the reward model finished in `model_dir` (`FINISHED_METRICS`), or None when there is none."""
    marker = model_dir / FINISHED_METRICS
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def move_finished(model_dir: Path, out_dir: Path) -> None:
    """Move a finished reward model's files from `model_dir` into `out_dir`, then drop the emptied dir."""
    (model_dir / FINISHED_METRICS).unlink()
    for path in model_dir.iterdir():
        os.replace(path, out_dir / path.name)
    model_dir.rmdir()
