"""Multi-rank training: DeepSpeed configs, launcher commands, output streaming and process-group kill, the
per-rank data split, and real 2-rank CPU runs (gloo) that must match 1-rank losses, export a loadable HF
model from ZeRO partitions, and resume from a ZeRO checkpoint after a cancelled launch."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from data_process.token_shards import TokenShards
from model.distributed import deepspeed_config, needs_launcher, rank_info_from_env, training_engine
from model.launch import LaunchError, launch_stage, launcher_command, run_launcher
from model.pretrain import RandomWindows, pretrain
from test_pretrain import tiny_config, write_pattern_shards, write_tokenizer
from zero_chatgpt.config import OptimConfig, ResourcesConfig

GLOBAL_BATCH = 8
STEPS = 6


# ------------------------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_config_is_derived_from_optim_and_zero_stage(stage):
    optim = OptimConfig(batch_size=4, grad_accum=3, grad_clip=0.5, precision="bf16")
    config = deepspeed_config(optim, stage, world_size=2, device="cuda")
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["gradient_accumulation_steps"] == 3
    assert config["train_batch_size"] == 4 * 3 * 2  # DeepSpeed rejects a config where these disagree
    assert config["gradient_clipping"] == 0.5 and config["zero_optimization"]["stage"] == stage
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert "optimizer" not in config and "scheduler" not in config  # the core's AdamW and schedule are used


def test_fp32_on_cpu_enables_no_half_precision():
    config = deepspeed_config(OptimConfig(precision="auto"), 0, world_size=1, device="cpu")
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]


def test_launcher_and_engine_choice():
    assert not needs_launcher(ResourcesConfig())
    assert needs_launcher(ResourcesConfig(ranks=2)) and needs_launcher(ResourcesConfig(nodes=2))
    assert needs_launcher(ResourcesConfig(hostfile="hosts"))
    assert training_engine(ResourcesConfig(ranks=2)) == "ddp"
    assert training_engine(ResourcesConfig(ranks=2, zero_stage=2)) == "deepspeed"
    assert training_engine(ResourcesConfig(ranks=2, launcher="deepspeed")) == "deepspeed"
    assert training_engine(ResourcesConfig(ranks=2, launcher="deepspeed", engine="ddp")) == "ddp"
    assert rank_info_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).local_rank == 1
    assert rank_info_from_env({}).is_main_process


def test_launcher_commands_pass_multi_node_options_through(tmp_path):
    spec = tmp_path / "spec.json"
    torchrun = launcher_command(ResourcesConfig(ranks=4, nodes=2, node_rank=1, master_addr="10.0.0.1"), spec, 29600)
    joined = " ".join(torchrun)
    assert "torch.distributed.run" in joined and "--nproc_per_node 4" in joined and "--nnodes 2" in joined
    assert "--node_rank 1" in joined and "--master_addr 10.0.0.1 --master_port 29600" in joined
    assert torchrun[-3:] == ["-m", "model.launch", str(spec)]

    ds = " ".join(launcher_command(ResourcesConfig(ranks=8, nodes=2, launcher="deepspeed", hostfile="/etc/hosts.ds",
                                                   launcher_args=["--ssh_port", "2222"]), spec, 29601))
    assert "deepspeed.launcher.runner" in ds and "--num_gpus 8 --num_nodes 2" in ds
    assert "--hostfile /etc/hosts.ds" in ds and "--ssh_port 2222" in ds and "--no_ssh" not in ds
    assert ds.endswith(f"--module model.launch {spec}")
    no_ssh = " ".join(launcher_command(ResourcesConfig(ranks=2, nodes=2, node_rank=1, launcher="deepspeed"), spec, 1))
    assert "--no_ssh --node_rank 1" in no_ssh
    local = " ".join(launcher_command(ResourcesConfig(ranks=2), spec, 1234))
    assert "--master_addr 127.0.0.1 --master_port 1234" in local


def test_ranks_split_one_global_batch_so_two_ranks_see_what_one_rank_sees(tmp_path):
    write_pattern_shards(tmp_path, {"train": 100, "val": 5})
    shards = TokenShards(tmp_path, "train")
    one = RandomWindows(shards, batch_size=6, seq_len=8, seed=7)
    halves = [RandomWindows(shards, batch_size=3, seq_len=8, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(4):
        expected = one.next_batch()
        got = torch.cat([h.next_batch() for h in halves])
        assert expected.shape == (6, 9)
        torch.testing.assert_close(got, expected)
    assert not torch.equal(halves[0].next_batch(), halves[1].next_batch())  # the ranks do not duplicate rows


# ------------------------------------------------------------------------------------- the subprocess


def test_launcher_output_is_streamed_line_by_line():
    lines = []
    run_launcher(["sh", "-c", "echo one; echo two >&2; echo three"], dict(os.environ), lines.append)
    assert lines == ["one", "two", "three"]


def test_a_failed_launch_raises_with_the_exit_code_and_output_tail():
    with pytest.raises(LaunchError, match=r"code 3[\s\S]*boom"):
        run_launcher(["sh", "-c", "echo boom; exit 3"], dict(os.environ), lambda line: None)


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("interrupt", ["exception", "sigterm"])
def test_an_interrupted_launch_kills_the_whole_process_group(interrupt):
    """The launcher's children (the ranks) must die with it, whether the caller raised or got SIGTERM."""
    started: list[int] = []

    def on_line(line: str) -> None:
        started.append(int(line))
        if interrupt == "exception":
            raise RuntimeError("cancelled by the flow")
        os.kill(os.getpid(), signal.SIGTERM)  # what Prefect's cancellation sends the task process

    expected = RuntimeError if interrupt == "exception" else KeyboardInterrupt
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(expected):
        run_launcher(["sh", "-c", "sleep 60 & echo $!; wait"], dict(os.environ), on_line)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert started and _gone(started[0])


# --------------------------------------------------------------------- real 2-rank runs (gloo, CPU)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist_data")
    write_tokenizer(root / "tokenizer", num_words=40)
    write_pattern_shards(root / "shards", {"train": 400, "val": 40})
    return {"shard_dir": root / "shards", "tokenizer_dir": root / "tokenizer"}


def _config(batch_size: int):
    return tiny_config(max_steps=STEPS, batch_size=batch_size, eval_every=5, eval_batches=2, checkpoint_every=3,
                       precision="fp32")


def _records(out_dir: Path, key: str) -> list[float]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [record[key] for record in map(json.loads, lines) if key in record]


@pytest.fixture(scope="module")
def one_rank(data, tmp_path_factory) -> Path:
    """The reference: one process, the whole global batch."""
    out = tmp_path_factory.mktemp("one_rank")
    pretrain(_config(GLOBAL_BATCH), data["shard_dir"], data["tokenizer_dir"], out, seed=0, device="cpu")
    return out


def _launch(data, out_dir: Path, checkpoint_dir: Path, on_line=None, **resources) -> dict:
    pytest.importorskip("deepspeed")
    return launch_stage("pretrain", _config(GLOBAL_BATCH // 2), data, out_dir, 0, "cpu", checkpoint_dir,
                        ResourcesConfig(ranks=2, **resources), on_line=on_line or (lambda line: None))


def test_two_ranks_with_half_batches_match_one_rank_and_export_an_hf_model(data, one_rank, tmp_path):
    out = tmp_path / "out"
    metrics = _launch(data, out, tmp_path / "ckpt", zero_stage=3)
    assert metrics["ranks"] == 2 and metrics["steps"] == STEPS
    np.testing.assert_allclose(_records(out, "loss"), _records(one_rank, "loss"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_records(out, "val_loss"), _records(one_rank, "val_loss"), rtol=0, atol=1e-5)
    assert _records(out, "tokens_seen") == _records(one_rank, "tokens_seen")  # global, not per rank
    assert not (tmp_path / "ckpt").exists()  # resume checkpoints are removed once the model is exported

    # The export (for ZeRO 3: consolidated from the weight partitions) is a complete HF checkpoint.
    exported = AutoModelForCausalLM.from_pretrained(out)
    reference = AutoModelForCausalLM.from_pretrained(one_rank)
    for (name, got), (_, want) in zip(exported.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)
    assert (out / "tokenizer.json").is_file() and not list(tmp_path.glob(".launch-*"))


def test_the_pretrain_task_routes_through_the_launcher_when_ranks_exceed_one(data, one_rank, tmp_path):
    """The Prefect task's body (called without a flow run) with 2 DDP ranks under torchrun."""
    from tasks.pretrain import pretrain_task
    from zero_chatgpt.artifacts import read_manifest
    from zero_chatgpt.config import PipelineConfig

    config = PipelineConfig.model_validate({
        "run": {"seed": 0, "device": "cpu"},
        "resources": {"ranks": 2, "launcher": "torchrun", "engine": "ddp"},
        "pretrain": _config(GLOBAL_BATCH // 2).model_dump(),
    }).model_dump(mode="json")
    upstream = {"shard": {"stage": "shard", "path": str(data["shard_dir"]), "fingerprint": "1" * 64},
                "train_tokenizer": {"stage": "train_tokenizer", "path": str(data["tokenizer_dir"]),
                                    "fingerprint": "2" * 64}}
    record = pretrain_task.fn(config, upstream, str(tmp_path / "root"))
    manifest = read_manifest(record["path"])
    assert manifest["metrics"]["ranks"] == 2 and manifest["metrics"]["engine"] == "ddp"
    np.testing.assert_allclose(_records(Path(record["path"]), "loss"), _records(one_rank, "loss"), rtol=0, atol=1e-5)
    assert AutoModelForCausalLM.from_pretrained(record["path"]).config.num_hidden_layers == 2


def test_a_cancelled_zero2_run_converts_to_hf_and_resumes_from_its_checkpoint(data, one_rank, tmp_path):
    from model.distributed import zero_checkpoint_to_hf

    out, checkpoint_dir = tmp_path / "out", tmp_path / "ckpt"

    def cancel_after_checkpoint(line: str) -> None:
        if "saved checkpoint at step 3" in line:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        _launch(data, out, checkpoint_dir, on_line=cancel_after_checkpoint, zero_stage=2)
    assert (checkpoint_dir / "latest").read_text().strip() == "step3"

    # The ZeRO partitions of the unfinished run are recoverable as an HF model.
    recovered = zero_checkpoint_to_hf(checkpoint_dir, one_rank, tmp_path / "recovered")
    model = AutoModelForCausalLM.from_pretrained(recovered)
    assert model(input_ids=torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, 43)

    resumed = []
    metrics = _launch(data, out, checkpoint_dir, on_line=resumed.append, zero_stage=2)
    assert metrics["resumed_from"] == 3 and any("resuming from step 3" in line for line in resumed)
    # Exact continuation: the same losses as the uninterrupted 1-rank run, each step logged once.
    np.testing.assert_allclose(_records(out, "loss"), _records(one_rank, "loss"), rtol=0, atol=1e-5)
    assert metrics["val_loss"] == pytest.approx(_records(one_rank, "val_loss")[-1], abs=1e-5)


if __name__ == "__main__":  # pragma: no cover - `python tests/test_distributed.py` runs just this file
    sys.exit(pytest.main([__file__, "-q"]))
