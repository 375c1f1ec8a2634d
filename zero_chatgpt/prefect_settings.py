"""Prefect settings the pipeline relies on, set before Prefect is imported (it reads them once, at import)."""

from __future__ import annotations

import logging
import os

DEFAULTS = {
    # Prefect's temporary server gets 20 s to start by default; a busy 2-core laptop can need more.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Runs are often offline (clusters, CI); telemetry would only log a failed DNS lookup.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The stages' own loggers (`zero_chatgpt.*`: a context cut, quarantined rows, byte-fallback shares) reach the
    # run's logs in the Prefect UI, not only the terminal that started it.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "zero_chatgpt",
    # ... and outside a run (a script or test calling a stage function) those loggers just log locally.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # `zero-chatgpt serve` asks the server for new runs this often (Prefect's default, 10 s, is most of the wait
    # between `prefect deployment run` and the first stage; bench/first_stage.py).
    "PREFECT_RUNNER_POLL_FREQUENCY": "2",
}


def apply_prefect_defaults() -> None:
    """Set every default the user has not set already."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` does, leaving out its traceback (other handlers still get it)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def terminal_logs_without_tracebacks() -> None:
    """Prefect's terminal handlers print one line per failure instead of Prefect's two long tracebacks (task and
    flow). The tracebacks still reach the run's logs in the UI, and the CLI writes the whole one to a file."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))
