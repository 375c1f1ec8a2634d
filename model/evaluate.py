"""The `evaluate` stage: how the pretrained, SFT and PPO models compare, judged several ways.

It works on any Hugging Face causal LM family (LLaMA, Qwen2, GPT-2, BLOOM, OPT, ...) with its own tokenizer and
chat template, and on multi-turn prompts: a prompt row's `prompt` is one user turn as text or a list of
`{"role", "content"}` messages ending with a user turn (`data_process/conversations.py`).

What is measured, and on what
-----------------------------
- Held-out chat prompts: the `sft_val.jsonl` rows of the sft artifact (a seeded subset of `max_prompts`).
  They are the only prompts no stage trained on: SFT only computed its val loss on them, while the RLHF
  prompts (`rlhf_prompts.jsonl`) fed build_prefs, the reward model and PPO. Every model answers them with the
  same settings (`temperature`, `top_p`, the same seed; greedy by default), rendered by the SFT tokenizer's chat
  template (`encode_prompt`); a chat answer ends at the template's end-of-turn token (`end_of_turn_id`), the
  token SFT taught the model to close its turn with.
- `win_rate_vs_sft`: the train_rm reward model scores the PPO and the SFT answer to each prompt (the token
  sequences the models produced, read at their last token as PPO's reward is); a win is ppo > sft, a tie
  (equal answers or scores) counts 0.5.
- `win_rate_vs_sft_independent`: the same judged by a second reward model: `judge_model` when set, else the
  independent judge of the train_rm artifact (trained there on training pairs the first judge never saw).
  None when there is neither. Nothing is trained here. PPO optimised the first judge; a win rate that holds
  only under it is reward hacking. A judge whose tokenizer is not the SFT model's (another vocabulary or chat
  template, e.g. a `judge_model` of another family) scores each answer's text re-encoded under its own template
  (`encode_answer`), as train_rm encodes pairs.
- `reward` / `reward_independent`: mean score of each model's answers under each judge.
- `reward_model_heldout`: the reward model's accuracy on build_prefs' held-out pairs (`heldout_pairs.jsonl`,
  measured by train_rm: `val_accuracy`), next to the longer-answer baseline on the same pairs and the
  independent judge's accuracy; read from the train_rm artifact's manifest (None when it has none).
- `kl_to_sft`: mean per-sequence KL(model || SFT) = E over the model's own samples (at `kl_temperature`, on
  the same chat prompts) of sum over response tokens of log p_model - log p_sft. 0 for SFT itself.
- `response_tokens`, `response_chars`, `distinct_1`, `distinct_2`, `repeated_3gram_rate`, `refusal_rate`:
  statistics of the answers to the held-out prompts (see `model/eval_text.py`; n-grams over token ids).
- `exact_match` (and `exact_match_by_lang`, for sources with a `lang_field`): the questions of `qa_sources`
  (any source of question/answer rows), answered greedily; correct when the answer string occurs in the reply;
  absent without qa_sources. SFT and PPO get the chat template and stop at its end-of-turn token.
- `tasks`: likelihood-scored zero/few-shot task files (`model/eval_tasks.py`, docs/eval_tasks.md) for the
  models in `task_models`, each scored with its own tokenizer.

The pretrained model
--------------------
It may be this project's pretrain artifact or a Hugging Face base model (the base-model route skips
pretraining), with its own tokenizer, which can differ from the SFT model's by the chat tokens SFT added. It is
asked questions and sample prompts in plain text: the document start (BOS, else end-of-text: see
`document_start_ids`) + `pretrain_prompt_template` with `{question}` replaced by the prompt as plain text
(`plain_text`: a single user turn is its text; a longer conversation is a transcript, one `User: ...` /
`Assistant: ...` / `System: ...` line per turn, ending with the last user turn's line), and it stops at its
tokenizer's end-of-text token or `max_new_tokens`. The held-out prompts it answers like the chat models, in the
chat template, when its tokenizer is the SFT model's (same vocabulary, so it can read every chat token); else in
plain text too: its answers are then judged as text re-encoded in the judge's chat template, and its
`kl_to_sft` is None (it cannot read the chat prompts the KL is measured on).

Output (in `out_dir`): `eval.json` (the metrics), `samples.md` (a markdown table of every model's answer to
fixed prompts, a few held-out prompts and questions) and `samples.jsonl` (the same rows), `judged.jsonl`
(each held-out prompt with both answers, scores and outcomes), `questions.jsonl` (each qa_sources question with
every model's reply).
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
from transformers import AutoTokenizer

from zero_chatgpt.artifacts import read_manifest
from zero_chatgpt.config import DemoCorpusConfig, EvaluateConfig
from zero_chatgpt.data_process.conversations import prompt_key, prompt_messages
from zero_chatgpt.data_process.sources import read_all_rows
from zero_chatgpt.model.artifact_io import write_jsonl
from zero_chatgpt.model.base_model import load_causal_lm
from zero_chatgpt.model.batching import seeded_subset
from zero_chatgpt.model.build import resolve_device
from zero_chatgpt.model.chat import load_chat_tokenizer
from zero_chatgpt.model.eval_tasks import (
    PreparedTask,
    document_start_ids,
    expand_task_globs,
    load_task,
    task_accuracy,
    task_summary,
)
from zero_chatgpt.model.eval_text import contains_answer, exact_match_rate, pairwise_outcomes, text_statistics
from zero_chatgpt.model.generation import Rollout, context_length, left_pad, sample
from zero_chatgpt.model.ppo.rollout import response_logits, token_logprobs
from zero_chatgpt.model.reward_model import load_reward_model, sequence_scores
from zero_chatgpt.model.training import autocast, autocast_dtype
from zero_chatgpt.progress import ProgressBar
from zero_chatgpt.stage_files import SFT_VAL, independent_judge_dir, read_chat_rows
from zero_chatgpt.tokenizer.chat_encoding import encode_answer, encode_prompts, end_of_turn_id, ensure_chat_template
from zero_chatgpt.tokenizer.chat_encoding import pad_id as padding_id

logger = logging.getLogger(__name__)

MODELS = ("pretrain", "sft", "ppo")
EVAL_JSON = "eval.json"
SAMPLES_JSONL = "samples.jsonl"
SAMPLES_MD = "samples.md"
JUDGED_JSONL = "judged.jsonl"
QUESTIONS_JSONL = "questions.jsonl"
TEXT_METRICS = ("response_tokens", "response_chars", "distinct_1", "distinct_2", "repeated_3gram_rate", "refusal_rate")
# A stop id no token has: generation then runs to max_new_tokens (a tokenizer without an end-of-text token).
NEVER = -1
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


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
    prompts_cut: int = 0  # prompts that kept only their end to leave room for the answer in the context


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
    phase: str = "answers",
) -> Generations:
    """Batched answers to token-id prompts (sorted by length so batches pad little), from one seeded stream.

    Rows stop at `eos_id`; padding is the tokenizer's pad id (`pad_id`). Progress is shown as `phase`."""
    device = next(model.parameters()).device
    fitted = fit_prompts(prompts, context_length(model), max_new_tokens)
    prompts_cut = sum(len(fit) < len(prompt) for fit, prompt in zip(fitted, prompts))
    if prompts_cut:
        logger.warning(
            "evaluate: %d of %d prompts are longer than the model's context %s leaves after %d new tokens: they "
            "keep their end",
            prompts_cut,
            len(prompts),
            context_length(model),
            max_new_tokens,
        )
    prompts = fitted
    generator = torch.Generator(device=device).manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    texts, token_ids = [""] * len(prompts), [[] for _ in prompts]
    batches = []
    with autocast(device, autocast_dtype("auto", device)), ProgressBar(phase, len(order), unit="prompt") as progress:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            rollout = sample(
                model,
                [prompts[i] for i in indices],
                max_new_tokens,
                eos_id=eos_id,
                pad_id=padding_id(tokenizer),
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
            progress.update(len(indices), tokens=int(rollout.response_mask.sum()))
    return Generations(texts, token_ids, batches, prompts_cut)


def greedy_texts(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[list[int]],
    cfg: EvaluateConfig,
    stop_id: int,
    seed: int,
    phase: str = "greedy answers",
) -> list[str]:
    """Greedy replies to `prompts`, each ending at `stop_id` or after `cfg.max_new_tokens`."""
    if not prompts:
        return []
    return generate(model, tokenizer, prompts, cfg.max_new_tokens, stop_id, 0.0, 1.0, seed, cfg.batch_size, phase).texts


def chat_prompt_ids(tokenizer, prompts: Sequence[Any]) -> list[list[int]]:
    """Ids of prompts (text or messages) in the tokenizer's chat template, ending in its generation prompt."""
    return encode_prompts(tokenizer, list(prompts))[0]


def plain_text(prompt: Any) -> str:
    """A prompt as plain text, for a model that never saw a chat template: a single user turn is its text; a longer
    conversation is a transcript, one `User: ...` / `Assistant: ...` / `System: ...` line per turn, the last user
    turn's line last."""
    messages = prompt_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{PLAIN_ROLES[message['role']]}: {message['content']}" for message in messages)


def plain_prompt_ids(tokenizer, prompts: Sequence[Any], template: str) -> list[list[int]]:
    """The document start (`document_start_ids`) + the template with `{question}` replaced by the prompt as plain
    text (`plain_text`): how the pretrained model is asked."""
    texts = [template.replace("{question}", plain_text(prompt)) for prompt in prompts]
    start = document_start_ids(tokenizer)
    return [start + list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def plain_stop_id(tokenizer) -> int:
    """Where a plain-text answer ends: the tokenizer's end-of-text token (none: at max_new_tokens)."""
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else NEVER


def same_vocabulary(first, second) -> bool:
    """True when two tokenizers map every token to the same id."""
    return first is second or (len(first) == len(second) and first.get_vocab() == second.get_vocab())


def reads_chat(model: torch.nn.Module, model_tokenizer, chat_tokenizer) -> bool:
    """Whether `model` (with `model_tokenizer`) can read prompts encoded by `chat_tokenizer`: the same vocabulary,
    and an embedding for every id of it."""
    if not same_vocabulary(model_tokenizer, chat_tokenizer):
        return False
    return model.get_input_embeddings().num_embeddings >= len(chat_tokenizer)


@torch.no_grad()
def kl_to_reference(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    *,
    eos_id: int,
    pad_id: int,
    phase: str = "KL to reference",
) -> float:
    """Mean over prompts of sum_t [log p_model(y_t) - log p_ref(y_t)] on answers y sampled from `model` (ending
    at `eos_id`, padded with `pad_id`).

    Both distributions are taken at `temperature`, the one the answers were drawn at. 0.0 when `model` is
    `reference`. Progress is shown as `phase`.
    """
    if model is reference:
        return 0.0
    device = next(model.parameters()).device
    prompts = fit_prompts(prompts, context_length(model), max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    per_sequence = []
    model.eval()
    reference.eval()
    with autocast(device, autocast_dtype("auto", device)), ProgressBar(phase, len(prompts), unit="prompt") as progress:
        for start in range(0, len(prompts), batch_size):
            drawn = sample(
                model,
                prompts[start : start + batch_size],
                max_new_tokens,
                eos_id=eos_id,
                pad_id=pad_id,
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
            progress.update(len(drawn.sequences), tokens=int(drawn.response_mask.sum()))
    return float(torch.cat(per_sequence).mean())


# ------------------------------------------------------------------------------------------- judging


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


def reencoded(
    tokenizer, prompts: Sequence[Any], texts: list[str], max_len: int | None, pad: int, batch_size: int
) -> Generations:
    """Answers given as text, encoded as a reward model trained under `tokenizer`'s template reads them
    (`encode_answer`: the prompt, the answer and its end-of-turn token), batched for `judge_scores`."""
    encoded = [encode_answer(tokenizer, prompt_messages(p), text, max_len) for p, text in zip(prompts, texts)]
    batches = []
    for start in range(0, len(encoded), batch_size):
        indices = list(range(start, min(start + batch_size, len(encoded))))
        ids, mask = left_pad([encoded[i] for i in indices], pad)
        batches.append((indices, Rollout(ids, mask, 0, mask.bool())))
    return Generations(list(texts), encoded, batches)


def judge_tokenizer(judge_dir: Path, chat_tokenizer, trust_remote_code: bool = False):
    """The tokenizer a judge reads answers with: None when it is the SFT model's (same vocabulary and template, or
    the dir has none), so the generated tokens are scored as they are; else the judge's own, given a chat template
    when it has none and its vocabulary holds ChatML's tokens (a judge that can read no template is an error)."""
    if not any((Path(judge_dir) / name).is_file() for name in TOKENIZER_FILES):
        return None
    tokenizer = AutoTokenizer.from_pretrained(judge_dir, trust_remote_code=trust_remote_code)
    if same_vocabulary(tokenizer, chat_tokenizer) and tokenizer.chat_template == chat_tokenizer.chat_template:
        return None
    if not getattr(tokenizer, "chat_template", None) and ensure_chat_template(tokenizer).added_tokens:
        raise ValueError(f"{judge_dir}: the judge's tokenizer has no chat template to read the answers in")
    return tokenizer


def answer_scores(
    reward_model: torch.nn.Module,
    own_tokenizer,
    chat_tokenizer,
    prompts: Sequence[Any],
    generations: Generations,
    in_chat: bool,
    batch_size: int,
) -> list[float]:
    """A judge's scores of one model's answers: the generated tokens as they are when the judge reads the SFT
    tokenizer's ids (`own_tokenizer` None) and the model answered in the chat template; else the answer texts
    re-encoded under the judge's tokenizer (`reencoded`)."""
    if own_tokenizer is None and in_chat:
        return judge_scores(reward_model, generations)
    tokenizer = own_tokenizer or chat_tokenizer
    max_len = context_length(reward_model)
    return judge_scores(
        reward_model,
        reencoded(tokenizer, prompts, generations.texts, max_len, padding_id(tokenizer), batch_size),
    )


# --------------------------------------------------------------------------------------- inputs


def heldout_prompt_rows(sft_dir: Path, max_prompts: int, seed: int) -> list[dict[str, Any]]:
    """A seeded subset of the sft artifact's `sft_val.jsonl` rows `{id, prompt, response}`; a prompt is a
    non-empty string or a message list ending with a user turn."""
    rows = read_chat_rows(sft_dir, SFT_VAL, require_response=False)
    for number, row in enumerate(rows, start=1):
        row.setdefault("id", f"{SFT_VAL}:{number}")
    if not rows:
        raise ValueError(f"{sft_dir / SFT_VAL}: no held-out prompts")
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


def reward_model_heldout(rm_dir: Path) -> dict[str, Any] | None:
    """train_rm's figures on build_prefs' held-out pairs, from its manifest: the reward model's accuracy, the
    longer-answer baseline's, the independent judge's, and the pair count; None without a manifest."""
    manifest = read_manifest(rm_dir)
    if manifest is None:
        return None
    metrics = manifest.get("metrics", {})
    return {
        "accuracy": metrics.get("val_accuracy"),
        "length_baseline_accuracy": metrics.get("length_baseline_accuracy"),
        "judge_accuracy": metrics.get("judge_val_accuracy"),
        "pairs": metrics.get("val_pairs"),
    }


def own_tokenizer(model_dir: Path, fallback, trust_remote_code: bool = False):
    """The tokenizer saved in a model dir, else `fallback` (a dir holding only weights)."""
    if any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    return fallback


# ------------------------------------------------------------------------------------------- outputs


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip() or "(empty)"


def samples_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table: prompt (a conversation as `role: content` lines), reference, then each model's answer."""
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
        prompt = _cell(prompt_key(row["prompt"]))
        lines.append(f"| {row['kind']} | {prompt} | {_cell(row.get('reference') or '')} | {answers} |")
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


def _user_turns(prompt: Any) -> int:
    return sum(message["role"] == "user" for message in prompt_messages(prompt))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# --------------------------------------------------------------------------------------------- stage


def evaluate(
    cfg: EvaluateConfig,
    demo: DemoCorpusConfig | None,
    pretrain_dir: Path,
    sft_dir: Path,
    rm_dir: Path,
    ppo_dir: Path,
    out_dir: Path,
    seed: int,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Compare the pretrained, SFT and PPO models; write eval.json, samples.md/.jsonl, judged.jsonl,
    questions.jsonl to `out_dir` and return the metrics (see the module docstring for each key).

    `demo` is only read by a `qa_sources` entry of kind demo. Models load in `dtype` (`base_model.load_dtype`:
    float32 on CPU whatever is asked), running model code from their dirs only with `trust_remote_code`."""
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
    # The SFT model's tokenizer (with its chat template) encodes every chat prompt; the pretrained model's own
    # tokenizer its plain-text prompts and task files.
    chat_tokenizer = load_chat_tokenizer(dirs["sft"], trust_remote_code)
    tokenizers = {
        "sft": chat_tokenizer,
        "ppo": chat_tokenizer,
        "pretrain": own_tokenizer(dirs["pretrain"], chat_tokenizer, trust_remote_code),
    }
    chat_stop = end_of_turn_id(chat_tokenizer)
    prompts = [row["prompt"] for row in prompt_rows]
    chat_ids = chat_prompt_ids(chat_tokenizer, prompts)
    question_prompts = [q["question"] for q in questions]
    sample_rows = (
        [{"kind": "fixed", "prompt": p, "reference": None} for p in cfg.sample_prompts]
        + [
            {"kind": "held-out", "prompt": r["prompt"], "reference": r.get("response")}
            for r in prompt_rows[: cfg.num_samples]
        ]
        + [
            {
                "kind": f"question ({q['lang']})" if "lang" in q else "question",
                "prompt": q["question"],
                "reference": q["answer"],
            }
            for q in questions[: cfg.num_samples]
        ]
    )
    for row in sample_rows:
        row["answers"] = {}
    logger.info(
        "evaluate: %d held-out prompts, %d questions, %d task files, %d sample prompts",
        len(prompt_rows),
        len(questions),
        len(tasks),
        len(sample_rows),
    )

    def load(name: str) -> torch.nn.Module:
        model = load_causal_lm(dirs[name], dtype, torch_device.type, trust_remote_code)
        return model.to(torch_device).eval()

    judged: dict[str, Generations] = {}
    in_chat: dict[str, bool] = {}
    stats: dict[str, dict[str, float]] = {}
    kl: dict[str, float] = {}
    replies: dict[str, list[str]] = {}
    task_accuracies: dict[str, dict[str, float]] = {task.name: {} for task in tasks}
    reference = load("sft")
    # SFT first: it is the KL reference and stays loaded; the others are loaded one at a time.
    for name in ("sft", "pretrain", "ppo"):
        model = reference if name == "sft" else load(name)
        tokenizer = tokenizers[name]
        in_chat[name] = name != "pretrain" or reads_chat(model, tokenizer, chat_tokenizer)
        if in_chat[name]:
            judged[name] = generate(
                model,
                chat_tokenizer,
                chat_ids,
                cfg.max_new_tokens,
                chat_stop,
                cfg.temperature,
                cfg.top_p,
                seed,
                cfg.batch_size,
                phase=f"{name} answers",
            )
            kl[name] = kl_to_reference(
                model,
                reference,
                chat_ids,
                cfg.max_new_tokens,
                cfg.kl_temperature,
                seed + 1,
                cfg.batch_size,
                eos_id=chat_stop,
                pad_id=padding_id(chat_tokenizer),
                phase=f"{name} KL to sft",
            )
        else:
            logger.info(
                "evaluate %s: its tokenizer is not the SFT model's (no chat tokens): it answers the held-out "
                "prompts in plain text, judged as re-encoded text, and has no KL to SFT",
                name,
            )
            judged[name] = generate(
                model,
                tokenizer,
                plain_prompt_ids(tokenizer, prompts, cfg.pretrain_prompt_template),
                cfg.max_new_tokens,
                plain_stop_id(tokenizer),
                cfg.temperature,
                cfg.top_p,
                seed,
                cfg.batch_size,
                phase=f"{name} answers",
            )
            kl[name] = float("nan")
        stats[name] = text_statistics(judged[name].texts, judged[name].token_ids)
        # The pretrained model is asked in plain text and stops at its end-of-text token; the chat models in the
        # chat template, stopping at its end-of-turn token.
        plain = name == "pretrain"
        ask_tokenizer, ask_stop = (tokenizer, plain_stop_id(tokenizer)) if plain else (chat_tokenizer, chat_stop)
        sample_texts = [row["prompt"] for row in sample_rows]
        if plain:
            question_ids, sample_ids = (
                plain_prompt_ids(tokenizer, texts, cfg.pretrain_prompt_template)
                for texts in (question_prompts, sample_texts)
            )
        else:
            question_ids, sample_ids = (
                chat_prompt_ids(chat_tokenizer, texts) for texts in (question_prompts, sample_texts)
            )
        replies[name] = greedy_texts(model, ask_tokenizer, question_ids, cfg, ask_stop, seed, f"{name} questions")
        samples = greedy_texts(model, ask_tokenizer, sample_ids, cfg, ask_stop, seed, f"{name} samples")
        for row, answer in zip(sample_rows, samples):
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

    def scores_of(judge_path: Path) -> dict[str, list[float]]:
        judge_tok = judge_tokenizer(judge_path, chat_tokenizer, trust_remote_code)
        judge = load_reward_model(judge_path, pad_id=padding_id(judge_tok or chat_tokenizer)).to(torch_device)
        scores = {
            name: answer_scores(judge, judge_tok, chat_tokenizer, prompts, judged[name], in_chat[name], cfg.batch_size)
            for name in MODELS
        }
        del judge
        return scores

    rewards = scores_of(rm_dir)
    independent_rewards = scores_of(judge_dir) if judge_dir is not None else None

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
        "reward_model_heldout": reward_model_heldout(rm_dir),
        "kl_to_sft": kl,
        **{key: {name: stats[name][key] for name in MODELS} for key in TEXT_METRICS},
        # Without qa_sources the metric is absent, not zero.
        **({"exact_match": {name: exact_match_rate(replies[name], answers) for name in MODELS}} if questions else {}),
        **(
            {
                "exact_match_by_lang": {
                    lang: {
                        name: exact_match_rate(
                            [r for r, q in zip(replies[name], questions) if q.get("lang") == lang],
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
        "pretrain_prompted_in_chat": in_chat["pretrain"],
        "prompts": len(prompt_rows),
        "prompts_cut": {name: judged[name].prompts_cut for name in MODELS},
        "multi_turn_prompts": sum(_user_turns(p) > 1 for p in prompts),
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
        out_dir / QUESTIONS_JSONL,
        [
            {
                **question,
                "replies": {name: replies[name][i] for name in MODELS},
                "correct": {name: contains_answer(replies[name][i], question["answer"]) for name in MODELS},
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
    "chat_prompt_ids",
    "plain_text",
    "plain_prompt_ids",
    "reads_chat",
    "kl_to_reference",
    "judge_scores",
    "judge_tokenizer",
    "answer_scores",
    "heldout_prompt_rows",
    "reward_model_heldout",
    "seeded_subset",
    "find_judge",
    "samples_markdown",
    "MODELS",
]
