"""The `train_rm` stage: a scalar reward model initialised from the SFT model, trained on preference pairs.

Input: the sft artifact dir (HF causal LM + tokenizer) and the build_prefs dir (`pairs.jsonl`, rows
`{prompt, chosen, rejected, source}`). A sequence is the chat prompt (`<|im_start|>user ...
<|im_start|>assistant\\n`) followed by the answer and `<|im_end|>`, exactly the tokens a PPO rollout
produces, and its score is the head's output at that closing token.
Output (in `out_dir`): `LlamaForSequenceClassification` (one label) + tokenizer, loadable with
`AutoModelForSequenceClassification` / `AutoTokenizer`, and `metrics.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model.build import count_parameters, resolve_device
from model.generation import positions_from_mask
from model.training import train
from tokenizer.chat import PAD_ID, render_chat
from zero_chatgpt.config import TrainRmConfig

logger = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
PAIR_KEYS = ("prompt", "chosen", "rejected")
MISMATCHED_SOURCE = "mismatched_reference"


# ------------------------------------------------------------------------------------------- scoring


def load_reward_model(model_dir: Path, pad_id: int = PAD_ID) -> torch.nn.Module:
    """A one-label sequence-classification model from `model_dir` (an SFT causal LM or a saved reward model).

    From a causal LM the score head is new (randomly initialised) and the LM head is dropped. The pad id
    is set so Hugging Face's own forward also pools at the last real token.
    """
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, pad_token_id=pad_id)
    model.config.pad_token_id = pad_id
    return model


def per_token_scores(backbone: torch.nn.Module, head: torch.nn.Module, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at every position: (B, L) ids and mask -> (B, L) fp32 scores.

    Position ids follow the mask, so left-padded (rollouts) and right-padded (pairs) rows score alike.
    """
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=positions_from_mask(attention_mask), use_cache=False).last_hidden_state
    return head(hidden).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B,) index of each row's last real token (left or right padding)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def sequence_scores(reward_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Rewards (B,) of whole sequences (B, L): the head read at each row's last real token.

    Pooling by the mask rather than by the pad id (as the model's own forward does) stays right when a
    sampled response happens to contain the pad token.
    """
    scores = per_token_scores(reward_model.base_model, reward_model.score, input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)


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


def read_pairs(path: Path) -> list[dict[str, str]]:
    """Rows of `pairs.jsonl`; a malformed line or a missing / non-string key is an error naming file and line."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({err})") from err
            for key in PAIR_KEYS:
                if not isinstance(row.get(key), str):
                    raise ValueError(f"{path}:{line_number}: key {key!r} is missing or not a string")
            pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def split_by_prompt(pairs: list[dict[str, str]], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded hash of the prompt decides its side, so all pairs of a prompt stay together.

    With two or more distinct prompts both sides get at least one prompt.
    """
    prompts = sorted({pair["prompt"] for pair in pairs},
                     key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).hexdigest())
    num_val = min(max(1, round(val_fraction * len(prompts))), len(prompts) - 1) if len(prompts) > 1 else 0
    val_prompts = set(prompts[:num_val])
    train_pairs = [pair for pair in pairs if pair["prompt"] not in val_prompts]
    val_pairs = [pair for pair in pairs if pair["prompt"] in val_prompts]
    return train_pairs, val_pairs


def mismatched_pairs(pairs: list[dict[str, str]], per_prompt: int, seed: int) -> list[dict[str, str]]:
    """Extra pairs whose rejected answer is the reference answer of another prompt of `pairs`.

    For each distinct prompt, `per_prompt` pairs (chosen = its first pair's `chosen`, rejected = the `chosen`
    of a seeded random other prompt with a different text). A fluent, correct-looking answer to another
    question is still wrong: the sampled pairs alone teach that too slowly to a small model. Built from
    training pairs only, so held-out prompts and answers never reach training.
    """
    references: dict[str, str] = {}
    for pair in pairs:
        references.setdefault(pair["prompt"], pair["chosen"])
    prompts = list(references)
    if per_prompt == 0 or len(prompts) < 2:
        return []
    rng = random.Random(seed)
    extra = []
    for prompt in prompts:
        for _ in range(per_prompt):
            # A few draws find another answer unless (nearly) all references are the same text: then skip.
            for _attempt in range(8):
                other = rng.choice(prompts)
                if references[other].strip() != references[prompt].strip():
                    extra.append({"prompt": prompt, "chosen": references[prompt], "rejected": references[other],
                                  "source": MISMATCHED_SOURCE})
                    break
    return extra


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
        ids[index, :len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[index, :len(row)] = 1
    return ids, mask


def pair_batch(encoded: list[tuple[list[int], list[int]]], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Encoded (chosen, rejected) pairs -> {"input_ids", "attention_mask"}, both (2B, L): chosen rows first.

    One forward pass scores both answers of every pair.
    """
    ids, mask = right_pad([chosen for chosen, _ in encoded] + [rejected for _, rejected in encoded], pad_id)
    return {"input_ids": ids, "attention_mask": mask}


class ShuffledBatches:
    """A resumable `BatchSource` over a list: seeded reshuffle every epoch, `batch_size` items per batch.

    The order of epoch e is a permutation seeded by (seed, e), so the state is just (epoch, position).
    `collate` turns the list of items into the batch.
    """

    def __init__(self, items: list[Any], batch_size: int, seed: int, collate=lambda items: items) -> None:
        if not items:
            raise ValueError("ShuffledBatches: no items")
        self.items, self.batch_size, self.seed, self.collate = items, batch_size, seed, collate
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))

    def next_batch(self) -> Any:
        picked = []
        while len(picked) < self.batch_size:
            if self.position == len(self.items):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(self.batch_size - len(picked), len(self.items) - self.position)
            picked.extend(self.items[i] for i in self._order[self.position: self.position + take])
            self.position += take
        return self.collate(picked)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


# ---------------------------------------------------------------------------------------------- loss


def pairwise_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) rewards of a `pair_batch`."""
    scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    half = scores.size(0) // 2
    return scores[:half], scores[half:]


def pairwise_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Bradley-Terry loss `-logsigmoid(r_chosen - r_rejected)`, mean over pairs; the training core's loss_fn."""
    chosen, rejected = pairwise_scores(model, batch)
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    return loss, {"accuracy": (margin > 0).float().mean().detach(), "reward_margin": margin.mean().detach(),
                  "tokens": int(batch["attention_mask"].sum())}


def make_pair_eval_fn(batches: list[dict[str, torch.Tensor]], device: torch.device):
    """An eval callback over fixed pair batches -> {"val_loss", "val_accuracy", "reward_margin"} (pair means)."""

    def evaluate_pairs(model: torch.nn.Module) -> dict[str, float]:
        margins = []
        for batch in batches:
            chosen, rejected = pairwise_scores(model, {k: v.to(device) for k, v in batch.items()})
            margins.append((chosen - rejected).float())
        margin = torch.cat(margins)
        return {"val_loss": float(-F.logsigmoid(margin).mean()), "val_accuracy": float((margin > 0).float().mean()),
                "reward_margin": float(margin.mean())}

    return evaluate_pairs


def length_baseline_accuracy(encoded: list[tuple[list[int], list[int]]]) -> float:
    """Accuracy of "the longer answer wins" (in tokens; a tie counts as half right) on encoded pairs."""
    right = sum(1.0 if len(c) > len(r) else 0.5 if len(c) == len(r) else 0.0 for c, r in encoded)
    return right / len(encoded)


# --------------------------------------------------------------------------------------------- stage


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_reward_model(
    cfg: TrainRmConfig,
    sft_dir: Path,
    prefs_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Train a reward model on `prefs_dir/pairs.jsonl` from the SFT model in `sft_dir`; save it to `out_dir`.

    Pairs are split by prompt (`cfg.val_fraction` of prompts held out); training pairs get
    `cfg.mismatched_per_prompt` extra pairs per prompt (`mismatched_pairs`). Resume checkpoints go to
    `checkpoint_dir` (default `out_dir/checkpoints`, deleted at the end). Returns metrics: val_accuracy,
    length_baseline_accuracy, val_loss, reward_margin (mean chosen - rejected score on held-out pairs),
    train_pairs (from pairs.jsonl), mismatched_pairs (added), val_pairs, frozen_layers, train_loss, steps,
    resumed_from, params.
    """
    sft_dir, prefs_dir, out_dir = Path(sft_dir), Path(prefs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)
    _seed_everything(seed)

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    pairs = read_pairs(prefs_dir / PAIRS_FILE)
    train_pairs, val_pairs = split_by_prompt(pairs, cfg.val_fraction, seed)
    if not val_pairs:
        raise ValueError(f"{prefs_dir / PAIRS_FILE}: all {len(pairs)} pairs share one prompt; "
                         "held-out accuracy needs pairs from at least two prompts")

    extra_pairs = mismatched_pairs(train_pairs, cfg.mismatched_per_prompt, seed)

    def encode(rows: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [(encode_answer(tokenizer, row["prompt"], row["chosen"], cfg.max_seq_len),
                 encode_answer(tokenizer, row["prompt"], row["rejected"], cfg.max_seq_len)) for row in rows]

    train_encoded, val_encoded = encode(train_pairs + extra_pairs), encode(val_pairs)
    batch_size = cfg.optim.batch_size
    val_batches = [pair_batch(val_encoded[i: i + batch_size]) for i in range(0, len(val_encoded), batch_size)]

    model = load_reward_model(sft_dir)
    frozen_layers = freeze_lower_layers(model, cfg.freeze_fraction)
    params = count_parameters(model)
    logger.info("train_rm: %d train (+%d mismatched) / %d val pairs, %s params, %d lowest layers frozen",
                len(train_pairs), len(extra_pairs), len(val_pairs), f"{params:,}", frozen_layers)

    result = train(
        model,
        ShuffledBatches(train_encoded, batch_size, seed, collate=pair_batch),
        pairwise_loss,
        cfg.optim,
        device=torch_device,
        checkpoint_dir=checkpoint_dir,
        eval_fn=make_pair_eval_fn(val_batches, torch_device),
        metrics_path=out_dir / METRICS_LOG,
    )

    for param in model.parameters():
        param.requires_grad_(True)  # frozen flags are a training choice, not part of the saved model
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)

    metrics = {
        **{key: result.last_eval[key] for key in ("val_accuracy", "val_loss", "reward_margin")},
        "length_baseline_accuracy": length_baseline_accuracy(val_encoded),
        "train_pairs": len(train_pairs),
        "mismatched_pairs": len(extra_pairs),
        "val_pairs": len(val_pairs),
        "frozen_layers": frozen_layers,
        "train_loss": result.train_loss,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "params": params,
    }
    logger.info("train_rm done: val_accuracy %.3f (longer-answer baseline %.3f), margin %.3f",
                metrics["val_accuracy"], metrics["length_baseline_accuracy"], metrics["reward_margin"])
    return metrics
