"""The report card is built from manifests alone: metrics, lineage and curves."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from zero_chatgpt.artifacts import build_artifact
from zero_chatgpt.report import build_report, format_figure, render_markdown, round_figure


def make_stage(root, stage, metrics, curve, upstream=None):
    def body(out_dir):
        with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as handle:
            for record in curve:
                handle.write(json.dumps(record) + "\n")
            handle.write('{"step": 99, "loss"')  # a half-written last line from a killed run
        return metrics

    return build_artifact(stage, "1", {"k": stage}, upstream or {}, 0, root, body)


def test_report_has_metrics_lineage_and_plots(tmp_path):
    pretrain = make_stage(
        tmp_path,
        "pretrain",
        {"val_loss": 2.5, "unigram_val_loss": 5.0, "table": {"x": 1}},
        [{"step": s, "loss": 6 - s} for s in range(1, 5)] + [{"step": 4, "val_loss": 2.5}],
    )
    ppo = make_stage(
        tmp_path,
        "ppo",
        {"reward_before": 0.1, "reward_after": 0.4, "kl": 1.2},
        [{"step": s, "reward": 0.1 * s, "kl": 0.2 * s} for s in range(1, 4)],
        upstream={"pretrain": pretrain.record()},
    )
    out = tmp_path / "report"
    metrics = build_report({"pretrain": Path(pretrain.path), "ppo": Path(ppo.path)}, out)
    assert metrics == {"stages": 2, "plots": 2}
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["pretrain"]["metrics"] == {"val_loss": 2.5, "unigram_val_loss": 5.0}
    assert report["stages"]["ppo"]["upstream"] == {"pretrain": pretrain.fingerprint}
    assert sorted(report["plots"]) == ["ppo_reward_kl.png", "pretrain_loss_val_loss.png"]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "reward_after = 0.4" in markdown and pretrain.fingerprint[:12] in markdown
    with_status = render_markdown(report, {"ppo": {"status": "cached", "seconds": 0.5}})
    assert "| ppo | cached | 0.5 |" in with_status


def test_the_published_card_embeds_small_plots_and_rounds_its_figures(tmp_path):
    rm = make_stage(
        tmp_path,
        "train_rm",
        {"val_accuracy": 0.7291666666666666, "val_loss": 5.431552783862965, "tokens_per_s": 123456.789},
        [{"step": s, "loss": 1 / s} for s in range(1, 5)] + [{"step": 4, "val_loss": 0.6, "val_accuracy": 0.7}],
    )
    out = tmp_path / "report"
    build_report({"train_rm": Path(rm.path)}, out)
    report = json.loads((out / "report.json").read_text())
    assert report["plots"] == ["train_rm_loss_val_loss_val_accuracy.png"]
    markdown = render_markdown(report, plots_dir=out)
    (image,) = re.findall(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    png = base64.b64decode(image)
    assert png == (out / report["plots"][0]).read_bytes()
    assert len(png) < 60_000, len(png)  # small enough to travel inside a markdown artifact
    assert "val_loss = 5.432" in markdown and "val_accuracy = 0.7292" in markdown
    assert "tokens_per_s = 123,457" in markdown and "5.4315" not in markdown


def test_figures_round_to_four_significant_digits():
    assert [round_figure(v) for v in (5.431552783862965, 0.000123456, 123456.7, 0.0, 3)] == [
        5.432,
        0.0001235,
        123457.0,
        0.0,
        3,
    ]
    assert [format_figure(v) for v in (5.431552783862965, 12345.6, 7571.2, 1234, None, "x")] == [
        "5.432",
        "12,346",
        "7,571",
        "1,234",
        "",
        "x",
    ]


def test_missing_manifest_is_named(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="half.*not a finished sft artifact"):
        build_report({"sft": tmp_path / "half"}, tmp_path / "out")
