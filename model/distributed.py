"""Multi-rank training: who this rank is, process-group set-up and teardown, and the two wrappers the shared
training loop (`model.training.train`) accepts as `parallel`: torch DDP and a DeepSpeed ZeRO engine.

Ranks are started by `model.launch` (torchrun or the deepspeed launcher), which sets RANK / WORLD_SIZE /
LOCAL_RANK. Every rank builds the same model from the same seed, trains on its own slice of each global
batch, and takes part in checkpoints and the final export; rank 0 alone writes logs and output files.

DeepSpeed is imported only inside the functions that need it: one-process runs never pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from zero_chatgpt.config import OptimConfig, ResourcesConfig
from zero_chatgpt.model.checkpoint import rng_states
from zero_chatgpt.model.training import LocalBackend, autocast_dtype

logger = logging.getLogger(__name__)

Engine = Literal["ddp", "deepspeed"]
FINAL_TAG = "final"  # the ZeRO checkpoint written after the last step, converted into the exported weights


# ------------------------------------------------------------------------------------------- rank / world


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job, as the launcher's environment variables describe it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def rank_info_from_env(environ: dict[str, str] | None = None) -> RankInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun and the deepspeed launcher (defaults: one process)."""
    env = os.environ if environ is None else environ
    return RankInfo(
        rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)), local_rank=int(env.get("LOCAL_RANK", 0))
    )


def needs_launcher(resources: ResourcesConfig) -> bool:
    """Whether training must go through a launcher subprocess rather than run in this process."""
    return resources.ranks > 1 or resources.nodes > 1 or resources.hostfile is not None


def training_engine(resources: ResourcesConfig) -> Engine:
    """DeepSpeed when asked for by name, by launcher or by a ZeRO stage; plain DDP otherwise."""
    if resources.engine != "auto":
        return resources.engine
    return "deepspeed" if resources.launcher == "deepspeed" or resources.zero_stage > 0 else "ddp"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it), for a single-node master address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def rank_device(device: str, local_rank: int) -> str:
    """The device string a rank trains on: its own GPU (`cuda:<local_rank>`) or the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return f"cuda:{local_rank}"
    return device


def init_process_group(engine: Engine, device: str) -> RankInfo:
    """Join the job's process group: NCCL between GPUs, gloo on CPU. Returns this rank's `RankInfo`."""
    info = rank_info_from_env()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    if engine == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    else:
        torch.distributed.init_process_group(backend=backend)
    logger.debug("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)
    return info


def shutdown_and_exit(code: int) -> None:
    """Leave the process group, flush, and end this process now with `code`.

    Letting the interpreter tear down gloo threads by itself aborted about one run in ten at exit (after
    training had succeeded), so a rank exits explicitly once its work and output are done.
    """
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def per_rank_count(name: str, total: int, world_size: int) -> int:
    """Each rank's share of a batch size `name` that counts items over all ranks; an uneven split is an error
    (rounding down would silently shrink the global batch the config asks for)."""
    if total % world_size:
        raise ValueError(
            f"{name} {total} does not split evenly over {world_size} ranks: make it a multiple of "
            "resources.ranks x nodes"
        )
    return total // world_size


def mean_over_ranks(
    values: dict[str, float], world_size: int, device: torch.device | str = "cpu", weight: float = 1.0
) -> dict[str, float]:
    """The `weight`-weighted mean over ranks of each figure in `values`, in one all-reduce; `values` itself
    (as floats) on one rank.

    Every rank must pass the same keys. `weight` is this rank's share (e.g. the prompts it scored); a rank
    with nothing to report passes weight 0 and still joins. `device` is where the collective runs: the
    rank's GPU under NCCL, the CPU under gloo.
    """
    if world_size == 1:
        return {key: float(value) for key, value in values.items()}
    keys = sorted(values)
    packed = torch.tensor([weight, *(weight * float(values[key]) for key in keys)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(packed)
    total = float(packed[0])
    return {key: float(packed[1 + i]) / total for i, key in enumerate(keys)}


def broadcast_from_main_(tensors: list[torch.Tensor]) -> None:
    """Overwrite each tensor, in place, with rank 0's copy (a no-op outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for tensor in tensors:
        torch.distributed.broadcast(tensor.detach(), src=0)  # detached: shares storage, skips autograd


def all_gather_objects(value: Any, world_size: int) -> list[Any]:
    """Every rank's `value` (picklable), in rank order: `[value]` on one rank."""
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


# ------------------------------------------------------------------------------------ DeepSpeed config


def deepspeed_config(optim: OptimConfig, zero_stage: int, world_size: int, device: str = "cpu") -> dict[str, Any]:
    """The DeepSpeed config for one training stage, derived from its `OptimConfig` and the resources.

    `optim.batch_size` is per rank and micro-batch, so the global batch is batch_size x grad_accum x
    world_size. No `optimizer` / `scheduler` blocks: the core's AdamW and warmup-cosine schedule are passed
    in as client objects (DeepSpeed's own CPU Adam would compile an extension and differ from 1-rank runs).
    """
    dtype = autocast_dtype(optim.precision, torch.device("cuda" if device.startswith("cuda") else "cpu"))
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 2:
        zero.update(overlap_comm=device.startswith("cuda"), contiguous_gradients=True)
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": optim.batch_size * optim.grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,  # 0 disables clipping, as in the core
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16, "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the client torch AdamW
        "steps_per_print": 10**9,  # the core logs progress; DeepSpeed's own lines would only repeat it
        "wall_clock_breakdown": False,
    }


# ------------------------------------------------------------------------------------- the two engines


class DdpParallel:
    """torch `DistributedDataParallel`: full replicas, gradients all-reduced; the core's own optimizer step
    and torch checkpoints (rank 0 writes, every rank reads)."""

    engine: Engine = "ddp"

    def __init__(self, info: RankInfo) -> None:
        self.rank, self.world_size, self.local_rank = info.rank, info.world_size, info.local_rank
        self.is_main_process = info.is_main_process

    def backend(
        self, model, optimizer, scheduler, optim: OptimConfig, device: torch.device, dtype: torch.dtype | None
    ) -> LocalBackend:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return LocalBackend(
            model,
            optimizer,
            scheduler,
            optim,
            device,
            dtype,
            wrapped=wrapped,
            world_size=self.world_size,
            is_main_process=self.is_main_process,
        )

    def save_pretrained(self, model: torch.nn.Module, out_dir: Path, checkpoint_dir: Path) -> None:
        """Rank 0 saves the (replicated) model as an HF checkpoint; every rank must call it."""
        if self.is_main_process:
            model.save_pretrained(out_dir)
        barrier()


class DeepSpeedParallel:
    """DeepSpeed engines with ZeRO stage 0-3 around the core's models, AdamW and schedules.

    A stage may train several models (PPO: actor and critic), each with its own `backend` call and engine;
    the engines are kept after training, for `save_pretrained`.
    """

    engine: Engine = "deepspeed"

    def __init__(self, info: RankInfo, zero_stage: int) -> None:
        self.rank, self.world_size, self.local_rank = info.rank, info.world_size, info.local_rank
        self.is_main_process = info.is_main_process
        self.zero_stage = zero_stage
        self.ds_engines: dict[int, Any] = {}  # id(model) -> the engine that trains it

    def backend(
        self, model, optimizer, scheduler, optim: OptimConfig, device: torch.device, dtype: torch.dtype | None
    ) -> DeepSpeedBackend:
        import deepspeed

        config = deepspeed_config(optim, self.zero_stage, self.world_size, str(device))
        ds_engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.ds_engines[id(ds_engine.module)] = ds_engine
        # With bf16/fp16 enabled DeepSpeed holds the model in half precision itself: no autocast on top.
        half = config["bf16"]["enabled"] or config["fp16"]["enabled"]
        return DeepSpeedBackend(ds_engine, None if half else dtype, self.world_size, self.rank)

    def save_pretrained(self, model: torch.nn.Module, out_dir: Path, checkpoint_dir: Path) -> None:
        """Rank 0 exports fp32 weights as an HF checkpoint; every rank must call it.

        ZeRO 1-3 hold the fp32 master weights in per-rank partitions (ZeRO 3 the model weights too): every
        rank writes a final ZeRO checkpoint and rank 0 consolidates it with DeepSpeed's zero_to_fp32.
        A model no engine trains directly (PPO's LoRA-merged or EMA policy) is saved as it is, which
        needs whole weights on every rank: ZeRO 0-2.
        """
        ds_engine = self.ds_engines.get(id(model))
        if ds_engine is None:
            if not self.ds_engines:
                raise RuntimeError("save_pretrained before train: there is no DeepSpeed engine yet")
            if self.zero_stage == 3:
                raise RuntimeError("under ZeRO 3 only a model a DeepSpeed engine trains can be exported")
            state_dict = {k: v.float() for k, v in model.state_dict().items()}
        elif self.zero_stage == 0:
            state_dict = {k: v.float() for k, v in ds_engine.module.state_dict().items()}
        else:
            ds_engine.save_checkpoint(str(checkpoint_dir), tag=FINAL_TAG)
            barrier()
            state_dict = zero_checkpoint_state_dict(checkpoint_dir, FINAL_TAG) if self.is_main_process else None
        if self.is_main_process:
            save_hf_model(model, state_dict, out_dir)
        barrier()


class DeepSpeedBackend:
    """`TrainBackend` over a DeepSpeed engine: it scales the loss by 1/grad_accum, all-reduces or
    reduce-scatters gradients, clips, steps AdamW and the schedule at the accumulation boundary."""

    def __init__(self, engine, dtype: torch.dtype | None, world_size: int, rank: int) -> None:
        self.engine = engine
        self.forward_model = engine
        self.module = engine.module
        self.scheduler = engine.lr_scheduler
        self.autocast_dtype = dtype
        self.world_size, self.rank = world_size, rank
        self.is_main_process = rank == 0

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        # DeepSpeed counts micro-batches in step(): it must be called after every backward, and only
        # really steps at the accumulation boundary.
        self.engine.step()

    def step(self) -> torch.Tensor | float | None:
        if not self.engine.was_step_applied() and not self.engine.fp16_enabled():
            raise RuntimeError("DeepSpeed did not step: its gradient_accumulation_steps disagrees with the loop's")
        return self.engine.get_global_grad_norm()

    def save(self, checkpoint_dir: Path, client_state: dict[str, Any]) -> None:
        """Every rank writes its ZeRO partitions (and its RNG state); older step tags are then removed."""
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tag = f"step{client_state['step']}"
        # DeepSpeed writes the `latest` pointer after the tag's files, so a kill mid-save resumes the old tag.
        self.engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state)
        torch.save(rng_states(), checkpoint_dir / tag / f"rng_rank{self.rank}.pt")
        barrier()
        if self.is_main_process:
            for old in checkpoint_dir.iterdir():
                if old.is_dir() and old.name.startswith("step") and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)

    def load(self, checkpoint_dir: Path) -> dict[str, Any] | None:
        if not (checkpoint_dir / "latest").is_file():
            return None
        path, client_state = self.engine.load_checkpoint(str(checkpoint_dir))
        if path is None:
            raise RuntimeError(f"{checkpoint_dir}: DeepSpeed could not load the checkpoint named in `latest`")
        tag = (checkpoint_dir / "latest").read_text().strip()
        own_rng = checkpoint_dir / tag / f"rng_rank{self.rank}.pt"
        if own_rng.is_file():  # the client state holds rank 0's RNG; each rank continues its own
            client_state["rng"] = torch.load(own_rng, weights_only=True)
        return client_state


def make_parallel(engine: Engine, info: RankInfo, zero_stage: int) -> DdpParallel | DeepSpeedParallel:
    """The `parallel` argument of `train` for this rank."""
    return DeepSpeedParallel(info, zero_stage) if engine == "deepspeed" else DdpParallel(info)


# ------------------------------------------------------------------------------------------------ export


def zero_checkpoint_state_dict(checkpoint_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """Full fp32 weights consolidated from a ZeRO 1-3 checkpoint's partitions (`tag` default: `latest`).

    Runs in one process on the CPU; needs memory for the whole fp32 model.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)


def save_hf_model(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], out_dir: str | Path) -> None:
    """Save `state_dict` as an HF checkpoint of `model`'s class and config.

    A fresh instance is filled: under ZeRO 3 the trained `model`'s own parameters are empty partitions.
    Tied weights (lm_head = embed_tokens) may be missing from the state dict; anything else is an error.
    The generation config is `model`'s (a stage may have set it, e.g. SFT's stop at `<|im_end|>`).
    """
    fresh = type(model)(model.config)
    if getattr(model, "generation_config", None) is not None:
        fresh.generation_config = model.generation_config
    missing, unexpected = fresh.load_state_dict(state_dict, strict=False)
    tied = getattr(fresh, "_tied_weights_keys", None) or ()  # a list or (transformers 5) a dict of keys
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"exported weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )
    fresh.tie_weights()
    fresh.save_pretrained(out_dir)


def zero_checkpoint_to_hf(
    checkpoint_dir: str | Path, model_dir: str | Path, out_dir: str | Path, tag: str | None = None
) -> Path:
    """Convert a ZeRO checkpoint into an HF checkpoint: the architecture comes from `model_dir` (any HF
    checkpoint of the same config, e.g. a stage's exported output), the weights from the ZeRO partitions.

    For recovering weights from the resume checkpoints of a run that did not finish.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    save_hf_model(model, zero_checkpoint_state_dict(checkpoint_dir, tag), out_dir)
    return Path(out_dir)
