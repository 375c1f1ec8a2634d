"""The report card: built only from the artifacts' manifests and their `metrics.jsonl` curves.

`build_report(stage_dirs, out_dir)` writes `report.json`, `report.md` and small PNG plots (training loss
curves, the reward model's held-out accuracy, reward and KL over PPO steps). Nothing here imports Prefect;
the `report` task publishes the markdown, its plots embedded, and a metric table to the Prefect UI.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Any

from zero_chatgpt.artifacts import read_manifest, write_json_atomic
from zero_chatgpt.console import KEY_METRICS

logger = logging.getLogger(__name__)

METRICS_LOG = "metrics.jsonl"
# The curves each stage's plot shows, one panel each; stages not named here plot their training loss.
CURVES = {
    "ppo": ("reward", "kl"),
    "train_rm": ("loss", "val_loss", "val_accuracy"),
}
DEFAULT_CURVES = ("loss", "val_loss")
# Plots are embedded in the Prefect artifact as base64: small panels at a low dpi keep each a few KB.
PANEL_INCHES = (4.0, 2.6)
PLOT_DPI = 72
SIGNIFICANT_DIGITS = 4


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
    """A PNG of a stage's curves (`CURVES`), one panel per curve it logged. Returns the file names (none or one)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    series = {key: _series(records, key) for key in CURVES.get(stage, DEFAULT_CURVES)}
    series = {key: xy for key, xy in series.items() if xy[0]}
    if not series:
        return []
    width, height = PANEL_INCHES
    figure, axes = plt.subplots(1, len(series), figsize=(width * len(series), height), squeeze=False)
    for axis, (key, (steps, values)) in zip(axes[0], series.items()):
        axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2)
        axis.set_title(f"{stage}: {key}", fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    name = f"{stage}_{'_'.join(series)}.png"
    figure.savefig(out_dir / name, dpi=PLOT_DPI)
    plt.close(figure)
    return [name]


def round_figure(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """A float rounded to `digits` significant digits (5.431552783862965 -> 5.432), or to a whole number when it
    has more digits before the point (123456.7 -> 123457.0); anything else as it is."""
    if not isinstance(value, float) or not math.isfinite(value) or value == 0.0:
        return value
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def format_figure(value: Any) -> str:
    """A figure for people: floats to `SIGNIFICANT_DIGITS` significant digits, big numbers with separators."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = round_figure(value)
    if abs(value) >= 10**SIGNIFICANT_DIGITS:
        return f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{SIGNIFICANT_DIGITS}g}"


def embedded_png(path: Path) -> str:
    """A PNG file as a `data:` URI, so markdown shows it where the file cannot be reached (the Prefect UI)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_markdown(
    report: dict[str, Any], statuses: dict[str, dict[str, Any]] | None = None, plots_dir: Path | None = None
) -> str:
    """The report card as markdown; `statuses` (from latest.json) adds this run's ran/cached and seconds.

    Plots are linked by file name (the markdown sits beside them), or, with `plots_dir`, embedded from there
    as base64 images.
    """
    lines = [
        "# zero-chatgpt report card",
        "",
        "| stage | status | seconds | key metric | fingerprint |",
        "|---|---|---|---|---|",
    ]
    for stage, entry in report["stages"].items():
        run = (statuses or {}).get(stage, {})
        key = KEY_METRICS.get(stage)
        key_text = f"{key} = {format_figure(entry['metrics'].get(key))}" if key in entry["metrics"] else ""
        seconds = run.get("seconds", entry["seconds"])
        lines.append(
            f"| {stage} | {run.get('status', 'built')} | {format_figure(seconds)} | {key_text} | "
            f"`{entry['fingerprint'][:12]}` |"
        )
    lines += ["", "## Metrics", ""]
    for stage, entry in report["stages"].items():
        shown = ", ".join(f"{k} = {format_figure(v)}" for k, v in entry["metrics"].items())
        lines.append(f"- **{stage}**: {shown}")
    lines += ["", "## Lineage", ""]
    for stage, entry in report["stages"].items():
        inputs = ", ".join(f"{name} `{fp[:12]}`" for name, fp in entry["upstream"].items()) or "raw sources"
        lines.append(f"- **{stage}** `{entry['fingerprint'][:12]}` <- {inputs}")
    if report["plots"]:
        lines += ["", "## Curves", ""]
        lines += [f"![{name}]({embedded_png(plots_dir / name) if plots_dir else name})" for name in report["plots"]]
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
