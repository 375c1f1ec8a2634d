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
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from zero_chatgpt.model.artifact_io import export_trained_model, read_jsonl
from zero_chatgpt.model.build import count_parameters, resolve_device, seed_everything
from zero_chatgpt.model.generation import positions_from_mask
from zero_chatgpt.model.sft import SFT_TRAIN
from zero_chatgpt.model.training import Parallel, train
from zero_chatgpt.tokenizer.chat import PAD_ID, render_chat
from zero_chatgpt.config import TrainRmConfig

logger = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
CHECKPOINTS = "checkpoints"
METRICS_LOG = "metrics.jsonl"
PAIR_KEYS = ("prompt", "chosen", "rejected")
MISMATCHED_SOURCE = "mismatched_reference"
SAME_SUBJECT_SOURCE = "same_subject_reference"
# Mismatched negatives come from the MISMATCH_NEAREST most similar of MISMATCH_CANDIDATES random prompts.
MISMATCH_CANDIDATES = 256
MISMATCH_NEAREST = 8
# A subject bigram found in more prompts than this is too common to name anything (see `same_subject_pairs`).
MAX_SUBJECT_POSTING = 1000


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
    pairs = read_jsonl(path, required_str_keys=PAIR_KEYS)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def normalise_text(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt or answer: what counts as "the same text" in a split."""
    return " ".join(text.split()).casefold()


def states_the_answer(text: str, answer: str | None) -> bool:
    """Whether `text` contains the short reference `answer`, ignoring case and runs of whitespace (False without one)."""
    if answer is None or not answer.strip():
        return False
    return normalise_text(answer) in normalise_text(text)


def pair_groups(pairs: list[dict[str, str]]) -> list[list[int]]:
    """Indices of `pairs` grouped so that pairs sharing a prompt or a reference (`chosen`) answer share a group.

    The groups are the connected components of "same normalised prompt or same normalised chosen text"
    (union-find over the pairs). Paraphrased prompts of one fact share their reference answer: splitting by
    prompt alone would put the answer on both sides, and held-out accuracy would partly measure memorised
    answers. Groups come in order of their first pair; indices inside a group are ascending.
    """
    parent = list(range(len(pairs)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]  # path halving keeps the trees flat
            index = parent[index]
        return index

    first_with: dict[tuple[str, str], int] = {}
    for index, pair in enumerate(pairs):
        for key in (("prompt", normalise_text(pair["prompt"])), ("chosen", normalise_text(pair["chosen"]))):
            other = first_with.setdefault(key, index)
            parent[root(index)] = root(other)
    groups: dict[int, list[int]] = {}
    for index in range(len(pairs)):
        groups.setdefault(root(index), []).append(index)
    return list(groups.values())


def split_pairs(pairs: list[dict[str, str]], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val), file order kept: `val_fraction` of the `pair_groups` are held out, chosen by a seeded hash.

    No prompt and no reference answer appears on both sides (up to case and whitespace). A group's hash is
    that of its smallest normalised prompt, so the split does not depend on file order. With two or more
    groups both sides get at least one group.
    """
    groups = pair_groups(pairs)

    def rank(group: list[int]) -> str:
        anchor = min(normalise_text(pairs[i]["prompt"]) for i in group)
        return hashlib.sha256(f"{seed}\x00{anchor}".encode()).hexdigest()

    groups.sort(key=rank)
    num_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1) if len(groups) > 1 else 0
    val_indices = {index for group in groups[:num_val] for index in group}
    train_pairs = [pair for i, pair in enumerate(pairs) if i not in val_indices]
    val_pairs = [pair for i, pair in enumerate(pairs) if i in val_indices]
    return train_pairs, val_pairs


def _character_bigrams(text: str) -> frozenset[str]:
    """The set of adjacent character pairs of the case-folded text: a cheap, language-neutral similarity key."""
    folded = text.casefold()
    return frozenset(folded[i: i + 2] for i in range(len(folded) - 1))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _references(pairs: list[dict[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """(reference answer, short answer) of each distinct prompt: its first pair's `chosen` and `answer`."""
    references: dict[str, str] = {}
    short_answers: dict[str, str] = {}
    for pair in pairs:
        references.setdefault(pair["prompt"], pair["chosen"])
        if pair.get("answer"):
            short_answers.setdefault(pair["prompt"], pair["answer"])
    return references, short_answers


def _nearest_prompts(prompt: str, pool: list[str], keys: dict[str, frozenset[str]], count: int) -> list[str]:
    """The `count` prompts of `pool` (other than `prompt`) most similar to it by bigram Jaccard; ties by text, so
    the result does not depend on the pool's order."""
    others = [other for other in pool if other != prompt]
    others.sort(key=lambda other: (-_jaccard(keys[prompt], keys[other]), other))
    return others[:count]


def mismatched_pairs(pairs: list[dict[str, str]], per_prompt: int, seed: int,
                     candidates: int = MISMATCH_CANDIDATES, nearest: int = MISMATCH_NEAREST) -> list[dict[str, str]]:
    """Extra pairs whose rejected answer is the reference answer of another, similar prompt of `pairs`.

    For each distinct prompt, `per_prompt` pairs: chosen = its first pair's `chosen`, rejected = the `chosen`
    of another prompt with a different reference. The other prompt is drawn from the `nearest` most similar
    (character-bigram Jaccard) of `candidates` seeded random prompts: the answer to a similar question
    (the same place asked another fact, the same fact of another place) is a fluent, plausible answer that
    is still wrong, and so teaches the model to read the question; a random one is usually wrong at a glance.
    When a prompt's pairs carry a short `answer` (build_prefs copies it from the SFT row), a reference that
    states it is never its rejected answer: it answers the same question in other words. The cost is
    O(prompts x candidates), not quadratic. Built only from what it is given (training pairs, SFT references), so
    held-out prompts and answers never reach training.
    """
    references, short_answers = _references(pairs)
    prompts = list(references)
    if per_prompt == 0 or len(prompts) < 2:
        return []
    keys = {prompt: _character_bigrams(prompt) for prompt in prompts}
    rng = random.Random(seed)
    extra = []
    for prompt in prompts:
        own = references[prompt].strip()
        pool = prompts if len(prompts) <= candidates else rng.sample(prompts, candidates)
        # Another reference that says the same thing (the same fact asked in other words) is not a wrong answer.
        others = [other for other in pool if references[other].strip() != own
                  and not states_the_answer(references[other], short_answers.get(prompt))]
        closest = _nearest_prompts(prompt, others, keys, nearest)
        for other in rng.sample(closest, min(per_prompt, len(closest))):
            extra.append({"prompt": prompt, "chosen": references[prompt], "rejected": references[other],
                          "source": MISMATCHED_SOURCE})
    return extra


def same_subject_pairs(pairs: list[dict[str, str]], per_prompt: int, seed: int,
                       candidates: int = MISMATCH_CANDIDATES, nearest: int = MISMATCH_NEAREST) -> list[dict[str, str]]:
    """Extra pairs whose rejected answer is the reference of another question about the same subject.

    A prompt's look-alikes (its `nearest` most similar of `candidates` seeded random prompts) mostly ask the same
    thing about another subject. The character bigrams it shares with at least half of them are its form ("What
    is the capital of"); the rest are its subject (a name, usually). Prompts holding at least half of those
    subject bigrams ask something else about the same subject, and their references are on topic and fluent but
    do not answer: the mistake a small SFT model makes most (another fact of the same place), which the
    look-alike negatives of `mismatched_pairs` (another place) rarely show. On tiny, 92% of the negatives drawn
    this way were another fact of the same place, and held-out accuracy rose from 0.75 to 0.92 (configs/tiny.yaml).
    Each prompt gets `per_prompt` pairs drawn from the `nearest` best-matching others. A reference equal to the
    prompt's own or stating its short `answer` is never the rejected one. Postings of subject bigrams in more than
    `MAX_SUBJECT_POSTING` prompts are skipped, which bounds the cost on large sets (such bigrams name nothing).
    """
    references, short_answers = _references(pairs)
    prompts = list(references)
    if per_prompt == 0 or len(prompts) < 3:
        return []
    keys = {prompt: _character_bigrams(prompt) for prompt in prompts}
    normalised = {prompt: normalise_text(references[prompt]) for prompt in prompts}
    postings: dict[str, list[str]] = {}
    for prompt in prompts:
        for bigram in keys[prompt]:
            postings.setdefault(bigram, []).append(prompt)
    rng = random.Random(f"{seed}:same_subject")
    extra = []
    for prompt in prompts:
        pool = prompts if len(prompts) <= candidates else rng.sample(prompts, candidates)
        look_alikes = _nearest_prompts(prompt, pool, keys, nearest)
        form = {bigram for bigram in keys[prompt] if 2 * sum(bigram in keys[other] for other in look_alikes)
                >= len(look_alikes)}
        subject = keys[prompt] - form
        if not subject:
            continue
        shared: dict[str, int] = {}
        for bigram in subject:
            if len(postings[bigram]) <= MAX_SUBJECT_POSTING:
                for other in postings[bigram]:
                    shared[other] = shared.get(other, 0) + 1
        matches = [(count, other) for other, count in shared.items() if other != prompt and 2 * count >= len(subject)
                   and normalised[other] != normalised[prompt]
                   and not states_the_answer(references[other], short_answers.get(prompt))]
        matches.sort(key=lambda match: (-match[0], match[1]))
        best = [other for _, other in matches[:nearest]]
        for other in rng.sample(best, min(per_prompt, len(best))):
            extra.append({"prompt": prompt, "chosen": references[prompt], "rejected": references[other],
                          "source": SAME_SUBJECT_SOURCE})
    return extra


def sft_reference_pairs(sft_dir: Path, held_out: list[dict[str, str]]) -> list[dict[str, str]]:
    """The SFT training rows of `sft_dir` as `{prompt, chosen[, answer]}` references for `mismatched_pairs`
    and `same_subject_pairs`.

    Every SFT row is a question with a good answer, and the RM learns to read the question from many of them
    (measured on tiny: held-out accuracy 0.77 -> 0.82 with them). Rows sharing a normalised prompt or reference
    with a held-out pair are left out, so the split stays as strict as `split_pairs` makes it. An sft artifact
    without the file (written before it existed) gives none, with a warning.
    """
    path = Path(sft_dir) / SFT_TRAIN
    if not path.is_file():
        logger.warning("train_rm: %s is missing (an sft artifact from an older version): mismatched negatives come "
                       "from the preference pairs only", path)
        return []
    banned = {normalise_text(pair[key]) for pair in held_out for key in ("prompt", "chosen")}
    rows = read_jsonl(path, required_str_keys=("prompt", "response"))
    references = []
    for row in rows:
        if normalise_text(row["prompt"]) in banned or normalise_text(row["response"]) in banned:
            continue
        reference = {"prompt": row["prompt"], "chosen": row["response"]}
        if row.get("answer"):
            reference["answer"] = row["answer"]
        references.append(reference)
    logger.info("train_rm: %d of %d SFT rows are references for extra negatives (%d share a prompt or reference "
                "with a held-out pair)", len(references), len(rows), len(rows) - len(references))
    return references


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

    With `world_size` ranks every rank draws the same global batch of `batch_size * world_size` items and
    collates its own `batch_size` of them (rank r: items r * batch_size onwards), so 2 ranks x B/2 see
    exactly the items of 1 rank x B and the state is the same on every rank.
    """

    def __init__(self, items: list[Any], batch_size: int, seed: int, collate=lambda items: items, rank: int = 0,
                 world_size: int = 1) -> None:
        if not items:
            raise ValueError("ShuffledBatches: no items")
        self.items, self.batch_size, self.seed, self.collate = items, batch_size, seed, collate
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items))

    def next_batch(self) -> Any:
        picked = []
        global_size = self.batch_size * self.world_size
        while len(picked) < global_size:
            if self.position == len(self.items):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(global_size - len(picked), len(self.items) - self.position)
            picked.extend(self.items[i] for i in self._order[self.position: self.position + take])
            self.position += take
        return self.collate(picked[self.rank * self.batch_size: (self.rank + 1) * self.batch_size])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


# ---------------------------------------------------------------------------------------------- loss


def pairwise_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) rewards of a `pair_batch`.

    Scored through the model's own forward, so a DDP or DeepSpeed wrapper sees the call (its gradient
    sync hangs on it). For a pair batch this is `sequence_scores`: rows are right-padded and end in
    `<|im_end|>`, so the head's pooling at the last non-pad token is the pooling at the last real token.
    """
    mask = batch["attention_mask"]
    scores = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions_from_mask(mask),
                   use_cache=False).logits.squeeze(-1).float()
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
    """Train a reward model on `prefs_dir/pairs.jsonl` from the SFT model in `sft_dir`; save it to `out_dir`.

    `parallel` (from `model.launch`, one call per rank): every rank trains on its slice of each global
    batch of pairs, scores all held-out pairs and joins the export; rank 0 alone writes `out_dir`.

    Pairs are split by `split_pairs` (`cfg.val_fraction` of the groups of pairs linked by a shared prompt or
    reference answer are held out); training prompts, and with `cfg.mismatched_from_sft` the SFT training rows
    (`sft_reference_pairs`), get extra pairs: `cfg.mismatched_per_prompt` whose negative answers a look-alike
    question (`mismatched_pairs`) and `cfg.same_subject_per_prompt` whose negative answers another question
    about the same subject (`same_subject_pairs`). Resume checkpoints go to `checkpoint_dir` (default
    `out_dir/checkpoints`, deleted at the end). Returns metrics: val_accuracy, length_baseline_accuracy,
    val_loss, reward_margin (mean chosen - rejected score on held-out pairs), train_pairs (from pairs.jsonl),
    mismatched_pairs and same_subject_pairs (added), sft_references (SFT rows used), val_pairs, frozen_layers,
    train_loss, steps, resumed_from, params.
    """
    sft_dir, prefs_dir, out_dir = Path(sft_dir), Path(prefs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CHECKPOINTS
    torch_device = resolve_device(device)
    rank, world_size = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
    seed_everything(seed)

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    pairs = read_pairs(prefs_dir / PAIRS_FILE)
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, seed)
    if not val_pairs:
        raise ValueError(f"{prefs_dir / PAIRS_FILE}: all {len(pairs)} pairs are linked by a shared prompt or "
                         "reference answer; held-out accuracy needs at least two unrelated groups of pairs")

    sft_references = sft_reference_pairs(sft_dir, val_pairs) if cfg.mismatched_from_sft else []
    references = train_pairs + sft_references
    look_alike_pairs = mismatched_pairs(references, cfg.mismatched_per_prompt, seed)
    subject_pairs = same_subject_pairs(references, cfg.same_subject_per_prompt, seed)
    extra_pairs = look_alike_pairs + subject_pairs

    def encode(rows: list[dict[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [(encode_answer(tokenizer, row["prompt"], row["chosen"], cfg.max_seq_len),
                 encode_answer(tokenizer, row["prompt"], row["rejected"], cfg.max_seq_len)) for row in rows]

    train_encoded, val_encoded = encode(train_pairs + extra_pairs), encode(val_pairs)
    batch_size = cfg.optim.batch_size
    val_batches = [pair_batch(val_encoded[i: i + batch_size]) for i in range(0, len(val_encoded), batch_size)]

    model = load_reward_model(sft_dir)
    frozen_layers = freeze_lower_layers(model, cfg.freeze_fraction)
    params = count_parameters(model)
    logger.info("train_rm: %d train (+%d look-alike and %d same-subject negatives, from %d SFT rows too) / %d val "
                "pairs, %s params, %d lowest layers frozen", len(train_pairs), len(look_alike_pairs),
                len(subject_pairs), len(sft_references), len(val_pairs), f"{params:,}", frozen_layers)

    result = train(
        model,
        ShuffledBatches(train_encoded, batch_size, seed, collate=pair_batch, rank=rank, world_size=world_size),
        pairwise_loss,
        cfg.optim,
        device=torch_device,
        checkpoint_dir=checkpoint_dir,
        eval_fn=make_pair_eval_fn(val_batches, torch_device),
        metrics_path=out_dir / METRICS_LOG,
        parallel=parallel,
    )

    for param in model.parameters():
        param.requires_grad_(True)  # frozen flags are a training choice, not part of the saved model
    export_trained_model(model, tokenizer, out_dir, checkpoint_dir, parallel, is_main_process=rank == 0)

    metrics = {
        **{key: result.last_eval[key] for key in ("val_accuracy", "val_loss", "reward_margin")},
        "length_baseline_accuracy": length_baseline_accuracy(val_encoded),
        "train_pairs": len(train_pairs),
        "mismatched_pairs": len(look_alike_pairs),
        "same_subject_pairs": len(subject_pairs),
        "sft_references": len(sft_references),
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
