"""Hermetic Prefect for every test: a temporary PREFECT_HOME, no outside API, one test server per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before anything imports prefect: its settings are read once. Removed at exit, so test runs leave no
# Prefect homes (databases, logs) behind in /tmp.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="zcg-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from zero_chatgpt.prefect_settings import apply_prefect_defaults  # noqa: E402  (no Prefect import)

apply_prefect_defaults()  # what the CLI sets, before any test imports Prefect
# Tiny test models run ~10x slower on 2 torch threads than on 1 when anything else uses the other core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prefect_api():
    """A throwaway Prefect API server (temporary database) shared by the tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
