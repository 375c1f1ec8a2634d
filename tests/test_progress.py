"""The progress hook: loops report, a bound listener hears, nothing breaks without one."""

from __future__ import annotations

from zero_chatgpt.progress import listening_to_progress, report_progress


def test_reports_reach_the_bound_listener_only_inside_the_block():
    heard: list[float] = []
    report_progress(1, 4)  # no listener: a no-op
    with listening_to_progress(heard.append):
        for done in range(1, 5):
            report_progress(done, 4)
        report_progress(9, 4)  # clamped
        report_progress(1, 0)  # nothing to divide by: ignored
    report_progress(2, 4)
    assert heard == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_nested_blocks_restore_the_outer_listener():
    outer: list[float] = []
    inner: list[float] = []
    with listening_to_progress(outer.append):
        with listening_to_progress(inner.append):
            report_progress(1, 2)
        report_progress(2, 2)
    assert inner == [0.5] and outer == [1.0]
