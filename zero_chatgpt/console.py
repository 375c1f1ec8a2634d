"""The stage table a run prints as it goes: stage, ran/cached, seconds, key metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The one number that says whether a stage did its job, shown in the table and the report.
KEY_METRICS = {
    "clean": "docs_out",
    "dedup": "docs_out",
    "train_tokenizer": "vocab_size",
    "shard": "train_tokens",
    "pretrain": "val_loss",
    "sft": "val_loss",
    "build_prefs": "pairs",
    "train_rm": "val_accuracy",
    "ppo": "reward_after",
    "evaluate": "win_rate_vs_sft",
}

_console = Console(highlight=False, soft_wrap=True)
_ROW = "{:<16} {:<7} {:>9} {}"


def key_metric_text(stage: str, metrics: dict[str, Any]) -> str:
    """`name=value` of the stage's key metric, or '' when it has none."""
    name = KEY_METRICS.get(stage)
    if name is None or name not in metrics:
        return ""
    return f"{name}={figure_text(metrics[name])}"


def figure_text(value: Any) -> str:
    """A metric value as a log line shows it: floats to 4 significant digits, short lists inline, long ones
    counted (their items are in the manifest)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(figure_text(item) for item in value)}]" if len(value) <= 4 else f"<{len(value)} items>"
    return str(value)


def metrics_text(metrics: dict[str, Any], prefix: str = "") -> str:
    """`key=value` pairs of a metrics dict, nested keys joined with dots: `docs_in=846 dropped.empty=0 ...`."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            nested = metrics_text(value, f"{prefix}{key}.")
            parts.append(nested or f"{prefix}{key}={{}}")
        else:
            parts.append(f"{prefix}{key}={figure_text(value)}")
    return " ".join(parts)


def print_table_header() -> None:
    """The header line of the live stage table."""
    _console.print(_ROW.format("stage", "status", "seconds", "key metric"), style="bold")


def print_stage_row(stage: str, status: str, seconds: float, metrics: dict[str, Any]) -> None:
    """One finished stage, printed the moment it finishes."""
    style = "green" if status == "ran" else "cyan"
    _console.print(_ROW.format(stage, status, f"{seconds:.1f}", key_metric_text(stage, metrics)), style=style)


def print_summary(latest: dict[str, dict[str, Any]], metrics: dict[str, dict[str, Any]], root: Path) -> None:
    """The whole run as one table; each artifact is `<root>/<stage>/<artifact id>`, so the row fits 80 columns."""
    table = Table(title=f"zero-chatgpt run in {root}")
    for column in ("stage", "status", "seconds", "key metric", "artifact id"):
        table.add_column(column, no_wrap=True)
    for stage, entry in latest.items():
        table.add_row(
            stage,
            entry["status"],
            f"{entry['seconds']:.1f}",
            key_metric_text(stage, metrics.get(stage, {})),
            Path(entry["path"]).name,
        )
    _console.print(table)
