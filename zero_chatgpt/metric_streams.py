"""Training metrics streamed, as they are logged, to TensorBoard and (when a project is set) Weights & Biases.

Every training loop already writes its records through `MetricsLog`; that log also hands each record to
`stream_metrics`, which forwards it to whatever the task layer bound with `streaming_metrics(...)`. With
nothing bound (tests, scripts calling a stage function) a record costs one context-variable lookup.

The writers are the libraries' own (`torch.utils.tensorboard.SummaryWriter`, `wandb.log`), created on the
first record so a cached stage opens no event file. A stage trained on several ranks gets the same
destination through the launcher's spec (`MetricStreams.to_json` / `from_json`); only rank 0 logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricStreams:
    """Where one stage's metrics go besides its metrics.jsonl: a TensorBoard log dir and/or a W&B project."""

    run_name: str
    tensorboard_dir: str | None = None
    wandb_project: str | None = None

    @classmethod
    def for_stage(cls, config: dict[str, Any], root: str | Path, stage: str, fingerprint: str) -> MetricStreams:
        """The destinations the `tracking` section asks for; TensorBoard runs are named `<stage>-<fingerprint>`,
        so one `tensorboard --logdir <root>/tensorboard` shows every stage and every rebuild side by side."""
        tracking = config.get("tracking", {})
        run_name = f"{stage}-{fingerprint[:12]}"
        tensorboard_dir = str(Path(root) / "tensorboard" / run_name) if tracking.get("tensorboard", True) else None
        return cls(run_name, tensorboard_dir, tracking.get("wandb_project"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> MetricStreams | None:
        return cls(**value) if value else None


class _Writers:
    """The open writers of one bound `MetricStreams`, made on the first record."""

    def __init__(self, streams: MetricStreams) -> None:
        self.streams = streams
        self.tensorboard = None
        self.wandb_run = None
        self.opened = False

    def write(self, record: dict[str, Any]) -> None:
        if not self.opened:
            self._open()
        step = int(record.get("step", 0))
        scalars = {
            key: float(value)
            for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def _open(self) -> None:
        self.opened = True
        if self.streams.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=self.streams.tensorboard_dir, flush_secs=10)
        if self.streams.wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError(
                    f"tracking.wandb_project={self.streams.wandb_project!r} needs the wandb package: "
                    "pip install wandb (or unset tracking.wandb_project)"
                ) from err
            self.wandb_run = wandb.init(
                project=self.streams.wandb_project, name=self.streams.run_name, resume="allow", reinit=True
            )

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


_bound: ContextVar[_Writers | None] = ContextVar("zero_chatgpt_metric_streams", default=None)
_destination: ContextVar[MetricStreams | None] = ContextVar("zero_chatgpt_metric_destination", default=None)


@contextmanager
def streaming_metrics(streams: MetricStreams | None) -> Iterator[None]:
    """Send the records `stream_metrics` gets inside this block to `streams` (None: nowhere)."""
    writers = _Writers(streams) if streams is not None else None
    bound, destination = _bound.set(writers), _destination.set(streams)
    try:
        yield
    finally:
        _bound.reset(bound)
        _destination.reset(destination)
        if writers is not None:
            writers.close()


def current_streams() -> MetricStreams | None:
    """The destination bound here, for handing on to the ranks of a launched stage."""
    return _destination.get()


def stream_metrics(record: dict[str, Any]) -> None:
    """Forward one metrics record (numbers at its `step`) to the bound writers, if any."""
    writers = _bound.get()
    if writers is not None:
        writers.write(record)
