"""Likelihood-scored task files: spec lookup, rendering, few-shot, option scoring against hand-computed
log-likelihoods on a tiny random model, and a model that prefers one label scoring as it should."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from model_fixtures import make_tokenizer_dir
from transformers import AutoTokenizer

from zero_chatgpt.config import ModelConfig
from zero_chatgpt.model.build import build_model
from zero_chatgpt.model.eval_tasks import (
    TaskSpec,
    continuation_logprobs,
    encode_request,
    expand_task_globs,
    load_task,
    option_scores,
    predict,
    read_task_file,
    render_row,
    task_accuracy,
    task_summary,
)
from zero_chatgpt.model.eval_templates import BUILTIN_TASKS

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "zh_eval"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_tokenizer_dir(tmp_path_factory.mktemp("tasks_tokenizer")))


@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    torch.manual_seed(0)
    return build_model(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=64),
        len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).eval()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ specs


def test_spec_comes_from_sidecar_then_header_then_builtin(tmp_path):
    rows = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]
    sidecar_task = write_jsonl(tmp_path / "sentiment.jsonl", rows)
    (tmp_path / "sentiment.json").write_text(
        json.dumps(
            {"template": "Review: {text}\nSentiment: {option}", "label_words": {"0": "negative", "1": "positive"}}
        )
    )
    spec, read_rows = read_task_file(sidecar_task)
    assert spec.name == "sentiment" and spec.label_words == {"0": "negative", "1": "positive"}
    assert len(read_rows) == 2

    header = {"task_spec": {"name": "moods", "template": "{text} =>", "label_words": {"0": "no", "1": "yes"}}}
    header_task = write_jsonl(tmp_path / "other.jsonl", [header, *rows])
    spec, read_rows = read_task_file(header_task)
    assert spec.name == "moods" and spec.template == "{text} =>"
    assert [number for number, _ in read_rows] == [2, 3]  # the header line is not an example

    by_field = write_jsonl(tmp_path / "renamed.jsonl", [{"task": "eprstmt", "sentence": "好", "label": "Positive"}])
    assert read_task_file(by_field)[0].name == "eprstmt"


def test_a_file_without_spec_or_with_a_bad_spec_fails_naming_it(tmp_path):
    orphan = write_jsonl(tmp_path / "orphan.jsonl", [{"text": "x", "label": 0}])
    with pytest.raises(ValueError, match="orphan.jsonl: no task spec"):
        read_task_file(orphan)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 0}])
    (tmp_path / "bad.json").write_text(
        json.dumps({"template": "{text}", "label_words": {"0": "a", "1": "b"}, "choices_field": "c"})
    )
    with pytest.raises(ValueError, match=r"bad.json: bad task spec.*exactly one"):
        read_task_file(bad)
    (tmp_path / "bad.json").write_text(json.dumps({"template": "{text}", "labelwords": {"0": "a"}}))
    with pytest.raises(ValueError, match="labelwords"):
        read_task_file(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "x", "label": 0}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        read_task_file(broken)
    with pytest.raises(ValueError, match="matches no .jsonl"):
        expand_task_globs([str(tmp_path / "nothing" / "*.jsonl")])


def test_render_splits_at_the_option_wherever_it_is():
    middle = TaskSpec(template="{a}？{option}，{b}", label_words={"0": "不是", "1": "是的"})
    context, continuations = render_row(middle, {"a": "天晴", "b": "出门", "label": 1}, ["不是", "是的"])
    assert context == "天晴？" and continuations == ["不是，出门", "是的，出门"]

    appended = TaskSpec(template="Q: {q} keywords: {k} A:", label_words={"0": " no", "1": " yes"})
    context, continuations = render_row(appended, {"q": "ok?", "k": ["x", "y"], "label": 0}, [" no", " yes"])
    assert context == "Q: ok? keywords: x，y A:" and continuations == [" no", " yes"]

    cloze = TaskSpec(template="{content}", blank="#idiom#", choices_field="candidates")
    context, continuations = render_row(
        cloze, {"content": "他#idiom#地走了。", "candidates": ["甲", "乙"]}, ["甲", "乙"]
    )
    assert context == "他" and continuations == ["甲地走了。", "乙地走了。"]


def test_few_shot_prefix_uses_first_rows_with_gold_and_skips_bad_rows(tmp_path):
    rows = [
        {"text": "one", "label": 1},
        {"text": "two", "label": 0},
        {"label": 1},  # no `text`
        {"text": "three", "label": 7},  # a label outside label_words
        {"text": "four", "label": 0},
        {"text": "five", "label": 1},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    (tmp_path / "t.json").write_text(
        json.dumps(
            {"template": "{text} is {option}.", "label_words": {"0": "even", "1": "odd"}, "example_separator": "\n"}
        )
    )
    task = load_task(path, few_shot=2)
    assert task.prefix == "one is odd.\ntwo is even.\n"
    assert [item.context for item in task.items] == ["four is ", "five is "]
    assert [item.gold for item in task.items] == [0, 1]
    assert task.items[0].continuations == ["even.", "odd."]
    assert task.skipped == {"missing field 'text'": 1, "label 7 not in label_words": 1}
    assert task.chance == 0.5 and task.few_shot == 2
    assert len(load_task(path, few_shot=0, max_rows=1).items) == 1


def test_choices_take_an_index_or_the_choice_text_and_labels_can_be_the_options(tmp_path):
    path = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"q": "a", "choices": ["x", "y", "z"], "label": 2},
            {"q": "b", "choices": ["x", "y"], "label": "x"},
            {"q": "c", "choices": ["x", "y"], "label": 5},
        ],
    )
    (tmp_path / "mc.json").write_text(json.dumps({"template": "{q}:", "choices_field": "choices"}))
    task = load_task(path)
    assert [item.gold for item in task.items] == [2, 0]
    assert task.chance == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert sum(task.skipped.values()) == 1

    labels = write_jsonl(tmp_path / "apps.jsonl", [{"s": "a", "label": "工具"}, {"s": "b", "label": "游戏"}])
    (tmp_path / "apps.json").write_text(json.dumps({"template": "{s}类别：", "options_from_labels": True}))
    task = load_task(labels)
    assert task.items[0].continuations == ["工具", "游戏"] and [i.gold for i in task.items] == [0, 1]


# ------------------------------------------------------------------------------------------ scoring


def test_continuation_logprobs_match_a_hand_computed_forward(tokenizer, tiny_lm):
    requests = [
        encode_request(tokenizer, "river bridge", " harbour", 64),
        encode_request(tokenizer, "a much longer context about the winter stone", " garden lantern", 64),
        encode_request(tokenizer, "x", "y", 64),
        # three options of one example share the context: it is read once, through the KV cache
        *[
            encode_request(tokenizer, "Is the river wide?", option, 64)
            for option in (" yes", " no", " a bit", " nope", " surely")
        ],
    ]
    # this project's tokenizer has no BOS: a context starts after the end-of-text token that separates documents
    assert requests[0][0][0] == tokenizer.eos_token_id and requests[3][0] == requests[7][0]
    batched = continuation_logprobs(tiny_lm, requests, batch_size=2)
    for (context, continuation), (total, count) in zip(requests, batched):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            log_probs = torch.log_softmax(tiny_lm(input_ids=ids).logits[0].float(), dim=-1)
        expected = sum(float(log_probs[len(context) + k - 1, token]) for k, token in enumerate(continuation))
        assert count == len(continuation)
        assert total == pytest.approx(expected, abs=1e-4)


def test_scores_sum_or_mean_and_ties_go_to_the_first_option():
    logprobs = [(-6.0, 3), (-4.0, 1)]
    assert option_scores(logprobs, "sum") == [-6.0, -4.0]
    assert option_scores(logprobs, "mean") == [-2.0, -4.0]
    assert predict(option_scores(logprobs, "sum")) == 1 and predict(option_scores(logprobs, "mean")) == 0
    assert predict([-1.0, -1.0, -3.0]) == 0


def test_requests_that_are_too_long_keep_the_contexts_end_and_the_options_start(tokenizer):
    context, continuation = encode_request(tokenizer, "word " * 60, "answer " * 40, max_len=32)
    assert len(context) + len(continuation) == 32 and len(continuation) == 16
    full = tokenizer("word " * 60, add_special_tokens=False)["input_ids"]
    assert context == full[-16:]


class PreferringLM(torch.nn.Module):
    """A fake causal LM whose next-token distribution strongly favours `favoured` ids, whatever the input."""

    def __init__(self, vocab_size: int, favoured: list[int]) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab_size))
        with torch.no_grad():
            self.bias[favoured] = 10.0
        self.config = SimpleNamespace(max_position_embeddings=128)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0):
        width = logits_to_keep or input_ids.shape[1]
        return SimpleNamespace(logits=self.bias.expand(input_ids.shape[0], width, -1))


def test_a_model_that_prefers_one_label_gets_it_right_and_the_other_wrong(tmp_path, tokenizer):
    favoured = tokenizer("yes", add_special_tokens=False)["input_ids"]
    model = PreferringLM(len(tokenizer), favoured)
    (tmp_path / "yes.json").write_text(
        json.dumps({"template": "{q} Answer: {option}", "label_words": {"1": "yes", "0": "nope"}})
    )
    (tmp_path / "no.json").write_text((tmp_path / "yes.json").read_text())
    gold_yes = load_task(write_jsonl(tmp_path / "yes.jsonl", [{"q": f"q{i}", "label": 1} for i in range(5)]))
    gold_no = load_task(write_jsonl(tmp_path / "no.jsonl", [{"q": f"q{i}", "label": 0} for i in range(5)]))
    assert task_accuracy(model, tokenizer, gold_yes, "sum") == 1.0
    assert task_accuracy(model, tokenizer, gold_no, "mean") == 0.0
    summary = task_summary(gold_yes, {"pretrain": 1.0, "sft": 0.5}, "sum")
    assert summary["accuracy"] == 1.0 and summary["n"] == 5 and summary["chance"] == 0.5
    assert summary["accuracy_by_model"] == {"pretrain": 1.0, "sft": 0.5}


# ------------------------------------------------------------------------------------------ FewCLUE


def test_builtin_templates_are_valid_specs():
    for name, raw in BUILTIN_TASKS.items():
        TaskSpec.model_validate({"name": name, **raw})


def test_every_shared_fewclue_file_loads_with_a_builtin_template(tokenizer, tiny_lm):
    if not SHARED_EVAL.is_dir():
        pytest.skip(f"{SHARED_EVAL} is absent")
    files = expand_task_globs([str(SHARED_EVAL / "*.jsonl")])
    assert {path.stem for path in files} <= set(BUILTIN_TASKS)
    for path in files:
        task = load_task(path, few_shot=1, max_rows=3)
        assert len(task.items) == 3 and not task.skipped, path
        assert 0.0 < task.chance <= 0.5
        accuracy = task_accuracy(tiny_lm, tokenizer, task, "sum", batch_size=8)
        assert 0.0 <= accuracy <= 1.0 and not math.isnan(accuracy)
