"""Progress of a stage's long loops, for the terminal and for whoever listens, without knowing who listens.

A loop shows its progress with a `ProgressBar` (or `progress_over` for a plain `for`): a tqdm bar in the
terminal whose every update is also reported through `report_progress(done, total, ...)` with the loop's
latest figures (loss, val_loss, reward, ...), its rates and an ETA. The Prefect task layer binds a listener
with `listening_to_progress(...)` that turns the reports into a progress artifact in the UI. With no listener
bound (tests, scripts) a report costs one context-variable lookup.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

# Seconds between two redraws of a terminal bar: loops with sub-second steps stay cheap.
BAR_MIN_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ProgressReport:
    """`done` of `total` units (`unit`: step, prompt, ...) of the loop `phase`, and its latest `figures`.

    Figures are whatever the loop measures (loss, val_loss, reward, kl, ...) plus, from `ProgressBar`,
    `tokens_per_s`, `units_per_s` and `eta_s` over the time the loop has run.
    """

    done: int
    total: int
    phase: str = ""
    unit: str = "step"
    figures: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.done / self.total))

    def describe(self) -> str:
        """One line for people: `train step 40/200 · loss 3.412 · val_loss 3.5 · 1,234 tokens/s · ETA 2m10s`."""
        parts = [f"{self.phase} {self.unit} {self.done:,}/{self.total:,}".strip()]
        figures = dict(self.figures)
        eta_s = figures.pop("eta_s", None)
        tokens_per_s = figures.pop("tokens_per_s", None)
        units_per_s = figures.pop("units_per_s", None)
        parts += [f"{name} {value:.4g}" for name, value in figures.items()]
        if tokens_per_s is not None:
            parts.append(f"{tokens_per_s:,.0f} tokens/s")
        elif units_per_s is not None:
            rate = f"{units_per_s:,.0f}" if units_per_s >= 100 else f"{units_per_s:.3g}"
            parts.append(f"{rate} {self.unit}s/s")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        return " · ".join(parts)


def format_duration(seconds: float) -> str:
    """`45s`, `2m10s`, `3h05m`: short enough for a progress line."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


ProgressListener = Callable[[ProgressReport], None]
_listener: ContextVar[ProgressListener | None] = ContextVar("zero_chatgpt_progress_listener", default=None)


def report_progress(done: int, total: int, *, phase: str = "", unit: str = "step", **figures: float) -> None:
    """Tell the bound listener, if any, that `done` of `total` units of `phase` are finished, with `figures`."""
    listener = _listener.get()
    if listener is not None and total > 0:
        listener(ProgressReport(done, total, phase, unit, figures))


@contextmanager
def listening_to_progress(listener: ProgressListener) -> Iterator[None]:
    """Route `report_progress` calls made inside this block (same thread or task) to `listener(report)`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class ProgressBar:
    """A loop's progress shown twice: a terminal bar (tqdm, with its ETA and the latest figures) and a
    `report_progress` call carrying the same figures, tokens/s, units/s and the ETA.

    Rates count from this bar's creation, so a resumed loop (`initial` > 0) is not credited with the
    steps done before it started. Disabled (`enabled=False`, the other ranks of a multi-rank run), it
    neither draws nor reports.
    """

    def __init__(self, phase: str, total: int, *, initial: int = 0, unit: str = "step", enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.phase, self.total, self.unit, self.enabled = phase, total, unit, enabled
        self.done = self._initial = initial
        self._tokens = 0
        self._figures: dict[str, float] = {}
        self._started = time.perf_counter()
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=phase,
            unit=unit,
            disable=not enabled,
            mininterval=BAR_MIN_INTERVAL_S,
            leave=False,
        )

    def update(self, count: int = 1, *, tokens: int = 0, **figures: float) -> None:
        """`count` more units are done, having processed `tokens` tokens; `figures` replace the shown ones
        (a figure given once, a val_loss say, stays shown until given again)."""
        self.done += count
        self._tokens += tokens
        self._figures.update({name: float(value) for name, value in figures.items()})
        if not self.enabled:
            return
        rates = self._rates()
        shown = {name: f"{value:.4g}" for name, value in self._figures.items()}
        if "tokens_per_s" in rates:
            shown["tokens/s"] = f"{rates['tokens_per_s']:,.0f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(count)
        report_progress(self.done, self.total, phase=self.phase, unit=self.unit, **self._figures, **rates)

    def _rates(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._started
        done_here = self.done - self._initial
        if elapsed <= 0 or done_here <= 0:
            return {}
        rates = {"units_per_s": done_here / elapsed, "eta_s": max(0, self.total - self.done) * elapsed / done_here}
        if self._tokens:
            rates["tokens_per_s"] = self._tokens / elapsed
        return rates

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Item = TypeVar("Item")


def progress_over(items: Iterable[Item], phase: str, unit: str = "item") -> Iterator[Item]:
    """The items of `items`, with a `ProgressBar` over them (`items` must have a length)."""
    items = list(items) if not hasattr(items, "__len__") else items
    with ProgressBar(phase, len(items), unit=unit) as bar:
        for item in items:
            yield item
            bar.update(1)
