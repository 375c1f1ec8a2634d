"""Text statistics of generated answers and pairwise judging: the small, hand-checkable maths of `evaluate`.

Every function takes plain Python lists, so tests can compare against values worked out on paper.

- Distinct-n (Li et al., 2016): unique n-grams / all n-grams, pooled over every answer of a model. Low
  values mean the model says the same things to every prompt.
- Repeated n-gram rate: the share of n-grams that already occurred earlier *in the same answer* (pooled
  over answers). It catches degenerate loops ("the river the river the river") that distinct-n, being
  corpus-wide, blurs.
- Refusal rate: the share of answers that contain one of `REFUSAL_PHRASES` (case-insensitive, after NFKC).
- Exact match: the answer string occurs in the reply (both NFKC-normalised and case-folded), so "The capital
  is Paris." matches "paris". It is lenient on purpose: a model's phrasing varies, the answer does not.
- Win rate: per prompt 1 when the policy's score beats the baseline's, 0.5 for a tie, 0 otherwise; the mean.

The n-gram functions work on any token sequence (token ids of the model's tokenizer in `evaluate`, which
treats English and Chinese alike; words or characters work as well).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Hashable, Sequence

# Phrases that open a refusal or a non-answer, in English and Chinese. The list is short and literal on purpose:
# the figure is a trend line between models, not a classifier.
REFUSAL_PHRASES: tuple[str, ...] = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i cannot",
    "i can't",
    "i can not",
    "i am unable",
    "i'm unable",
    "i am not able",
    "i'm not able",
    "as an ai",
    "i don't know",
    "i do not know",
    "对不起",
    "抱歉",
    "我不能",
    "我无法",
    "作为一个ai",
    "作为人工智能",
    "作为一个人工智能",
    "我不知道",
    "无法回答",
)


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
    """The n-grams of one sequence, in order (empty when it is shorter than n)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Sequence[Hashable]], n: int) -> float:
    """Unique n-grams / all n-grams over all `sequences` together; 0.0 when there is no n-gram at all."""
    pooled = [gram for tokens in sequences for gram in ngrams(tokens, n)]
    return len(set(pooled)) / len(pooled) if pooled else 0.0


def repeated_ngram_rate(sequences: Sequence[Sequence[Hashable]], n: int = 3) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same sequence, pooled over sequences.

    "a b a b a b" has 3-grams aba, bab, aba, bab: two are repeats, so 2 / 4 = 0.5. 0.0 when there are no
    n-grams.
    """
    repeats, total = 0, 0
    for tokens in sequences:
        grams = ngrams(tokens, n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else 0.0


def normalise(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII) then case folding: the form answers are compared in."""
    return unicodedata.normalize("NFKC", text).casefold()


def is_refusal(text: str, phrases: Sequence[str] = REFUSAL_PHRASES) -> bool:
    """True when `text` contains one of `phrases` (compared after `normalise`)."""
    folded = normalise(text)
    return any(normalise(phrase) in folded for phrase in phrases)


def refusal_rate(texts: Sequence[str], phrases: Sequence[str] = REFUSAL_PHRASES) -> float:
    """Share of `texts` that are refusals (see `is_refusal`); 0.0 for no texts."""
    return sum(is_refusal(text, phrases) for text in texts) / len(texts) if texts else 0.0


def contains_answer(reply: str, answer: str) -> bool:
    """True when the answer string occurs in the reply (both normalised); an empty answer never matches."""
    target = normalise(answer).strip()
    return bool(target) and target in normalise(reply)


def exact_match_rate(replies: Sequence[str], answers: Sequence[str]) -> float:
    """Share of replies containing their answer (`contains_answer`); 0.0 for no replies."""
    if len(replies) != len(answers):
        raise ValueError(f"exact_match_rate: {len(replies)} replies for {len(answers)} answers")
    return sum(map(contains_answer, replies, answers)) / len(replies) if replies else 0.0


def pairwise_outcomes(
    policy_scores: Sequence[float],
    baseline_scores: Sequence[float],
    identical: Sequence[bool] | None = None,
    tolerance: float = 1e-6,
) -> list[float]:
    """Per prompt: 1.0 if the policy's score beats the baseline's by more than `tolerance`, 0.0 if it loses
    by more, else 0.5 (a tie). A prompt whose two answers are `identical` is a tie whatever the scores say:
    the same text scored in differently padded batches can differ in the last float bits."""
    if len(policy_scores) != len(baseline_scores):
        raise ValueError(
            f"pairwise_outcomes: {len(policy_scores)} policy scores for {len(baseline_scores)} baseline scores"
        )
    identical = identical if identical is not None else [False] * len(policy_scores)
    outcomes = []
    for policy, baseline, same in zip(policy_scores, baseline_scores, identical):
        if same or abs(policy - baseline) <= tolerance:
            outcomes.append(0.5)
        else:
            outcomes.append(1.0 if policy > baseline else 0.0)
    return outcomes


def win_rate(
    policy_scores: Sequence[float],
    baseline_scores: Sequence[float],
    identical: Sequence[bool] | None = None,
    tolerance: float = 1e-6,
) -> float:
    """Mean of `pairwise_outcomes`: 1.0 the policy always wins, 0.5 even; NaN for no prompts."""
    outcomes = pairwise_outcomes(policy_scores, baseline_scores, identical, tolerance)
    return sum(outcomes) / len(outcomes) if outcomes else float("nan")


def text_statistics(texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> dict[str, float]:
    """Length, repetition and refusal figures of one model's answers.

    texts: the decoded answers; token_ids: the generated tokens of each (EOS excluded).
    Returns response_tokens, response_chars (means), distinct_1, distinct_2, repeated_3gram_rate, refusal_rate.
    """
    count = max(len(texts), 1)
    return {
        "response_tokens": sum(len(ids) for ids in token_ids) / count,
        "response_chars": sum(len(text) for text in texts) / count,
        "distinct_1": distinct_n(token_ids, 1),
        "distinct_2": distinct_n(token_ids, 2),
        "repeated_3gram_rate": repeated_ngram_rate(token_ids, 3),
        "refusal_rate": refusal_rate(texts),
    }


def most_common_answer_share(texts: Sequence[str]) -> float:
    """Share of answers equal to the most common one (a mode-collapse signal); 0.0 for no texts."""
    if not texts:
        return 0.0
    return Counter(text.strip() for text in texts).most_common(1)[0][1] / len(texts)


__all__ = [
    "REFUSAL_PHRASES",
    "ngrams",
    "distinct_n",
    "repeated_ngram_rate",
    "normalise",
    "is_refusal",
    "refusal_rate",
    "contains_answer",
    "exact_match_rate",
    "pairwise_outcomes",
    "win_rate",
    "text_statistics",
    "most_common_answer_share",
]
