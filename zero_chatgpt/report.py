"""The report card: built only from the artifacts' manifests and their `metrics.jsonl` curves.

`build_report(stage_dirs, out_dir)` writes `report.json`, `report.md` and PNG plots (training loss curves,
reward and KL over PPO steps). Nothing here imports Prefect; the `report` task publishes the markdown and a
metric table to the Prefect UI.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from zero_chatgpt.artifacts import read_manifest, write_json_atomic
from zero_chatgpt.console import KEY_METRICS

logger = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers, strings and booleans of a metrics dict (nested tables and lists left out)."""
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float, str, bool)) or value is None}


def read_curve(path: Path) -> list[dict[str, Any]]:
    """Records of a `metrics.jsonl`, skipping a half-written last line."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r and "step" in r and r[key] is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_curves(stage: str, records: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """PNG plots of a stage's curves: train/val loss, or reward and KL for PPO. Returns file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    panels = [("reward", "kl")] if stage == "ppo" else [("loss", "val_loss")]
    written = []
    for keys in panels:
        series = {key: _series(records, key) for key in keys}
        series = {key: xy for key, xy in series.items() if xy[0]}
        if not series:
            continue
        figure, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.2), squeeze=False)
        for axis, (key, (steps, values)) in zip(axes[0], series.items()):
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, linewidth=1.2)
            axis.set_title(f"{stage}: {key}")
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        name = f"{stage}_{'_'.join(series)}.png"
        figure.savefig(out_dir / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render_markdown(report: dict[str, Any], statuses: dict[str, dict[str, Any]] | None = None) -> str:
    """The report card as markdown; `statuses` (from latest.json) adds this run's ran/cached and seconds."""
    lines = [
        "# zero-chatgpt report card",
        "",
        "| stage | status | seconds | key metric | fingerprint |",
        "|---|---|---|---|---|",
    ]
    for stage, entry in report["stages"].items():
        run = (statuses or {}).get(stage, {})
        key = KEY_METRICS.get(stage)
        key_text = f"{key} = {_format(entry['metrics'].get(key))}" if key in entry["metrics"] else ""
        seconds = run.get("seconds", entry["seconds"])
        lines.append(
            f"| {stage} | {run.get('status', 'built')} | {_format(seconds)} | {key_text} | "
            f"`{entry['fingerprint'][:12]}` |"
        )
    lines += ["", "## Metrics", ""]
    for stage, entry in report["stages"].items():
        shown = ", ".join(f"{k} = {_format(v)}" for k, v in entry["metrics"].items())
        lines.append(f"- **{stage}**: {shown}")
    lines += ["", "## Lineage", ""]
    for stage, entry in report["stages"].items():
        inputs = ", ".join(f"{name} `{fp[:12]}`" for name, fp in entry["upstream"].items()) or "raw sources"
        lines.append(f"- **{stage}** `{entry['fingerprint'][:12]}` <- {inputs}")
    if report["plots"]:
        lines += ["", "## Curves", ""]
        lines += [f"![{name}]({name})" for name in report["plots"]]
    return "\n".join(lines) + "\n"


def build_report(stage_dirs: dict[str, Path], out_dir: Path, plots: bool = True) -> dict[str, Any]:
    """Write `report.json`, `report.md` and plots for the artifacts in `stage_dirs`; returns metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"stages": {}, "plots": []}
    for stage, path in stage_dirs.items():
        manifest = read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(f"{path}: no manifest.json, so it is not a finished {stage} artifact")
        report["stages"][stage] = {
            "fingerprint": manifest["fingerprint"],
            "version": manifest.get("version"),
            "path": str(path),
            "seconds": manifest.get("timings", {}).get("seconds"),
            "metrics": scalar_metrics(manifest.get("metrics", {})),
            "upstream": {name: up["fingerprint"] for name, up in manifest.get("upstream", {}).items()},
        }
        if plots:
            report["plots"] += plot_curves(stage, read_curve(Path(path) / METRICS_LOG), out_dir)
    write_json_atomic(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    logger.info("report card: %d stages, %d plots in %s", len(report["stages"]), len(report["plots"]), out_dir)
    return {"stages": len(report["stages"]), "plots": len(report["plots"])}
