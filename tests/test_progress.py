"""Progress: loops report figures, a bound listener hears them, the Prefect listener shows them in a keyed artifact."""

from __future__ import annotations

import pytest

from zero_chatgpt.progress import (
    ProgressBar,
    ProgressReport,
    format_duration,
    listening_to_progress,
    progress_over,
    report_progress,
)


def test_reports_reach_the_bound_listener_only_inside_the_block():
    heard: list[ProgressReport] = []
    report_progress(1, 4)  # no listener: a no-op
    with listening_to_progress(heard.append):
        for done in range(1, 5):
            report_progress(done, 4, phase="train", loss=4.0 - done)
        report_progress(9, 4)  # clamped
        report_progress(1, 0)  # nothing to divide by: ignored
    report_progress(2, 4)
    assert [report.fraction for report in heard] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert heard[1] == ProgressReport(2, 4, "train", "step", {"loss": 2.0})


def test_nested_blocks_restore_the_outer_listener():
    outer: list[ProgressReport] = []
    inner: list[ProgressReport] = []
    with listening_to_progress(outer.append):
        with listening_to_progress(inner.append):
            report_progress(1, 2)
        report_progress(2, 2)
    assert [r.done for r in inner] == [1] and [r.done for r in outer] == [2]


def test_a_bar_reports_its_figures_rates_and_eta():
    heard: list[ProgressReport] = []
    with listening_to_progress(heard.append), ProgressBar("train", 10, initial=2) as bar:
        bar.update(1, tokens=400, loss=3.25)
        bar.update(1, tokens=400, val_loss=3.5)  # the loss given before stays shown
    last = heard[-1]
    assert (last.done, last.total, last.phase) == (4, 10, "train")
    assert last.figures["loss"] == 3.25 and last.figures["val_loss"] == 3.5
    # Rates count only this bar's work: 2 steps and 800 tokens in the same elapsed time; 6 steps left.
    assert last.figures["tokens_per_s"] == pytest.approx(400 * last.figures["units_per_s"])
    assert last.figures["eta_s"] == pytest.approx(6 / last.figures["units_per_s"])


def test_a_disabled_bar_reports_nothing():
    heard: list[ProgressReport] = []
    with listening_to_progress(heard.append), ProgressBar("train", 3, enabled=False) as bar:
        bar.update(1, loss=1.0)
    assert heard == []


def test_progress_over_yields_every_item_and_reports_each():
    heard: list[ProgressReport] = []
    with listening_to_progress(heard.append):
        items = list(progress_over(iter("abc"), "mining", unit="prompt"))
    assert items == ["a", "b", "c"]
    assert [(r.done, r.total, r.unit) for r in heard] == [(1, 3, "prompt"), (2, 3, "prompt"), (3, 3, "prompt")]


def test_the_description_names_step_figures_rate_and_eta():
    report = ProgressReport(
        40,
        200,
        "train",
        "step",
        {"loss": 3.41234, "val_loss": 3.5, "tokens_per_s": 1234.4, "units_per_s": 0.8, "eta_s": 130.0},
    )
    assert report.describe() == "train step 40/200 · loss 3.412 · val_loss 3.5 · 1,234 tokens/s · ETA 2m10s"
    sampling = ProgressReport(12, 48, "sampling answers", "prompt", {"units_per_s": 2.5})
    assert sampling.describe() == "sampling answers prompt 12/48 · 2.5 prompts/s"
    mining = ProgressReport(1000, 2000, "mining", "prompt", {"units_per_s": 1953.2})
    assert mining.describe() == "mining prompt 1,000/2,000 · 1,953 prompts/s"
    assert [format_duration(s) for s in (45, 130, 3 * 3600 + 300)] == ["45s", "2m10s", "3h05m"]


def test_the_prefect_listener_keeps_one_keyed_artifact_per_stage(monkeypatch):
    import zero_chatgpt.tasks.stage as stage

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(stage, "create_progress_artifact", lambda **kw: calls.append(("create", kw)) or "id-1")
    monkeypatch.setattr(stage, "update_progress_artifact", lambda id_, **kw: calls.append(("update", kw)))
    listen = stage._ProgressArtifact("train_rm", min_seconds=3600.0)
    figures = {"loss": 0.693, "tokens_per_s": 50.0, "eta_s": 30.0}
    listen(ProgressReport(1, 4, "reward model", "step", figures))
    listen(ProgressReport(2, 4, "reward model", "step", figures))  # within min_seconds: no API call
    listen(ProgressReport(4, 4, "reward model", "step", figures))  # finished: shown at once
    listen(ProgressReport(1, 4, "judge", "step", figures))  # a new loop: shown at once
    assert [kind for kind, _ in calls] == ["create", "update", "update"]
    created = calls[0][1]
    assert created["key"] == "progress-train-rm" and created["progress"] == 25.0
    assert created["description"] == "train_rm: reward model step 1/4 · loss 0.693 · 50 tokens/s · ETA 30s"
    assert calls[1][1]["progress"] == 100.0
    assert calls[2][1]["description"].startswith("train_rm: judge step 1/4")


def test_the_prefect_listener_gives_up_quietly_when_the_api_fails(monkeypatch):
    import zero_chatgpt.tasks.stage as stage

    attempts = []

    def failing(**kw):
        attempts.append(kw)
        raise ConnectionError("no API")

    monkeypatch.setattr(stage, "create_progress_artifact", failing)
    listen = stage._ProgressArtifact("pretrain")
    for done in (1, 2, 3):
        listen(ProgressReport(done, 3, "train"))
    assert len(attempts) == 1
