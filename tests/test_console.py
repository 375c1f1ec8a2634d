"""What the terminal and the run logs show of a stage's metrics."""

from __future__ import annotations

from zero_chatgpt.console import key_metric_text, metrics_text


def test_metric_lines_read_as_rounded_key_value_pairs_with_dotted_nested_keys():
    line = metrics_text(
        {"docs_in": 846, "val_loss": 5.431552783862965, "dropped": {"empty": 0, "share": 0.000123456}, "seeds": [1, 2]}
    )
    assert line == "docs_in=846 val_loss=5.432 dropped.empty=0 dropped.share=0.0001235 seeds=[1, 2]"


def test_long_lists_are_counted_and_empty_sections_kept():
    assert metrics_text({"files": list(range(9)), "reasons": {}}) == "files=<9 items> reasons={}"


def test_the_key_metric_is_rounded_like_the_log_lines():
    assert key_metric_text("pretrain", {"val_loss": 1.0081234}) == "val_loss=1.008"
    assert key_metric_text("pretrain", {}) == ""
