"""The `build_prefs` stage: preference pairs for the reward model, made from the SFT model's own answers.

For each held-out RLHF prompt of the sft artifact (`RLHF_PROMPTS`) the SFT model writes an answer
(batched, KV-cached sampling); the pair is `chosen` = the reference answer, `rejected` = the model's answer,
as Zero-Chatgpt does: the reward model learns to prefer the human answer over the current policy's. Each prompt
is sampled `samples_per_prompt` times (0: no sampling at all, the pairs are the preference sources' alone). A
prompt is one user turn or a multi-turn conversation; it is rendered with the SFT tokenizer's chat template and
generation prompt (`tokenizer.chat_encoding.encode_prompt`), sampling stops at the template's end-of-turn token,
and a prompt too long for the model's context with `max_new_tokens` after it keeps its end (counted as
`prompts_cut`). A pair whose two sides are equal after stripping whitespace carries no preference and is dropped
(counted), and so is a repeat of an earlier pair (counted). When the prompt row has a short `answer` (an SFT
source's `answer_field`; demo rows have one), a sampled answer containing it (ignoring case) is right in other
words, not worse: that pair would teach the reward model to punish a correct answer, so it is dropped too (counted
as `dropped_correct`).
User-supplied pairs from `data.pref_sources` are merged in with their file as `source`; their bad rows go
to `rejected.jsonl`.

The pairs are then split (`split_pairs`: `val_fraction` of the groups of pairs linked by a shared prompt or
reference answer are held out), and the training side gets the mined negatives `negatives` asks for (all off by
default): pairs whose rejected answer is another question's reference, drawn from the training side and, with
`from_sft_rows`, the SFT training rows that share no text with a held-out pair. Mined pairs never touch a
held-out prompt or reference.

Output (in `out_dir`, names in zero_chatgpt.stage_files): `TRAIN_PAIRS` (real pairs, then mined ones) and
`HELDOUT_PAIRS` (real pairs only), one `{"prompt", "chosen", "rejected", "source"}` per line (`prompt` a string
or a message list, as in the rows it came from), plus `id` on real pairs and `answer` on sampled pairs whose prompt
row has one (sampled pairs first, in prompt-file order, then user pairs in source order); `source` is
`sft_sample`, the user file, or the mining strategy. And `REJECTED`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from zero_chatgpt.config import BuildPrefsConfig, DemoCorpusConfig, MinedNegativesConfig, PrefSource
from zero_chatgpt.data_process.conversations import prompt_key
from zero_chatgpt.data_process.sources import is_quarantined, read_pref_rows
from zero_chatgpt.model.artifact_io import write_jsonl
from zero_chatgpt.model.base_model import load_causal_lm
from zero_chatgpt.model.batching import seeded_subset
from zero_chatgpt.model.build import resolve_device
from zero_chatgpt.model.generation import context_length, response_texts, sample
from zero_chatgpt.model.preference_pairs import (
    mismatched_pairs,
    same_subject_pairs,
    sft_reference_pairs,
    split_pairs,
    states_the_answer,
)
from zero_chatgpt.progress import ProgressBar
from zero_chatgpt.stage_files import HELDOUT_PAIRS, REJECTED, RLHF_PROMPTS, SFT_TRAIN, TRAIN_PAIRS, read_chat_rows
from zero_chatgpt.tokenizer.chat_encoding import encode_prompts, end_of_turn_id, pad_id

logger = logging.getLogger(__name__)

SAMPLED_SOURCE = "sft_sample"


def select_prompts(rows: list[dict[str, Any]], max_prompts: int | None, seed: int) -> list[dict[str, Any]]:
    """At most `max_prompts` rows, a seeded subset that does not depend on file order, kept in file order."""
    return seeded_subset(rows, max_prompts, seed, "prefs")


def prompt_ids(tokenizer, prompts: list[Any], max_prompt_tokens: int | None) -> tuple[list[list[int]], int]:
    """(the ids a model continues to answer each prompt, how many distinct prompts were cut): each prompt (a string
    or a message list) rendered with the chat template's generation prompt (`encode_prompt`); one longer than
    `max_prompt_tokens` keeps its end. A prompt asked several times is encoded once."""
    distinct = {prompt_key(prompt): prompt for prompt in prompts}
    encoded, cut = encode_prompts(tokenizer, list(distinct.values()), max_prompt_tokens)
    by_key = dict(zip(distinct, encoded))
    return [by_key[prompt_key(prompt)] for prompt in prompts], cut


def generate_answers(
    model, tokenizer, prompts: list[Any], cfg: BuildPrefsConfig, seed: int, device: torch.device
) -> tuple[list[str], dict[str, float]]:
    """The model's answer to each chat prompt (a string or a message list; same order) and generation stats.

    Prompts are sorted by length before batching so a batch pads little; the draws come from one seeded
    generator, so the answers are a function of (model, prompts, cfg, seed). Prompts longer than the
    context minus `max_new_tokens` keep their end. Stats: tokens_per_s (generated tokens per second),
    generated_tokens, unfinished (answers cut at max_new_tokens without the end-of-turn token), prompts_cut
    (distinct prompts that kept only their end).
    """
    stop_id = end_of_turn_id(tokenizer)
    padding = pad_id(tokenizer)
    context = context_length(model)
    room = max(1, context - cfg.max_new_tokens) if context is not None else None
    encoded, prompts_cut = prompt_ids(tokenizer, prompts, room)
    if prompts_cut:
        logger.warning(
            "build_prefs: %d of %d prompts are longer than the model's context %d leaves after max_new_tokens %d: "
            "they keep their last %d tokens",
            prompts_cut,
            len({prompt_key(prompt) for prompt in prompts}),
            context,
            cfg.max_new_tokens,
            room,
        )
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    generator = torch.Generator(device=device).manual_seed(seed)
    answers: list[str] = [""] * len(encoded)
    generated, unfinished, seconds = 0, 0, 0.0
    with ProgressBar("sampling answers", len(order), unit="prompt") as progress:
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            started = time.perf_counter()
            rollout = sample(
                model,
                [encoded[i] for i in batch],
                cfg.max_new_tokens,
                eos_id=stop_id,
                pad_id=padding,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                generator=generator,
            )
            seconds += time.perf_counter() - started
            batch_tokens = int(rollout.response_mask.sum())
            generated += batch_tokens
            ended = (rollout.responses == stop_id) & rollout.response_mask
            unfinished += int((~ended.any(dim=1)).sum())
            for index, text in zip(batch, response_texts(tokenizer, rollout)):
                answers[index] = text
            progress.update(len(batch), tokens=batch_tokens)
    stats = {
        "tokens_per_s": generated / seconds if seconds > 0 else 0.0,
        "generated_tokens": generated,
        "unfinished": unfinished,
        "prompts_cut": prompts_cut,
    }
    return answers, stats


def read_user_pairs(
    sources: list[PrefSource], demo: DemoCorpusConfig, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pairs with their file as `source`, quarantined rows) of every user preference source."""
    pairs, quarantined = [], []
    for source in sources:
        for row in read_pref_rows(source, demo, seed):
            if is_quarantined(row):
                quarantined.append(row)
            else:
                pairs.append(
                    {
                        "id": row["id"],
                        "prompt": row["prompt"],
                        "chosen": row["chosen"],
                        "rejected": row["rejected"],
                        "source": row["source"],
                    }
                )
    return pairs, quarantined


def _sampled_pair(row: dict[str, Any], answer: str) -> dict[str, Any]:
    """A pair of the reference and the model's answer; the row's short `answer` rides along when it has one, so
    mining can tell which other references also state it (`states_the_answer`)."""
    pair = {
        "id": row["id"],
        "prompt": row["prompt"],
        "chosen": row["response"],
        "rejected": answer,
        "source": SAMPLED_SOURCE,
    }
    if row.get("answer"):
        pair["answer"] = row["answer"]
    return pair


def _right_in_other_words(answer: str, row: dict[str, Any]) -> bool:
    """A sampled answer that states the row's short answer without repeating its reference word for word (an
    identical one is counted with the identical pairs)."""
    return answer.strip() != row["response"].strip() and states_the_answer(answer, row.get("answer"))


def _without_repeats(pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(pairs, count dropped): a (prompt, chosen, rejected) triple seen before (a prompt sampled twice to the
    same answer) is kept once, so it does not weigh double in the reward model's loss."""
    seen, kept = set(), []
    for pair in pairs:
        key = (prompt_key(pair["prompt"]), pair["chosen"].strip(), pair["rejected"].strip())
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return kept, len(pairs) - len(kept)


def _mean_chars(pairs: list[dict[str, Any]], side: str) -> float:
    return sum(len(pair[side]) for pair in pairs) / len(pairs) if pairs else 0.0


def mine_negatives(
    cfg: MinedNegativesConfig,
    train_pairs: list[dict[str, Any]],
    heldout_pairs: list[dict[str, Any]],
    sft_dir: Path,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(mined pairs, counts) for the training side: `cfg.mismatched_per_prompt` look-alike and
    `cfg.same_subject_per_prompt` same-subject negatives per prompt of `train_pairs` (and, with
    `cfg.from_sft_rows`, of the SFT training rows sharing no normalised prompt or reference with `heldout_pairs`).

    Counts: mismatched_pairs, same_subject_pairs, sft_references (SFT rows used as references).
    """
    sft_references: list[dict[str, str]] = []
    if cfg.from_sft_rows and (cfg.mismatched_per_prompt or cfg.same_subject_per_prompt):
        sft_references = sft_reference_pairs(read_chat_rows(sft_dir, SFT_TRAIN), heldout_pairs)
    references = train_pairs + sft_references
    look_alike = mismatched_pairs(references, cfg.mismatched_per_prompt, seed)
    same_subject = same_subject_pairs(references, cfg.same_subject_per_prompt, seed)
    counts = {
        "mismatched_pairs": len(look_alike),
        "same_subject_pairs": len(same_subject),
        "sft_references": len(sft_references),
    }
    return look_alike + same_subject, counts


def build_prefs(
    cfg: BuildPrefsConfig,
    pref_sources: list[PrefSource],
    demo: DemoCorpusConfig,
    sft_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Sample the SFT model on the held-out RLHF prompts, pair its answers with the references, add user pairs,
    split them into training and held-out pairs and mine the negatives `cfg.negatives` asks for.

    With `cfg.samples_per_prompt` 0 no model is loaded and nothing sampled: the pairs are the user pairs alone
    (an error when there are no `pref_sources`). The SFT model loads in `dtype` (`base_model.load_dtype`), running
    shipped model code only with `trust_remote_code`.
    Returns metrics: pairs (real ones: sampled_pairs + user_pairs), train_pairs and heldout_pairs (real ones per
    side), mismatched_pairs, same_subject_pairs and sft_references (mined, see `mine_negatives`), dropped_identical,
    dropped_repeated, dropped_correct, quarantined, prompts (sampled), prompts_cut (prompts that kept only their end
    to fit the context), mean_chosen_chars, mean_rejected_chars, tokens_per_s (generation), generated_tokens,
    unfinished.
    """
    sft_dir, out_dir = Path(sft_dir), Path(out_dir)
    if cfg.samples_per_prompt == 0 and not pref_sources:
        raise ValueError(
            "build_prefs: build_prefs.samples_per_prompt is 0 (no sampling) and data.pref_sources is empty, so "
            "there is nothing to make preference pairs from: add data.pref_sources or set "
            "build_prefs.samples_per_prompt >= 1"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)

    prompt_rows: list[dict[str, Any]] = []
    if cfg.samples_per_prompt > 0:
        prompt_rows = select_prompts(read_chat_rows(sft_dir, RLHF_PROMPTS), cfg.max_prompts, seed)
    user_pairs, quarantined = read_user_pairs(pref_sources, demo, seed)
    write_jsonl(out_dir / REJECTED, quarantined)

    stats: dict[str, float] = {"tokens_per_s": 0.0, "generated_tokens": 0, "unfinished": 0, "prompts_cut": 0}
    sampled: list[dict[str, Any]] = []
    if prompt_rows:
        tokenizer = AutoTokenizer.from_pretrained(sft_dir, trust_remote_code=trust_remote_code)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"build_prefs: the tokenizer in {sft_dir} has no chat template; the sft stage saves its model's "
                "tokenizer with one (rerun sft)"
            )
        model = load_causal_lm(sft_dir, dtype, torch_device.type, trust_remote_code).to(torch_device)
        # Each prompt is asked `samples_per_prompt` times: more pairs for the reward model without more prompts.
        repeated = [row for row in prompt_rows for _ in range(cfg.samples_per_prompt)]
        answers, stats = generate_answers(
            model, tokenizer, [row["prompt"] for row in repeated], cfg, seed, torch_device
        )
        sampled = [
            _sampled_pair(row, answer)
            for row, answer in zip(repeated, answers)
            if not _right_in_other_words(answer, row)
        ]
    dropped_correct = len(prompt_rows) * cfg.samples_per_prompt - len(sampled)

    candidates = sampled + user_pairs
    pairs = [pair for pair in candidates if pair["chosen"].strip() != pair["rejected"].strip()]
    dropped_identical = len(candidates) - len(pairs)
    pairs, dropped_repeated = _without_repeats(pairs)
    if not pairs:
        raise ValueError(
            f"build_prefs: no preference pair left ({len(prompt_rows)} prompts sampled, "
            f"{len(user_pairs)} user pairs, {dropped_identical} identical pairs and {dropped_correct} "
            "stating the reference's answer dropped)"
        )
    train_pairs, heldout_pairs = split_pairs(pairs, cfg.val_fraction, seed)
    if not heldout_pairs:
        raise ValueError(
            f"build_prefs: all {len(pairs)} pairs are linked by a shared prompt or reference answer; "
            "held-out accuracy needs at least two unrelated groups of pairs"
        )
    mined, mined_counts = mine_negatives(cfg.negatives, train_pairs, heldout_pairs, sft_dir, seed)
    write_jsonl(out_dir / TRAIN_PAIRS, train_pairs + mined)
    write_jsonl(out_dir / HELDOUT_PAIRS, heldout_pairs)

    sampled_pairs = sum(pair["source"] == SAMPLED_SOURCE for pair in pairs)
    metrics: dict[str, Any] = {
        "pairs": len(pairs),
        "sampled_pairs": sampled_pairs,
        "user_pairs": len(pairs) - sampled_pairs,
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout_pairs),
        **mined_counts,
        "dropped_identical": dropped_identical,
        "dropped_repeated": dropped_repeated,
        "dropped_correct": dropped_correct,
        "quarantined": len(quarantined),
        "prompts": len(prompt_rows),
        "mean_chosen_chars": _mean_chars(pairs, "chosen"),
        "mean_rejected_chars": _mean_chars(pairs, "rejected"),
        **stats,
    }
    logger.info(
        "build_prefs: %d pairs (%d sampled, %d user; %d train, %d held out), %d identical and %d stating "
        "the reference's answer dropped, %d quarantined, %d prompts cut to fit the context; mined %d look-alike "
        "and %d same-subject negatives; %.0f generated tokens/s",
        metrics["pairs"],
        sampled_pairs,
        metrics["user_pairs"],
        len(train_pairs),
        len(heldout_pairs),
        dropped_identical,
        dropped_correct,
        len(quarantined),
        metrics["prompts_cut"],
        mined_counts["mismatched_pairs"],
        mined_counts["same_subject_pairs"],
        metrics["tokens_per_s"],
    )
    return metrics
