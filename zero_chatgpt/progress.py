"""A progress hook that library loops report into without knowing who listens.

Training loops call `report_progress(done, total)`; the Prefect task layer binds a listener with
`listening_to_progress(...)` that updates a progress artifact in the UI. With no listener bound (tests,
scripts) a report costs one context-variable lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ProgressListener = Callable[[float], None]
_listener: ContextVar[ProgressListener | None] = ContextVar("zero_chatgpt_progress_listener", default=None)


def report_progress(done: int, total: int) -> None:
    """Tell the bound listener, if any, that `done` of `total` units of the current stage are finished."""
    listener = _listener.get()
    if listener is not None and total > 0:
        listener(min(1.0, max(0.0, done / total)))


@contextmanager
def listening_to_progress(listener: ProgressListener) -> Iterator[None]:
    """Route `report_progress` calls made inside this block (same thread or task) to `listener(fraction)`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
