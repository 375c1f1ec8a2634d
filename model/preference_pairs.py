"""What build_prefs does to preference pairs besides sampling them: the strict held-out split and the mined
negatives.

The split (`split_pairs`) keeps every normalised prompt and every reference answer on one side. Mined negatives
(`mismatched_pairs`, `same_subject_pairs`) pair a reference with another question's reference, built only from
what they are given: build_prefs gives them the train side and the SFT rows that share no text with the
held-out side (`sft_reference_pairs`), so nothing held out reaches training.

A prompt is a string (one user turn) or a message list (multi-turn); wherever prompts are compared, grouped or
keyed they go through `prompt_key` (a string, the plain text itself for a one-turn prompt), and pairs keep the
prompt as they got it.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

from zero_chatgpt.data_process.conversations import prompt_key
from zero_chatgpt.progress import progress_over

logger = logging.getLogger(__name__)

MISMATCHED_SOURCE = "mismatched_reference"
SAME_SUBJECT_SOURCE = "same_subject_reference"
# Mismatched negatives come from the MISMATCH_NEAREST most similar of MISMATCH_CANDIDATES random prompts.
MISMATCH_CANDIDATES = 256
MISMATCH_NEAREST = 8
# A subject bigram found in more prompts than this is too common to name anything (see `same_subject_pairs`).
MAX_SUBJECT_POSTING = 1000


def normalise_text(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt or answer: what counts as "the same text" in a split."""
    return " ".join(text.split()).casefold()


def normalise_prompt(prompt: Any) -> str:
    """`normalise_text` of a prompt, plain or multi-turn (see `prompt_key`)."""
    return normalise_text(prompt_key(prompt))


def states_the_answer(text: str, answer: str | None) -> bool:
    """Whether `text` contains the short reference `answer`, ignoring case and runs of whitespace (False without
    one)."""
    if answer is None or not answer.strip():
        return False
    return normalise_text(answer) in normalise_text(text)


def pair_groups(pairs: list[dict[str, Any]]) -> list[list[int]]:
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
        for key in (("prompt", normalise_prompt(pair["prompt"])), ("chosen", normalise_text(pair["chosen"]))):
            other = first_with.setdefault(key, index)
            parent[root(index)] = root(other)
    groups: dict[int, list[int]] = {}
    for index in range(len(pairs)):
        groups.setdefault(root(index), []).append(index)
    return list(groups.values())


def split_pairs(pairs: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val), file order kept: `val_fraction` of the `pair_groups` are held out, chosen by a seeded hash.

    No prompt and no reference answer appears on both sides (up to case and whitespace). A group's hash is
    that of its smallest normalised prompt, so the split does not depend on file order. With two or more
    groups both sides get at least one group.
    """
    groups = pair_groups(pairs)

    def rank(group: list[int]) -> str:
        anchor = min(normalise_prompt(pairs[i]["prompt"]) for i in group)
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
    return frozenset(folded[i : i + 2] for i in range(len(folded) - 1))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _references(pairs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(prompt, reference answer, short answer) of each distinct prompt, keyed by its `prompt_key`: its first pair's
    `prompt`, `chosen` and `answer`."""
    prompts: dict[str, Any] = {}
    references: dict[str, str] = {}
    short_answers: dict[str, str] = {}
    for pair in pairs:
        key = prompt_key(pair["prompt"])
        prompts.setdefault(key, pair["prompt"])
        references.setdefault(key, pair["chosen"])
        if pair.get("answer"):
            short_answers.setdefault(key, pair["answer"])
    return prompts, references, short_answers


def _nearest_prompts(prompt: str, pool: list[str], keys: dict[str, frozenset[str]], count: int) -> list[str]:
    """The `count` prompts of `pool` (other than `prompt`) most similar to it by bigram Jaccard; ties by text, so
    the result does not depend on the pool's order."""
    others = [other for other in pool if other != prompt]
    others.sort(key=lambda other: (-_jaccard(keys[prompt], keys[other]), other))
    return others[:count]


def mismatched_pairs(
    pairs: list[dict[str, Any]],
    per_prompt: int,
    seed: int,
    candidates: int = MISMATCH_CANDIDATES,
    nearest: int = MISMATCH_NEAREST,
) -> list[dict[str, Any]]:
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
    originals, references, short_answers = _references(pairs)
    prompts = list(references)
    if per_prompt == 0 or len(prompts) < 2:
        return []
    keys = {prompt: _character_bigrams(prompt) for prompt in prompts}
    rng = random.Random(seed)
    extra = []
    for prompt in progress_over(prompts, "mining look-alike negatives", unit="prompt"):
        own = references[prompt].strip()
        pool = prompts if len(prompts) <= candidates else rng.sample(prompts, candidates)
        # Another reference that says the same thing (the same fact asked in other words) is not a wrong answer.
        others = [
            other
            for other in pool
            if references[other].strip() != own and not states_the_answer(references[other], short_answers.get(prompt))
        ]
        closest = _nearest_prompts(prompt, others, keys, nearest)
        for other in rng.sample(closest, min(per_prompt, len(closest))):
            extra.append(
                {
                    "prompt": originals[prompt],
                    "chosen": references[prompt],
                    "rejected": references[other],
                    "source": MISMATCHED_SOURCE,
                }
            )
    return extra


def same_subject_pairs(
    pairs: list[dict[str, Any]],
    per_prompt: int,
    seed: int,
    candidates: int = MISMATCH_CANDIDATES,
    nearest: int = MISMATCH_NEAREST,
) -> list[dict[str, Any]]:
    """Extra pairs whose rejected answer is the reference of another question about the same subject.

    A prompt's look-alikes (its `nearest` most similar of `candidates` seeded random prompts) mostly ask the same
    thing about another subject. The character bigrams it shares with at least half of them are its form ("What
    is the capital of"); the rest are its subject (a name, usually). Prompts holding at least half of those
    subject bigrams ask something else about the same subject, and their references are on topic and fluent but
    do not answer: the mistake a small SFT model makes most (another fact of the same place), which the
    look-alike negatives of `mismatched_pairs` (another place) rarely show (docs/what_we_tried.md has the figures).
    Each prompt gets `per_prompt` pairs drawn from the `nearest` best-matching others. A reference equal to the
    prompt's own or stating its short `answer` is never the rejected one. Postings of subject bigrams in more than
    `MAX_SUBJECT_POSTING` prompts are skipped, which bounds the cost on large sets (such bigrams name nothing).
    """
    originals, references, short_answers = _references(pairs)
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
    for prompt in progress_over(prompts, "mining same-subject negatives", unit="prompt"):
        pool = prompts if len(prompts) <= candidates else rng.sample(prompts, candidates)
        look_alikes = _nearest_prompts(prompt, pool, keys, nearest)
        form = {
            bigram
            for bigram in keys[prompt]
            if 2 * sum(bigram in keys[other] for other in look_alikes) >= len(look_alikes)
        }
        subject = keys[prompt] - form
        if not subject:
            continue
        shared: dict[str, int] = {}
        for bigram in subject:
            if len(postings[bigram]) <= MAX_SUBJECT_POSTING:
                for other in postings[bigram]:
                    shared[other] = shared.get(other, 0) + 1
        matches = [
            (count, other)
            for other, count in shared.items()
            if other != prompt
            and 2 * count >= len(subject)
            and normalised[other] != normalised[prompt]
            and not states_the_answer(references[other], short_answers.get(prompt))
        ]
        matches.sort(key=lambda match: (-match[0], match[1]))
        best = [other for _, other in matches[:nearest]]
        for other in rng.sample(best, min(per_prompt, len(best))):
            extra.append(
                {
                    "prompt": originals[prompt],
                    "chosen": references[prompt],
                    "rejected": references[other],
                    "source": SAME_SUBJECT_SOURCE,
                }
            )
    return extra


def sft_reference_pairs(sft_rows: list[dict[str, Any]], held_out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT training rows as `{prompt, chosen[, answer]}` references for `mismatched_pairs` and `same_subject_pairs`.

    Every SFT row is a question with a good answer, and the RM learns to read the question from many of them.
    Rows sharing a normalised prompt or reference with a held-out pair are left out, so the split stays as strict
    as `split_pairs` makes it.
    """
    banned = {normalise_prompt(pair["prompt"]) for pair in held_out} | {
        normalise_text(pair["chosen"]) for pair in held_out
    }
    references = []
    for row in sft_rows:
        if normalise_prompt(row["prompt"]) in banned or normalise_text(row["response"]) in banned:
            continue
        reference = {"prompt": row["prompt"], "chosen": row["response"]}
        if row.get("answer"):
            reference["answer"] = row["answer"]
        references.append(reference)
    logger.info(
        "build_prefs: %d of %d SFT rows are references for mined negatives (%d share a prompt or reference "
        "with a held-out pair)",
        len(references),
        len(sft_rows),
        len(sft_rows) - len(references),
    )
    return references
