"""Built-in task specs for the FewCLUE / CLUE Chinese dev sets (`tnews.jsonl`, `c3.jsonl`, ...).

A task file whose stem (or whose rows' `task` field) is a key here needs no sidecar: point
`evaluate.task_files` at the folder. Each value is a `TaskSpec` mapping (see `model/eval_tasks.py` and
docs/eval_tasks.md). The option always comes after the evidence it depends on, because the score is the
option's likelihood *given what precedes it*; a template whose option came first would score a prior.

Label words are short natural Chinese words so that a model pretrained on Chinese text can tell them apart
by likelihood; the many-class tasks (iflytek, csldcp) use their Chinese label names as they are.
"""

from __future__ import annotations

from typing import Any

TNEWS_LABEL_WORDS = {
    "news_story": "故事",
    "news_culture": "文化",
    "news_entertainment": "娱乐",
    "news_sports": "体育",
    "news_finance": "财经",
    "news_house": "房产",
    "news_car": "汽车",
    "news_edu": "教育",
    "news_tech": "科技",
    "news_military": "军事",
    "news_travel": "旅游",
    "news_world": "国际",
    "news_stock": "股票",
    "news_agriculture": "农业",
    "news_game": "电竞",
}

SAME_MEANING_WORDS = {"0": "不同", "1": "相同"}

BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    # Short news titles, 15 topics.
    "tnews": {"template": "新闻：{sentence}\n类别：{option}", "label_words": TNEWS_LABEL_WORDS},
    # App descriptions, 119 categories named in Chinese: the options are the labels seen in the file.
    "iflytek": {"template": "应用介绍：{sentence}\n应用类别：{option}", "options_from_labels": True},
    # Paper abstracts, 67 disciplines named in Chinese.
    "csldcp": {"template": "论文摘要：{content}\n学科：{option}", "options_from_labels": True},
    # Product reviews, positive / negative.
    "eprstmt": {
        "template": "商品评论：{sentence}\n这是一条{option}。",
        "label_words": {"Positive": "好评", "Negative": "差评"},
    },
    # Natural language inference: does sentence1 entail sentence2?
    "ocnli": {
        "template": "{sentence1}\n问题：“{sentence2}”对吗？\n回答：{option}",
        "label_words": {"entailment": "对", "neutral": "可能", "contradiction": "错"},
    },
    # Paraphrase pairs (1 = same meaning).
    "afqmc": {
        "template": "句子一：{sentence1}\n句子二：{sentence2}\n两句话的意思{option}。",
        "label_words": SAME_MEANING_WORDS,
    },
    "bustm": {
        "template": "句子一：{sentence1}\n句子二：{sentence2}\n两句话的意思{option}。",
        "label_words": SAME_MEANING_WORDS,
    },
    # Winograd-style coreference: does the pronoun span2 refer to span1?
    "cluewsc": {
        "template": "{text}\n问题：这里的“{span2_text}”指的是“{span1_text}”吗？\n回答：{option}",
        "label_words": {"true": "是", "false": "不是"},
    },
    # Are these keywords the paper's real ones (1) or not (0)?
    "csl": {
        "template": "摘要：{abst}\n关键词：{keyword}\n问题：这些都是这篇论文的关键词吗？\n回答：{option}",
        "label_words": {"1": "是", "0": "不是"},
    },
    # Reading comprehension with 2-4 answer choices per question.
    "c3": {
        "template": "{context}\n问：{question}\n答：{option}",
        "choices_field": "choices",
        "label_field": "label_index",
    },
    # Idiom cloze: the blank `#idiom#` in the passage is filled with each candidate in turn.
    "chid": {"template": "{content}", "blank": "#idiom#", "choices_field": "candidates"},
}

__all__ = ["BUILTIN_TASKS", "TNEWS_LABEL_WORDS"]
