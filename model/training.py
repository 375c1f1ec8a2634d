"""The training core shared by pretrain, SFT, the reward model and PPO: stages differ only in data and loss.

`train(model, batches, loss_fn, optim, ...)` is one plain PyTorch loop: AdamW (weight decay on matrices
only), linear warmup then cosine decay to `min_lr_ratio * lr`, gradient accumulation, clipping, mixed
precision on GPU, a periodic eval callback, per-step metrics in `metrics.jsonl`, and resume checkpoints
every `checkpoint_every` steps (see `model.checkpoint`).

Contracts:
- `loss_fn(model, batch) -> (loss, metrics)`: `loss` is a scalar tensor, the mean over the micro-batch;
  `metrics` maps names to floats or 0-d tensors and may hold `tokens`, the number of tokens the loss was
  computed on (for tokens/s); without it, the element count of the batch's first tensor is used.
- `batches`: a `BatchSource` (`next_batch()`, `state_dict()`, `load_state_dict()`) whose state is the data
  position in checkpoints; a plain iterable or zero-argument callable also works and is fast-forwarded by
  the number of batches already consumed on resume.
- `eval_fn(model) -> {name: float}` runs under `torch.no_grad()` in eval mode.

One process is the default. A launcher-driven multi-rank run passes `parallel` (see `model.distributed`):
it wraps the model (DDP or a DeepSpeed engine) in a `TrainBackend`, and the SAME loop below then calls the
backend for backward, the optimizer step and checkpoints; the single-process `LocalBackend` does exactly
what the loop did before backends existed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from zero_chatgpt.config import OptimConfig
from zero_chatgpt.metric_streams import stream_metrics
from zero_chatgpt.model.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from zero_chatgpt.progress import ProgressBar

logger = logging.getLogger(__name__)

Batch = Any
LossFn = Callable[[torch.nn.Module, Batch], "tuple[torch.Tensor, dict[str, Any]]"]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


@runtime_checkable
class BatchSource(Protocol):
    """A resumable stream of training micro-batches."""

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IteratorSource:
    """Adapts an iterator or a zero-argument callable to `BatchSource`; its state is the batch count."""

    def __init__(self, batches: Iterable[Batch] | Callable[[], Batch]) -> None:
        if hasattr(batches, "__next__") or not callable(batches):
            self._next = partial(next, iter(batches))
        else:
            self._next = batches
        self.consumed = 0

    def next_batch(self) -> Batch:
        self.consumed += 1
        return self._next()

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A plain iterator cannot seek: replay it up to the saved position.
        for _ in range(state["consumed"] - self.consumed):
            self.next_batch()


def as_batch_source(batches: BatchSource | Iterable[Batch] | Callable[[], Batch]) -> BatchSource:
    """`batches` itself when it is resumable, else an `IteratorSource` around it."""
    return batches if isinstance(batches, BatchSource) else IteratorSource(batches)


# ----------------------------------------------------------------------------------------------- maths


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak lr at 0-based optimizer step `step`.

    Linear warmup `(step + 1) / warmup_steps` (the first step already moves), then a half cosine from 1
    down to `min_lr_ratio`, reached at `step == max_steps`; it stays at the floor beyond.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on >= 2-D weights (matmuls, embeddings); none on norms and biases (1-D).

    Decaying a norm gain pulls it towards 0, not towards its natural value 1, so those are left alone.
    """
    decay, no_decay = [], []
    for param in model.parameters():  # tied weights appear once
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Empty groups dropped: LoRA trains matrices only, and ZeRO drops an empty group under the schedule's feet.
    return [group for group in groups if group["params"]]


def make_optimizer(model: torch.nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`; the fused kernel on GPU, the default (foreach) one on CPU."""
    return torch.optim.AdamW(
        parameter_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=(optim.beta1, optim.beta2),
        eps=1e-8,
        fused=device.type == "cuda" or None,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, optimizer_steps_per_step: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine schedule as a `LambdaLR`, so its position is saved with the optimizer.

    It is stepped after every optimizer step. `optim.max_steps` and `warmup_steps` count training steps;
    a stage that makes several optimizer steps per training step (PPO: one per mini-batch of each rollout
    batch) passes their number, and all of them run at that step's lr.
    """
    schedule = partial(
        lr_multiplier, warmup_steps=optim.warmup_steps, max_steps=optim.max_steps, min_lr_ratio=optim.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda optimizer_step: schedule(optimizer_step // optimizer_steps_per_step)
    )


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `precision` setting, or None for plain fp32.

    `auto` is bf16 on a GPU that supports it and fp32 on CPU (CPU bf16 autocast is usually slower).
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed-precision context for forward passes (no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move tensors of a batch (a tensor, or a dict / list / tuple of them) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def count_batch_tokens(batch: Batch) -> int:
    """Fallback token count of a batch: the element count of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.numel()
    return 0


# ------------------------------------------------------------------------------------------------ loop


@dataclass
class TrainResult:
    """What a `train` call did: counters over the whole run (resumed parts included) and the last eval."""

    steps: int
    tokens_seen: int
    tokens_per_s: float  # measured in this process over training steps only (no eval, no checkpoints)
    train_loss: float
    resumed_from: int  # 0 for a fresh run
    last_eval: dict[str, float] = field(default_factory=dict)


# The metrics records kept with each resume checkpoint (see `MetricsLog.keep_with`).
HISTORY = "metrics_history.jsonl"


class MetricsLog:
    """Append-only `metrics.jsonl`: one JSON object per training step or eval, each with its `step`; each record
    also streams to the stage's TensorBoard / W&B run (`metric_streams`)."""

    def __init__(self, path: str | Path | None, enabled: bool = True) -> None:
        self.path = Path(path) if path is not None and enabled else None

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites them, and a plot must not show them twice."""
        if self.path is None or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # the half-written last line of a killed run
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        stream_metrics(record)

    def keep_with(self, checkpoint_dir: Path) -> None:
        """Copy the records so far beside a checkpoint: a stage rebuilt after a crash writes into a new dir, and
        its curves must still start at step 1."""
        if self.path is None or not self.path.is_file():
            return
        copy = Path(checkpoint_dir) / HISTORY
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f".{HISTORY}.tmp")
        shutil.copyfile(self.path, tmp)
        os.replace(tmp, copy)

    def resume_from(self, checkpoint_dir: Path, step: int) -> None:
        """Start from the records kept with the checkpoint (when this dir has none of its own), up to `step`."""
        if self.path is None:
            return
        kept = Path(checkpoint_dir) / HISTORY
        if kept.is_file() and not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kept, self.path)
        self.truncate_after(step)


def _as_float(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def evaluate(
    model: torch.nn.Module, eval_fn: EvalFn, device: torch.device, dtype: torch.dtype | None
) -> dict[str, float]:
    """Run `eval_fn` in eval mode without gradients, then put the model back in train mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device, dtype):
            return {key: _as_float(value) for key, value in eval_fn(model).items()}
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------- backends


class TrainBackend(Protocol):
    """How one optimizer step's work is done: the loop owns the order, the backend owns the mechanics.

    `forward_model` is what `loss_fn` is called with (the model itself, a DDP wrapper or a DeepSpeed engine);
    `module` is the plain model underneath (for eval and export).
    """

    forward_model: torch.nn.Module
    module: torch.nn.Module
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast_dtype: torch.dtype | None  # None where the backend already runs the model in half precision
    world_size: int
    is_main_process: bool

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Context around one micro-batch's forward and backward (DDP skips the gradient all-reduce on
        all but the `last` of an accumulation)."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one micro-batch's mean `loss` into this optimizer step."""
        ...

    def step(self) -> torch.Tensor | float | None:
        """Clip, step optimizer and schedule, zero grads; returns the pre-clip global grad norm (or None)."""
        ...

    def save(self, checkpoint_dir: Path, client_state: dict[str, Any]) -> None:
        """Save model, optimizer, schedule and `client_state` (step, data position, RNG) for resume."""
        ...

    def load(self, checkpoint_dir: Path) -> dict[str, Any] | None:
        """Restore what `save` wrote and return its `client_state`, or None when the dir holds no checkpoint."""
        ...


class LocalBackend:
    """Plain PyTorch: GradScaler for fp16, clip-grad-norm, `optimizer.step`. One process, or one DDP rank
    when `wrapped` is a `DistributedDataParallel` around `model` (torch checkpoints, written by rank 0)."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        optim: OptimConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        wrapped: torch.nn.Module | None = None,
        world_size: int = 1,
        is_main_process: bool = True,
    ) -> None:
        self.module = model
        self.forward_model = wrapped if wrapped is not None else model
        self.optimizer, self.scheduler, self.optim = optimizer, scheduler, optim
        self.device = device
        self.autocast_dtype = dtype
        self.world_size, self.is_main_process = world_size, is_main_process
        # Loss scaling is only needed for fp16; disabled, the scaler passes everything through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not hasattr(self.forward_model, "no_sync"):
            return contextlib.nullcontext()
        return self.forward_model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.optim.grad_accum).backward()

    def step(self) -> torch.Tensor | None:
        if self.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.optim.grad_clip)
        else:
            grad_norm = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def save(self, checkpoint_dir: Path, client_state: dict[str, Any]) -> None:
        if not self.is_main_process:
            return  # DDP ranks hold identical weights and optimizer states: one copy is enough
        save_checkpoint(
            checkpoint_dir,
            {
                **client_state,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
            },
        )

    def load(self, checkpoint_dir: Path) -> dict[str, Any] | None:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves weights and moments.
        state = load_checkpoint(checkpoint_dir, map_location="cpu")
        if state is None:
            return None
        self.module.load_state_dict(state.pop("model"))
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        self.scaler.load_state_dict(state.pop("scaler"))
        return state


class Parallel(Protocol):
    """A multi-rank run (`model.distributed`): who this rank is, and how to wrap a model for training."""

    rank: int
    world_size: int
    is_main_process: bool

    def backend(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        optim: OptimConfig,
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> TrainBackend: ...

    def save_pretrained(self, model: torch.nn.Module, out_dir: Path, checkpoint_dir: Path) -> None:
        """After `train`, on every rank: rank 0 writes the full trained weights as an HF checkpoint."""
        ...


def make_backend(
    model: torch.nn.Module,
    optim: OptimConfig,
    device: torch.device,
    parallel: Parallel | None = None,
    is_main_process: bool = True,
    optimizer_steps_per_step: int = 1,
) -> TrainBackend:
    """`model`'s optimizer step: the core's AdamW and schedule, run by `parallel`'s backend (DDP or DeepSpeed)
    on a multi-rank run, else by a `LocalBackend`. A stage training two models makes one backend each."""
    optimizer = make_optimizer(model, optim, device)
    scheduler = make_scheduler(optimizer, optim, optimizer_steps_per_step)
    dtype = autocast_dtype(optim.precision, device)
    if parallel is None:
        return LocalBackend(model, optimizer, scheduler, optim, device, dtype, is_main_process=is_main_process)
    return parallel.backend(model, optimizer, scheduler, optim, device, dtype)


# ------------------------------------------------------------------------------------------------ loop


def train(
    model: torch.nn.Module,
    batches: BatchSource | Iterable[Batch] | Callable[[], Batch],
    loss_fn: LossFn,
    optim: OptimConfig,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    eval_fn: EvalFn | None = None,
    metrics_path: str | Path | None = None,
    log_every: int = 10,
    is_main_process: bool = True,
    parallel: Parallel | None = None,
    phase: str = "train",
) -> TrainResult:
    """Train `model` for `optim.max_steps` optimizer steps; resume from `checkpoint_dir` when it holds one.

    Each optimizer step consumes `optim.grad_accum` micro-batches from `batches`. Evaluation runs every
    `optim.eval_every` steps and after the last; a checkpoint is saved every `optim.checkpoint_every`
    steps (not after the last: the caller exports the final model itself).

    With `parallel` (one call per rank, all ranks together), `batches` must yield this rank's share of
    the global batch; the logged loss and metrics are means over ranks and token counts are global.
    `is_main_process` is then taken from `parallel`.

    Progress (the terminal bar and the Prefect artifact, named `phase`) shows the loss, the last eval's
    figures, tokens/s and an ETA.
    """
    device = torch.device(device)
    model.to(device)
    model.train()
    source = as_batch_source(batches)
    backend = make_backend(model, optim, device, parallel, is_main_process)
    if parallel is not None:
        is_main_process = parallel.is_main_process
    dtype = backend.autocast_dtype
    log = MetricsLog(metrics_path, enabled=is_main_process)

    start_step, tokens_seen = 0, 0
    state = backend.load(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    if state is not None:
        source.load_state_dict(state["data"])
        restore_rng_states(state["rng"])
        start_step, tokens_seen = int(state["step"]), int(state["tokens_seen"])
        log.resume_from(Path(checkpoint_dir), start_step)
        logger.info("resuming from step %d (%s tokens seen) in %s", start_step, f"{tokens_seen:,}", checkpoint_dir)
    elif is_main_process and log.path is not None and log.path.exists():
        log.path.unlink()  # a fresh run: old records would mix two runs in one plot

    train_seconds, tokens_here, loss_value = 0.0, 0, float("nan")
    last_eval: dict[str, float] = {}
    progress = ProgressBar(phase, optim.max_steps, initial=start_step, enabled=is_main_process)
    for step in range(start_step, optim.max_steps):
        started = time.perf_counter()
        lr = backend.scheduler.get_last_lr()[0]
        loss_sum = torch.zeros((), device=device)
        metric_sums: dict[str, Any] = {}
        step_tokens = 0
        for micro in range(optim.grad_accum):
            batch = to_device(source.next_batch(), device)
            with backend.micro_batch(last=micro + 1 == optim.grad_accum):
                with autocast(device, dtype):
                    loss, metrics = loss_fn(backend.forward_model, batch)
                backend.backward(loss)
            loss_sum += loss.detach().float()
            metrics = dict(metrics)
            step_tokens += int(metrics.pop("tokens", 0)) or count_batch_tokens(batch)
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + value
        grad_norm = backend.step()
        if backend.world_size > 1:
            loss_sum, step_tokens, metric_sums = _global_step_figures(
                loss_sum, step_tokens, metric_sums, backend.world_size
            )
        loss_value = float(loss_sum) / optim.grad_accum  # one device sync per step
        seconds = time.perf_counter() - started
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"training loss is {loss_value} at step {step + 1}: lower optim.lr or check the data"
            )

        train_seconds += seconds
        tokens_here += step_tokens
        tokens_seen += step_tokens
        record = {
            "step": step + 1,
            "loss": loss_value,
            "lr": lr,
            "tokens_seen": tokens_seen,
            "tokens_per_s": step_tokens / seconds,
        }
        if grad_norm is not None:
            record["grad_norm"] = _as_float(grad_norm)
        record.update({key: _as_float(value) / optim.grad_accum for key, value in metric_sums.items()})
        log.write(record)
        if is_main_process and ((step + 1) % log_every == 0 or step == start_step):
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0f tokens/s",
                step + 1,
                optim.max_steps,
                loss_value,
                lr,
                record["tokens_per_s"],
            )

        last = step + 1 == optim.max_steps
        if eval_fn is not None and ((step + 1) % optim.eval_every == 0 or last):
            last_eval = evaluate(backend.module, eval_fn, device, dtype)
            log.write({"step": step + 1, **last_eval})
            if is_main_process:
                logger.info("step %d eval %s", step + 1, " ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
        progress.update(1, tokens=step_tokens, loss=loss_value, **last_eval)
        if checkpoint_dir is not None and (step + 1) % optim.checkpoint_every == 0 and not last:
            # History first: killed in between, the resumed run drops the records past the older checkpoint.
            log.keep_with(Path(checkpoint_dir))
            backend.save(
                Path(checkpoint_dir),
                {
                    "step": step + 1,
                    "tokens_seen": tokens_seen,
                    "data": source.state_dict(),
                    "rng": rng_states(),
                },
            )
            if is_main_process:
                logger.info("saved checkpoint at step %d", step + 1)
    progress.close()
    if eval_fn is not None and not last_eval:
        # Nothing left to train (a checkpoint at or past max_steps): the caller still gets final eval numbers.
        last_eval = evaluate(backend.module, eval_fn, device, dtype)

    return TrainResult(
        steps=optim.max_steps,
        tokens_seen=tokens_seen,
        tokens_per_s=tokens_here / train_seconds if train_seconds > 0 else 0.0,
        train_loss=loss_value,
        resumed_from=start_step,
        last_eval=last_eval,
    )


def _global_step_figures(
    loss_sum: torch.Tensor, step_tokens: int, metric_sums: dict[str, Any], world_size: int
) -> tuple[float, int, dict[str, float]]:
    """The step's log figures over all ranks (one all-reduce): loss and metrics averaged, tokens summed."""
    # Imported here: model.distributed builds on this module (LocalBackend), not the other way round.
    from zero_chatgpt.model.distributed import mean_over_ranks

    means = mean_over_ranks(
        {
            "loss": _as_float(loss_sum),
            "tokens": float(step_tokens),
            **{f"metric.{key}": _as_float(value) for key, value in metric_sums.items()},
        },
        world_size,
        loss_sum.device,
    )
    tokens = int(round(means.pop("tokens") * world_size))
    return means.pop("loss"), tokens, {key.removeprefix("metric."): value for key, value in means.items()}
