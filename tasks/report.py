"""Prefect tasks for the `report` stage: build the report card, then publish it to the Prefect UI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from zero_chatgpt.config import STAGES, PipelineConfig
from zero_chatgpt.console import KEY_METRICS
from zero_chatgpt.report import build_report, render_markdown, round_figure
from zero_chatgpt.tasks.stage import StageSpec, run_stage, stage_task

# Every stage the route ran is upstream; which ones depends on the route (from scratch or from a base model).
REPORT = StageSpec("report", version="3", config_keys=("report",))


@stage_task(REPORT)
def report_task(config: dict[str, Any], upstream: dict[str, dict], root: str, force: bool = False) -> dict:
    """Build the report card (markdown, JSON, plots) from every upstream manifest."""
    cfg = PipelineConfig.model_validate(config)
    stage_dirs = {name: Path(upstream[name]["path"]) for name in STAGES if upstream.get(name) is not None}
    return run_stage(
        REPORT, config, upstream, root, force, lambda out_dir: build_report(stage_dirs, out_dir, plots=cfg.report.plots)
    )


@task(name="publish_report", cache_policy=NO_CACHE)
def publish_report_task(report_dir: str, latest: dict[str, dict[str, Any]]) -> None:
    """Publish this run's report card and metric table as Prefect artifacts (every run, cached or not)."""
    report = json.loads((Path(report_dir) / "report.json").read_text(encoding="utf-8"))
    # The UI cannot reach local files: the plots travel inside the markdown.
    create_markdown_artifact(
        key="zero-chatgpt-report-card",
        markdown=render_markdown(report, statuses=latest, plots_dir=Path(report_dir)),
        description="zero-chatgpt report card",
    )
    rows = []
    for stage, entry in report["stages"].items():
        run = latest.get(stage, {})
        key = KEY_METRICS.get(stage)
        rows.append(
            {
                "stage": stage,
                "status": run.get("status", ""),
                "seconds": round_figure(run.get("seconds", "")),
                "key_metric": key or "",
                "value": round_figure(entry["metrics"].get(key, "")) if key else "",
                "fingerprint": entry["fingerprint"][:12],
            }
        )
    create_table_artifact(key="zero-chatgpt-stage-metrics", table=rows, description="per-stage key metrics")
