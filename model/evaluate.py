"""The `evaluate` stage: how the pretrained, SFT and PPO models compare, judged several ways.

What is measured, and on what
-----------------------------
- Held-out chat prompts: the `sft_val.jsonl` rows of the sft artifact (a seeded subset of `max_prompts`).
  They are the only prompts no stage trained on: SFT only computed its val loss on them, while the RLHF
  prompts (`rlhf_prompts.jsonl`) fed build_prefs, the reward model and PPO. Every model answers them with the
  same settings (`temperature`, `top_p`, the same seed; greedy by default), in the chat template.
- `win_rate_vs_sft`: the train_rm reward model scores the PPO and the SFT answer to each prompt (the token
  sequences the models produced, read at their last token as PPO's reward is); a win is ppo > sft, a tie
  (equal answers or scores) counts 0.5.
- `win_rate_vs_sft_independent`: the same judged by a second reward model: `judge_model` when set, else the
  independent judge of the train_rm artifact (trained there on training pairs the first judge never saw; its
  held-out accuracy is train_rm's `judge_val_accuracy`). None when there is neither. Nothing is trained here.
  PPO optimised the first judge; a win rate that holds only under it is reward hacking.
- `reward` / `reward_independent`: mean score of each model's answers under each judge.
- `kl_to_sft`: mean per-sequence KL(model || SFT) = E over the model's own samples (at `kl_temperature`, on
  the same chat prompts) of sum over response tokens of log p_model - log p_sft. 0 for SFT itself.
- `response_tokens`, `response_chars`, `distinct_1`, `distinct_2`, `repeated_3gram_rate`, `refusal_rate`:
  statistics of the answers to the held-out prompts (see `model/eval_text.py`; n-grams over token ids).
- `exact_match` (and `exact_match_by_lang`, for sources with a `lang_field`): the questions of `qa_sources`
  (any source of question/answer rows; a `demo` one holds the demo world's held-out fact questions), answered
  greedily; correct when the answer string occurs in the reply; absent without qa_sources. SFT and PPO
  get the chat template and stop at `<|im_end|>`. The pretrained model never saw the template, so it is asked
  in plain text, `<|endoftext|>` + `pretrain_prompt_template` (default `"{question}\\n"`), and stops at
  `<|endoftext|>` or `max_new_tokens`.
- `tasks`: likelihood-scored zero/few-shot task files (`model/eval_tasks.py`, docs/eval_tasks.md) for the
  models in `task_models`.

Output (in `out_dir`): `eval.json` (the metrics), `samples.md` (a markdown table of every model's answer to
fixed prompts, a few held-out prompts and fact questions) and `samples.jsonl` (the same rows),
`judged.jsonl` (each held-out prompt with both answers, scores and outcomes), `facts.jsonl` (each fact
question with every model's reply).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zero_chatgpt.config import DemoCorpusConfig, EvaluateConfig
from zero_chatgpt.data_process.sources import read_all_rows
from zero_chatgpt.model.artifact_io import read_jsonl, write_jsonl
from zero_chatgpt.model.batching import seeded_subset
from zero_chatgpt.model.build import resolve_device
from zero_chatgpt.model.eval_tasks import PreparedTask, expand_task_globs, load_task, task_accuracy, task_summary
from zero_chatgpt.model.eval_text import contains_answer, exact_match_rate, pairwise_outcomes, text_statistics
from zero_chatgpt.model.generation import Rollout, chat_prompt_ids, sample
from zero_chatgpt.model.ppo.rollout import response_logits, token_logprobs
from zero_chatgpt.model.reward_model import load_reward_model, sequence_scores
from zero_chatgpt.model.training import autocast, autocast_dtype
from zero_chatgpt.stage_files import SFT_VAL, independent_judge_dir
from zero_chatgpt.tokenizer.chat import ENDOFTEXT_ID, IM_END_ID, PAD_ID

logger = logging.getLogger(__name__)

MODELS = ("pretrain", "sft", "ppo")
EVAL_JSON = "eval.json"
SAMPLES_JSONL = "samples.jsonl"
SAMPLES_MD = "samples.md"
JUDGED_JSONL = "judged.jsonl"
FACTS_JSONL = "facts.jsonl"
TEXT_METRICS = ("response_tokens", "response_chars", "distinct_1", "distinct_2", "repeated_3gram_rate", "refusal_rate")


# ------------------------------------------------------------------------------------------ generation


@dataclass
class Generations:
    """Answers of one model to a list of prompts, in prompt order, and the rollouts they came from.

    token_ids: each answer's generated tokens, the stop token excluded. batches: (prompt indices, Rollout
    on the CPU) per generation batch, kept so a reward model can score exactly the tokens produced.
    """

    texts: list[str]
    token_ids: list[list[int]]
    batches: list[tuple[list[int], Rollout]] = field(default_factory=list)


def fit_prompts(prompts: list[list[int]], context: int | None, max_new_tokens: int) -> list[list[int]]:
    """Prompts that leave room for `max_new_tokens` in the model's context: a long one keeps its end."""
    if context is None:
        return prompts
    room = max(1, context - max_new_tokens)
    return [ids[-room:] for ids in prompts]


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int,
    temperature: float,
    top_p: float,
    seed: int,
    batch_size: int,
) -> Generations:
    """Batched answers to token-id prompts (sorted by length so batches pad little), from one seeded stream."""
    device = next(model.parameters()).device
    prompts = fit_prompts(prompts, getattr(model.config, "max_position_embeddings", None), max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    texts, token_ids = [""] * len(prompts), [[] for _ in prompts]
    batches = []
    with autocast(device, autocast_dtype("auto", device)):
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            rollout = sample(
                model,
                [prompts[i] for i in indices],
                max_new_tokens,
                eos_id=eos_id,
                pad_id=PAD_ID,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
            )
            rollout = Rollout(
                rollout.sequences.cpu(),
                rollout.attention_mask.cpu(),
                rollout.prompt_length,
                rollout.response_mask.cpu(),
            )
            for index, tokens, mask in zip(indices, rollout.responses.tolist(), rollout.response_mask.tolist()):
                kept = [token for token, keep in zip(tokens, mask) if keep and token != eos_id]
                token_ids[index] = kept
                texts[index] = tokenizer.decode(kept, skip_special_tokens=True)
            batches.append((indices, rollout))
    return Generations(texts, token_ids, batches)


def greedy_texts(
    model: torch.nn.Module, tokenizer, prompts: list[list[int]], cfg: EvaluateConfig, plain: bool, seed: int
) -> list[str]:
    """Greedy replies to `prompts`, stopping at end-of-text for a plain LM (`plain`) or end-of-turn for a chat one."""
    stop_id = ENDOFTEXT_ID if plain else IM_END_ID
    return generate(model, tokenizer, prompts, cfg.max_new_tokens, stop_id, 0.0, 1.0, seed, cfg.batch_size).texts


def plain_prompt_ids(tokenizer, questions: Sequence[str], template: str) -> list[list[int]]:
    """`<|endoftext|>` + the template with `{question}` replaced: how the pretrained model is asked."""
    texts = [template.replace("{question}", question) for question in questions]
    return [[ENDOFTEXT_ID] + list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def kl_to_reference(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
) -> float:
    """Mean over prompts of sum_t [log p_model(y_t) - log p_ref(y_t)] on answers y sampled from `model`.

    Both distributions are taken at `temperature`, the one the answers were drawn at. 0.0 when `model` is
    `reference`.
    """
    if model is reference:
        return 0.0
    device = next(model.parameters()).device
    prompts = fit_prompts(prompts, getattr(model.config, "max_position_embeddings", None), max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    per_sequence = []
    model.eval()
    reference.eval()
    with autocast(device, autocast_dtype("auto", device)):
        for start in range(0, len(prompts), batch_size):
            drawn = sample(
                model,
                prompts[start : start + batch_size],
                max_new_tokens,
                eos_id=IM_END_ID,
                pad_id=PAD_ID,
                temperature=temperature,
                generator=generator,
            )
            mask = drawn.response_mask.float()
            logprobs = [
                token_logprobs(
                    response_logits(m, drawn.sequences, drawn.attention_mask, drawn.prompt_length),
                    drawn.responses,
                    temperature,
                )
                for m in (model, reference)
            ]
            per_sequence.append(((logprobs[0] - logprobs[1]) * mask).sum(dim=1).float().cpu())
    return float(torch.cat(per_sequence).mean())


@torch.no_grad()
def judge_scores(reward_model: torch.nn.Module, generations: Generations) -> list[float]:
    """The reward model's score of every answer (prompt + response tokens as generated), in prompt order."""
    device = next(reward_model.parameters()).device
    reward_model.eval()
    scores = [0.0] * len(generations.texts)
    with autocast(device, autocast_dtype("auto", device)):
        for indices, rollout in generations.batches:
            values = sequence_scores(reward_model, rollout.sequences.to(device), rollout.attention_mask.to(device))
            for index, value in zip(indices, values.float().tolist()):
                scores[index] = value
    return scores


# --------------------------------------------------------------------------------------- inputs


def heldout_prompt_rows(sft_dir: Path, max_prompts: int, seed: int) -> list[dict[str, Any]]:
    """A seeded subset of the sft artifact's `sft_val.jsonl` rows `{id, prompt, response}`."""
    path = sft_dir / SFT_VAL
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {sft_dir} is not an sft artifact")
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path}: row {number} has no `prompt` string")
        row.setdefault("id", f"{SFT_VAL}:{number}")
    if not rows:
        raise ValueError(f"{path}: no held-out prompts")
    return seeded_subset(rows, max_prompts, seed, "evaluate")


def find_judge(judge_model: str | None, rm_dir: Path) -> Path | None:
    """The second judge's model dir: `judge_model` (which must exist), else train_rm's independent judge, else None."""
    if judge_model is not None:
        path = Path(judge_model)
        if not path.is_dir():
            raise FileNotFoundError(f"evaluate.judge_model: {path} is not a directory")
        return path
    path = independent_judge_dir(rm_dir)
    if not path.is_dir():
        logger.warning(
            "evaluate: %s has no independent judge (train_rm.independent_judge was off) and "
            "evaluate.judge_model is not set: win_rate_vs_sft_independent is None",
            rm_dir,
        )
        return None
    return path


# ------------------------------------------------------------------------------------------- outputs


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip() or "(empty)"


def samples_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table: prompt, reference, then each model's answer."""
    lines = [
        "# Sample generations",
        "",
        "Greedy answers. SFT and PPO are prompted with the chat template; the pretrained model in plain "
        "text (see `evaluate.pretrain_prompt_template`).",
        "",
        "| kind | prompt | reference | " + " | ".join(MODELS) + " |",
        "|---|---|---|" + "---|" * len(MODELS),
    ]
    for row in rows:
        answers = " | ".join(_cell(row["answers"].get(name, "")) for name in MODELS)
        lines.append(f"| {row['kind']} | {_cell(row['prompt'])} | {_cell(row.get('reference') or '')} | {answers} |")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN / inf become None so eval.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# --------------------------------------------------------------------------------------------- stage


def _load_causal_lm(model_dir: Path, device: torch.device) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


def evaluate(
    cfg: EvaluateConfig,
    demo: DemoCorpusConfig,
    pretrain_dir: Path,
    sft_dir: Path,
    rm_dir: Path,
    ppo_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
) -> dict[str, Any]:
    """Compare the pretrained, SFT and PPO models; write eval.json, samples.md/.jsonl, judged.jsonl,
    facts.jsonl to `out_dir` and return the metrics (see the module docstring for each key)."""
    started = time.perf_counter()
    dirs = {"pretrain": Path(pretrain_dir), "sft": Path(sft_dir), "ppo": Path(ppo_dir)}
    rm_dir, out_dir = Path(rm_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    torch.manual_seed(seed)

    # Everything read from files first, so a bad task file or a missing input fails before any model runs.
    prompt_rows = heldout_prompt_rows(dirs["sft"], cfg.max_prompts, seed)
    judge_dir = find_judge(cfg.judge_model, rm_dir)
    qa_rows, bad_qa_rows = read_all_rows(cfg.qa_sources, demo, seed)
    if bad_qa_rows:
        logger.warning(
            "evaluate: %d qa_sources rows quarantined and not asked; first: %s line %s: %s",
            len(bad_qa_rows),
            bad_qa_rows[0]["source"],
            bad_qa_rows[0]["line"],
            bad_qa_rows[0]["reason"],
        )
    questions = seeded_subset(qa_rows, cfg.max_questions, seed, "evaluate")
    tasks: list[PreparedTask] = [
        load_task(path, cfg.few_shot, cfg.max_task_rows) for path in expand_task_globs(cfg.task_files)
    ]
    tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    chat_ids = chat_prompt_ids(tokenizer, [row["prompt"] for row in prompt_rows])
    question_chat_ids = chat_prompt_ids(tokenizer, [q["question"] for q in questions]) if questions else []
    question_plain_ids = (
        plain_prompt_ids(tokenizer, [q["question"] for q in questions], cfg.pretrain_prompt_template)
        if questions
        else []
    )
    sample_rows = (
        [{"kind": "fixed", "prompt": p, "reference": None} for p in cfg.sample_prompts]
        + [
            {"kind": "held-out", "prompt": r["prompt"], "reference": r.get("response")}
            for r in prompt_rows[: cfg.num_samples]
        ]
        + [
            {
                "kind": f"fact ({q['lang']})" if "lang" in q else "fact",
                "prompt": q["question"],
                "reference": q["answer"],
            }
            for q in questions[: cfg.num_samples]
        ]
    )
    for row in sample_rows:
        row["answers"] = {}
    logger.info(
        "evaluate: %d held-out prompts, %d fact questions, %d task files, %d sample prompts",
        len(prompt_rows),
        len(questions),
        len(tasks),
        len(sample_rows),
    )

    judged: dict[str, Generations] = {}
    stats: dict[str, dict[str, float]] = {}
    kl: dict[str, float] = {}
    fact_replies: dict[str, list[str]] = {}
    task_accuracies: dict[str, dict[str, float]] = {task.name: {} for task in tasks}
    reference = _load_causal_lm(dirs["sft"], torch_device)
    # SFT first: it is the KL reference and stays loaded; the others are loaded one at a time.
    for name in ("sft", "pretrain", "ppo"):
        model = reference if name == "sft" else _load_causal_lm(dirs[name], torch_device)
        judged[name] = generate(
            model, tokenizer, chat_ids, cfg.max_new_tokens, IM_END_ID, cfg.temperature, cfg.top_p, seed, cfg.batch_size
        )
        stats[name] = text_statistics(judged[name].texts, judged[name].token_ids)
        kl[name] = kl_to_reference(
            model, reference, chat_ids, cfg.max_new_tokens, cfg.kl_temperature, seed + 1, cfg.batch_size
        )
        # The pretrained model is asked in plain text and stops at <|endoftext|>; the chat models at <|im_end|>.
        plain = name == "pretrain"
        if questions:
            fact_replies[name] = greedy_texts(
                model, tokenizer, question_plain_ids if plain else question_chat_ids, cfg, plain, seed
            )
        else:
            fact_replies[name] = []
        if sample_rows:
            texts = [row["prompt"] for row in sample_rows]
            ids = (
                plain_prompt_ids(tokenizer, texts, cfg.pretrain_prompt_template)
                if plain
                else chat_prompt_ids(tokenizer, texts)
            )
            answers = greedy_texts(model, tokenizer, ids, cfg, plain, seed)
            for row, answer in zip(sample_rows, answers):
                row["answers"][name] = answer
        if name in cfg.task_models:
            with torch.no_grad(), autocast(torch_device, autocast_dtype("auto", torch_device)):
                for task in tasks:
                    task_accuracies[task.name][name] = task_accuracy(
                        model, tokenizer, task, cfg.task_score, cfg.batch_size
                    )
        logger.info(
            "evaluate %s: %.1f tokens per answer, KL to SFT %.3f, distinct-2 %.3f",
            name,
            stats[name]["response_tokens"],
            kl[name],
            stats[name]["distinct_2"],
        )
        if model is not reference:
            del model
    del reference

    reward_model = load_reward_model(rm_dir).to(torch_device)
    rewards = {name: judge_scores(reward_model, judged[name]) for name in MODELS}
    del reward_model
    independent_rewards: dict[str, list[float]] | None = None
    if judge_dir is not None:
        judge = load_reward_model(judge_dir).to(torch_device)
        independent_rewards = {name: judge_scores(judge, judged[name]) for name in MODELS}
        del judge

    identical = [a == b for a, b in zip(judged["ppo"].token_ids, judged["sft"].token_ids)]
    outcomes = pairwise_outcomes(rewards["ppo"], rewards["sft"], identical)
    outcomes_independent = (
        pairwise_outcomes(independent_rewards["ppo"], independent_rewards["sft"], identical)
        if independent_rewards is not None
        else None
    )

    languages = sorted({q["lang"] for q in questions if "lang" in q})
    answers = [q["answer"] for q in questions]
    metrics: dict[str, Any] = {
        "win_rate_vs_sft": _mean(outcomes),
        "win_rate_vs_sft_independent": _mean(outcomes_independent) if outcomes_independent is not None else None,
        "ties_vs_sft": sum(outcome == 0.5 for outcome in outcomes),
        "identical_answers_vs_sft": sum(identical),
        "reward": {name: _mean(rewards[name]) for name in MODELS},
        "reward_independent": (
            {name: _mean(independent_rewards[name]) for name in MODELS} if independent_rewards is not None else None
        ),
        "kl_to_sft": kl,
        **{key: {name: stats[name][key] for name in MODELS} for key in TEXT_METRICS},
        # Without qa_sources the metric is absent, not zero.
        **(
            {"exact_match": {name: exact_match_rate(fact_replies[name], answers) for name in MODELS}}
            if questions
            else {}
        ),
        **(
            {
                "exact_match_by_lang": {
                    lang: {
                        name: exact_match_rate(
                            [r for r, q in zip(fact_replies[name], questions) if q.get("lang") == lang],
                            [q["answer"] for q in questions if q.get("lang") == lang],
                        )
                        for name in MODELS
                    }
                    for lang in languages
                }
            }
            if languages
            else {}
        ),
        # Ordered as task_models, so `accuracy` is the first listed model's (models ran in another order).
        "tasks": {
            task.name: task_summary(
                task,
                {model_name: task_accuracies[task.name][model_name] for model_name in dict.fromkeys(cfg.task_models)},
                cfg.task_score,
            )
            for task in tasks
        },
        "independent_judge": str(judge_dir) if judge_dir is not None else None,
        "prompts": len(prompt_rows),
        "questions": len(questions),
        "seconds": time.perf_counter() - started,
    }
    metrics = _json_safe(metrics)

    write_jsonl(
        out_dir / JUDGED_JSONL,
        [
            {
                "id": row["id"],
                "prompt": row["prompt"],
                "reference": row.get("response"),
                "sft": judged["sft"].texts[i],
                "ppo": judged["ppo"].texts[i],
                "reward": {"sft": rewards["sft"][i], "ppo": rewards["ppo"][i]},
                "reward_independent": (
                    {"sft": independent_rewards["sft"][i], "ppo": independent_rewards["ppo"][i]}
                    if independent_rewards is not None
                    else None
                ),
                "outcome": outcomes[i],
                "outcome_independent": outcomes_independent[i] if outcomes_independent is not None else None,
            }
            for i, row in enumerate(prompt_rows)
        ],
    )
    write_jsonl(
        out_dir / FACTS_JSONL,
        [
            {
                **question,
                "replies": {name: fact_replies[name][i] for name in MODELS},
                "correct": {name: contains_answer(fact_replies[name][i], question["answer"]) for name in MODELS},
            }
            for i, question in enumerate(questions)
        ],
    )
    write_jsonl(out_dir / SAMPLES_JSONL, sample_rows)
    (out_dir / SAMPLES_MD).write_text(samples_markdown(sample_rows), encoding="utf-8")
    (out_dir / EVAL_JSON).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info(
        "evaluate done in %.0fs: win rate vs SFT %s (independent judge %s), exact match %s",
        metrics["seconds"],
        metrics["win_rate_vs_sft"],
        metrics["win_rate_vs_sft_independent"],
        metrics.get("exact_match"),
    )
    return metrics


__all__ = [
    "evaluate",
    "Generations",
    "generate",
    "kl_to_reference",
    "judge_scores",
    "plain_prompt_ids",
    "heldout_prompt_rows",
    "seeded_subset",
    "find_judge",
    "samples_markdown",
    "MODELS",
]
