"""Prefect settings the pipeline relies on, set before Prefect is imported (it reads them once, at import)."""

from __future__ import annotations

import os

DEFAULTS = {
    # Prefect's temporary server gets 20 s to start by default; a busy 2-core laptop can need more.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Runs are often offline (clusters, CI); telemetry would only log a failed DNS lookup.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The stages' own loggers (`zero_chatgpt.*`: a context cut, quarantined rows, byte-fallback shares) reach the
    # run's logs in the Prefect UI, not only the terminal that started it.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "zero_chatgpt",
}


def apply_prefect_defaults() -> None:
    """Set every default the user has not set already."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
