"""Likelihood-scored zero- and few-shot classification / multiple choice over JSONL task files.

File format (full guide with examples: docs/eval_tasks.md)
---------------------------------------------------------
A task is a JSONL file, one example per line: any fields, plus the gold label (field `label` unless the spec
says otherwise). Its *spec* says how to turn a row into a prompt and options. The spec is looked up, in order:

1. a sidecar `<task>.json` beside `<task>.jsonl`;
2. a header: the file's first line is `{"task_spec": {...}}` (that line is not an example);
3. a built-in spec named like the file's stem or its rows' `task` field (`model/eval_templates.py`: the
   FewCLUE / CLUE sets tnews, iflytek, csldcp, eprstmt, ocnli, afqmc, bustm, cluewsc, csl, c3, chid).

Spec keys (`TaskSpec`):
- `template` (required): Python `str.format` text over the row's fields; list fields are joined with
  `list_separator`. `{option}` marks where each option goes; without it the option is appended at the end.
- the options, exactly one of:
  `label_words` {label value: option text} (label values compared as strings, so 0 and "0" are the same);
  `choices_field`: the row field holding its own list of option texts; the gold label is an index into it
  (or the text of the right choice);
  `options_from_labels: true`: the options are the distinct label values of the file, each its own text.
- `label_field` ("label"), `blank` (a marker inside a field, such as chid's `#idiom#`, that the option
  replaces instead of `{option}`), `list_separator` ("，"), `example_separator` ("\\n\\n" between few-shot
  examples), `score` ("sum" / "mean", overriding the configured default), `name` (default: the file stem).

Scoring
-------
The rendered text is split at the option: the part before is the *context*, the option plus the rest of the
text is the *continuation*. An option's score is the sum (or per-token mean) of the log-likelihood of the
continuation's tokens given the document start + context, under the causal LM (the document start is the
tokenizer's BOS token, else its end-of-text token, which separates documents in pretraining; none when it has
neither: see `document_start_ids`); the prediction is the argmax
(the first option on a tie). Context and continuation are tokenized separately, so every option starts on a
token boundary. Too long: the continuation keeps its start (at least half the model's context, or all of
it), the context keeps its end.

Few-shot: the file's first `few_shot` usable rows become solved examples (context + gold continuation,
joined by `example_separator`) prepended to every scored prompt; they are not scored. A row that cannot be
used (a missing field, a label outside the options, no blank marker) is skipped and counted by reason.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import PreTrainedModel

from zero_chatgpt.model.artifact_io import iter_jsonl
from zero_chatgpt.model.eval_templates import BUILTIN_TASKS
from zero_chatgpt.model.generation import cache_kwargs, left_pad, position_kwargs, positions_from_mask
from zero_chatgpt.tokenizer.chat_encoding import pad_id

logger = logging.getLogger(__name__)

SPEC_HEADER_KEY = "task_spec"
# Examples with at least this many options read their context once (KV cache); fewer batch better whole.
SHARED_CONTEXT_MIN_OPTIONS = 4
# Stands in for the option while a row is rendered; no real text contains NUL characters.
_OPTION_SLOT = "\x00option\x00"


class TaskSpec(BaseModel):
    """How a task file's rows become (context, options, gold); see the module docstring for each key."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="task name in the metrics; default the file stem")
    template: str = Field(..., description="str.format text over row fields; `{option}` marks the option")
    label_field: str = Field("label", description="row field with the gold label")
    label_words: dict[str, str] | None = Field(None, description="label value -> option text")
    choices_field: str | None = Field(None, description="row field with the row's own option texts")
    options_from_labels: bool = Field(False, description="options = the distinct label values of the file")
    blank: str | None = Field(None, description="marker inside a field that the option replaces")
    list_separator: str = Field("，", description="joins list-valued fields")
    example_separator: str = Field("\n\n", description="between few-shot examples and the prompt")
    score: Literal["sum", "mean"] | None = Field(None, description="overrides evaluate.task_score")

    @model_validator(mode="after")
    def _one_option_source(self) -> TaskSpec:
        sources = [self.label_words is not None, self.choices_field is not None, self.options_from_labels]
        if sum(sources) != 1:
            raise ValueError("give exactly one of `label_words`, `choices_field`, `options_from_labels: true`")
        if self.label_words is not None:
            if len(self.label_words) < 2:
                raise ValueError("`label_words` needs at least two labels")
            if any(not word for word in self.label_words.values()):
                raise ValueError("`label_words` has an empty option text")
        slots = self.template.count("{option}")
        if slots > 1:
            raise ValueError("`template` has `{option}` more than once")
        if self.blank is not None and slots:
            raise ValueError("give either `blank` or `{option}` in the template, not both")
        return self


class RowError(ValueError):
    """A row that cannot be used; the message is the skip reason counted in the metrics."""


class _RowFields(dict):
    def __missing__(self, key: str) -> Any:
        raise RowError(f"missing field {key!r}")


@dataclass
class TaskItem:
    """One scored example: the context and each option's continuation (option + rest of the text)."""

    context: str
    continuations: list[str]
    gold: int


@dataclass
class PreparedTask:
    """A task file turned into text: few-shot prefix, items to score, and skipped-row counts by reason."""

    name: str
    path: Path
    spec: TaskSpec
    prefix: str
    items: list[TaskItem]
    skipped: Counter = field(default_factory=Counter)
    few_shot: int = 0  # solved examples in `prefix`

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess: the mean of 1 / options over the items."""
        return sum(1.0 / len(item.continuations) for item in self.items) / len(self.items) if self.items else 0.0


# ------------------------------------------------------------------------------------------- reading


def read_task_file(path: Path) -> tuple[TaskSpec, list[tuple[int, dict[str, Any]]]]:
    """The spec of a task file and its rows as (line number, row); errors name the file and line."""
    path = Path(path)
    rows = list(iter_jsonl(path))
    header = None
    if rows and SPEC_HEADER_KEY in rows[0][1]:
        header = rows.pop(0)[1][SPEC_HEADER_KEY]
    return resolve_spec(path, header, rows), rows


def resolve_spec(path: Path, header: dict[str, Any] | None, rows: list[tuple[int, dict[str, Any]]]) -> TaskSpec:
    """Sidecar `<stem>.json`, else the header, else the built-in spec of the stem or the rows' `task` field."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            raw, where = json.loads(sidecar.read_text(encoding="utf-8")), str(sidecar)
        except json.JSONDecodeError as err:
            raise ValueError(f"{sidecar}: not valid JSON ({err.msg})") from None
    elif header is not None:
        raw, where = header, f"{path}:1 ({SPEC_HEADER_KEY})"
    else:
        task_field = rows[0][1].get("task") if rows else None
        name = path.stem if path.stem in BUILTIN_TASKS else task_field if task_field in BUILTIN_TASKS else None
        if name is None:
            raise ValueError(
                f"{path}: no task spec: add {sidecar.name} beside it, or a first line "
                f'{{"{SPEC_HEADER_KEY}": {{...}}}}, or name the file after a built-in task '
                f"({', '.join(sorted(BUILTIN_TASKS))}); see docs/eval_tasks.md"
            )
        raw, where = {"name": name, **BUILTIN_TASKS[name]}, f"built-in spec {name!r}"
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{where}: bad task spec: {problems}") from None
    if spec.name is None:
        spec = spec.model_copy(update={"name": path.stem})
    return spec


def expand_task_globs(patterns: Sequence[str]) -> list[Path]:
    """The `.jsonl` files matched by `patterns` (sorted, each once); a pattern matching none is an error."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(
            Path(p)
            for p in glob.glob(os.path.expanduser(pattern), recursive=True)
            if p.endswith(".jsonl") and Path(p).is_file()
        )
        if not matches:
            raise ValueError(f"evaluate.task_files: {pattern!r} matches no .jsonl file")
        found.extend(m for m in matches if m not in found)
    return found


# ------------------------------------------------------------------------------------------- rendering


def _field_text(value: Any, separator: str) -> str:
    if isinstance(value, list):
        return separator.join(str(item) for item in value)
    return str(value)


def row_options(spec: TaskSpec, row: dict[str, Any], label_options: list[str]) -> tuple[list[str], int]:
    """(option texts, gold index) of one row; `label_options` are the file's labels (options_from_labels)."""
    if spec.label_field not in row:
        raise RowError(f"missing field {spec.label_field!r}")
    label = row[spec.label_field]
    if spec.label_words is not None:
        keys = list(spec.label_words)
        if str(label) not in spec.label_words:
            raise RowError(f"label {label!r} not in label_words")
        return list(spec.label_words.values()), keys.index(str(label))
    if spec.options_from_labels:
        return label_options, label_options.index(str(label))
    choices = row.get(spec.choices_field)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise RowError(f"field {spec.choices_field!r} is not a list of two or more non-empty strings")
    if isinstance(label, int) and not isinstance(label, bool):
        if not 0 <= label < len(choices):
            raise RowError(f"label index {label} outside the {len(choices)} choices")
        return choices, label
    if isinstance(label, str) and label in choices:
        return choices, choices.index(label)
    raise RowError(f"label {label!r} is neither a choice index nor a choice text")


def render_row(spec: TaskSpec, row: dict[str, Any], options: list[str]) -> tuple[str, list[str]]:
    """(context, continuations): the template filled with the row, split where the option goes.

    Each continuation is an option followed by the text after it (empty when the option ends the text).
    """
    fields = _RowFields({key: _field_text(value, spec.list_separator) for key, value in row.items()})
    fields["option"] = _OPTION_SLOT
    try:
        text = spec.template.format_map(fields)
    except RowError:
        raise
    except (IndexError, ValueError) as err:
        raise RowError(f"template does not fill ({err})") from None
    if spec.blank is not None:
        if spec.blank not in text:
            raise RowError(f"blank marker {spec.blank!r} not found")
        text = text.replace(spec.blank, _OPTION_SLOT, 1)
    if _OPTION_SLOT not in text:
        text += _OPTION_SLOT
    context, rest = text.split(_OPTION_SLOT, 1)
    return context, [option + rest for option in options]


def prepare_task(
    spec: TaskSpec, rows: list[tuple[int, dict[str, Any]]], path: Path, few_shot: int = 0, max_rows: int | None = None
) -> PreparedTask:
    """Render every row: the first `few_shot` usable rows become the solved-example prefix, at most
    `max_rows` of the following usable rows are scored. Unusable rows are skipped, counted by reason."""
    label_options = (
        sorted({str(row[spec.label_field]) for _, row in rows if spec.label_field in row})
        if spec.options_from_labels
        else []
    )
    examples: list[str] = []
    items: list[TaskItem] = []
    skipped: Counter = Counter()
    for number, row in rows:
        if max_rows is not None and len(items) >= max_rows:
            break
        try:
            options, gold = row_options(spec, row, label_options)
            context, continuations = render_row(spec, row, options)
        except RowError as err:
            skipped[str(err)] += 1
            logger.debug("%s:%d skipped: %s", path, number, err)
            continue
        if len(examples) < few_shot:
            examples.append(context + continuations[gold])
        else:
            items.append(TaskItem(context, continuations, gold))
    if skipped:
        logger.warning(
            "%s: %d rows skipped (%s)",
            path,
            sum(skipped.values()),
            "; ".join(f"{reason}: {count}" for reason, count in skipped.most_common()),
        )
    prefix = "".join(example + spec.example_separator for example in examples)
    return PreparedTask(spec.name or path.stem, path, spec, prefix, items, skipped, len(examples))


def load_task(path: Path, few_shot: int = 0, max_rows: int | None = None) -> PreparedTask:
    """`read_task_file` then `prepare_task`."""
    spec, rows = read_task_file(Path(path))
    return prepare_task(spec, rows, Path(path), few_shot, max_rows)


# --------------------------------------------------------------------------------------------- scoring


def document_start_ids(tokenizer) -> list[int]:
    """What a plain-text document starts with for this tokenizer's model: its BOS token (LLaMA, BLOOM, OPT), else
    its end-of-text token, which separates documents in pretraining (GPT-2, Qwen, this project's tokenizer);
    nothing when it has neither."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return [int(token_id)]
    return []


def encode_request(tokenizer, context: str, continuation: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids (context, continuation): the document start (`document_start_ids`) + context, and the
    continuation, encoded apart.

    When the pair exceeds `max_len` tokens the continuation keeps its start (at least half the window, or
    all of itself when shorter) and the context keeps its end.
    """
    context_ids = document_start_ids(tokenizer) + list(tokenizer(context, add_special_tokens=False)["input_ids"])
    continuation_ids = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    if not continuation_ids:
        raise ValueError(f"empty continuation {continuation!r}: an option must have text")
    if len(context_ids) + len(continuation_ids) > max_len:
        budget = max(max_len - len(context_ids), min(len(continuation_ids), max_len // 2))
        continuation_ids = continuation_ids[:budget]
        context_ids = context_ids[len(context_ids) - (max_len - len(continuation_ids)) :]
    return context_ids, continuation_ids


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 32,
    pad_token_id: int = 0,
) -> list[tuple[float, int]]:
    """(sum of log p(continuation token | everything before it), token count) for each (context, continuation).

    Requests that share a context (the options of one example, when there are at least
    `SHARED_CONTEXT_MIN_OPTIONS`) read it once when `model` is a Hugging Face model: a many-class task then
    costs one context pass plus short option passes, not one long pass per
    option (see `_shared_context_logprobs`). The rest go through `_batched_logprobs`. Context ids must hold
    at least one token. `pad_token_id` fills padding (masked out, so any id the model knows will do: the
    tokenizer's pad id, see `pad_id`). The model runs in eval mode and is put back in its previous mode.
    """
    for context, _ in requests:
        if not context:
            raise ValueError("continuation_logprobs: a context needs at least one token")
    results: list[tuple[float, int]] = [(0.0, 0)] * len(requests)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(requests):
        groups.setdefault(tuple(context), []).append(index)
    can_share = isinstance(model, PreTrainedModel)
    single = [
        i for members in groups.values() if not can_share or len(members) < SHARED_CONTEXT_MIN_OPTIONS for i in members
    ]
    was_training = model.training
    model.eval()
    try:
        for index, value in zip(
            single, _batched_logprobs(model, [requests[i] for i in single], batch_size, pad_token_id)
        ):
            results[index] = value
        if can_share:
            for context, members in groups.items():
                if len(members) < SHARED_CONTEXT_MIN_OPTIONS:
                    continue
                for start in range(0, len(members), batch_size):
                    chunk = members[start : start + batch_size]
                    values = _shared_context_logprobs(
                        model, list(context), [requests[i][1] for i in chunk], pad_token_id
                    )
                    for index, value in zip(chunk, values):
                        results[index] = value
    finally:
        model.train(was_training)
    return results


def _batched_logprobs(
    model: torch.nn.Module, requests: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_token_id: int
) -> list[tuple[float, int]]:
    """Whole sequences, sorted by length and left-padded to (B, L) with position ids from the mask, so every
    row ends in the last column and its continuation (c tokens) fills the last c columns. Only the last
    max(c) + 1 positions are projected onto the vocabulary (`logits_to_keep`)."""
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lengths = torch.tensor([len(requests[i][1]) for i in batch])
        longest = int(lengths.max())
        ids, mask = left_pad([requests[i][0] + requests[i][1] for i in batch], pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            **position_kwargs(model, positions_from_mask(mask)),
            use_cache=False,
            logits_to_keep=longest + 1,
        ).logits
        # Column j of `predicting` predicts token column j of `targets`: the last `longest` tokens.
        predicting, targets = logits[:, -(longest + 1) : -1], ids[:, -longest:]
        token_logprobs = torch.log_softmax(predicting.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        # Row r's continuation is its last lengths[r] columns.
        scored = torch.arange(longest)[None, :] >= (longest - lengths)[:, None]
        sums = (token_logprobs * scored.to(device)).sum(dim=1).tolist()
        for r, index in enumerate(batch):
            results[index] = (sums[r], int(lengths[r]))
    return results


def _shared_context_logprobs(
    model: PreTrainedModel, context: list[int], continuations: list[list[int]], pad_token_id: int
) -> list[tuple[float, int]]:
    """One context, G continuations: the context runs once (1, Lc) into a KV cache, which is repeated G
    times; the continuations run right-padded (G, Lk) on top of it. The context's last logits predict each
    continuation's first token; continuation position j predicts its token j + 1."""
    device = next(model.parameters()).device
    context_ids = torch.tensor([context], device=device)
    out = model(input_ids=context_ids, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(continuations))
    lengths = [len(c) for c in continuations]
    width = max(lengths)
    ids = torch.full((len(continuations), width), pad_token_id, dtype=torch.long)
    cont_mask = torch.zeros((len(continuations), width), dtype=torch.long)
    for row, tokens in enumerate(continuations):
        ids[row, : len(tokens)] = torch.as_tensor(tokens)
        cont_mask[row, : len(tokens)] = 1
    ids, cont_mask = ids.to(device), cont_mask.to(device)
    mask = torch.cat([torch.ones((len(continuations), len(context)), dtype=torch.long, device=device), cont_mask], 1)
    positions = (len(context) + torch.arange(width, device=device)).expand(len(continuations), -1)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        **position_kwargs(model, positions),
        **cache_kwargs(cache),
        use_cache=True,
    ).logits  # (G, Lk, V)
    rest = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    rest = (rest * cont_mask[:, 1:]).sum(dim=1)
    totals = first[ids[:, 0]] + rest
    return [(float(total), length) for total, length in zip(totals.tolist(), lengths)]


def option_scores(logprobs: Sequence[tuple[float, int]], mode: Literal["sum", "mean"]) -> list[float]:
    """Scores of options from their (sum log-likelihood, token count): the sum, or the per-token mean."""
    if mode == "sum":
        return [total for total, _ in logprobs]
    return [total / max(count, 1) for total, count in logprobs]


def predict(scores: Sequence[float]) -> int:
    """Index of the best score; the first one on a tie."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def task_accuracy(
    model: torch.nn.Module, tokenizer, task: PreparedTask, default_score: Literal["sum", "mean"], batch_size: int = 32
) -> float:
    """Share of the task's items whose best-scoring option is the gold one (0.0 for no items)."""
    if not task.items:
        return 0.0
    max_len = int(getattr(model.config, "max_position_embeddings", 1 << 30))
    mode = task.spec.score or default_score
    requests, owners = [], []
    for item_index, item in enumerate(task.items):
        for continuation in item.continuations:
            requests.append(encode_request(tokenizer, task.prefix + item.context, continuation, max_len))
            owners.append(item_index)
    logprobs = continuation_logprobs(model, requests, batch_size, pad_id(tokenizer))
    per_item: list[list[tuple[float, int]]] = [[] for _ in task.items]
    for owner, value in zip(owners, logprobs):
        per_item[owner].append(value)
    correct = sum(predict(option_scores(values, mode)) == item.gold for values, item in zip(per_item, task.items))
    return correct / len(task.items)


def task_summary(task: PreparedTask, accuracy_by_model: dict[str, float], default_score: str) -> dict[str, Any]:
    """The metrics record of one task: accuracy (of the first model), n, chance, and the details."""
    first = next(iter(accuracy_by_model.values())) if accuracy_by_model else float("nan")
    return {
        "accuracy": first,
        "n": len(task.items),
        "chance": task.chance,
        "accuracy_by_model": dict(accuracy_by_model),
        "few_shot": task.few_shot,
        "score": task.spec.score or default_score,
        "skipped": sum(task.skipped.values()),
        "skip_reasons": dict(task.skipped),
        "file": str(task.path),
    }


__all__ = [
    "TaskSpec",
    "TaskItem",
    "PreparedTask",
    "RowError",
    "read_task_file",
    "resolve_spec",
    "expand_task_globs",
    "row_options",
    "render_row",
    "prepare_task",
    "load_task",
    "document_start_ids",
    "encode_request",
    "continuation_logprobs",
    "option_scores",
    "predict",
    "task_accuracy",
    "task_summary",
]
