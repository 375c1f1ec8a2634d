"""Multi-rank training: DeepSpeed configs, launcher commands, output streaming and process-group kill, the
per-rank data split, and real 2-rank CPU runs (gloo) of pretrain, sft and train_rm that must match 1-rank
losses, export a loadable HF model (from ZeRO partitions too), and resume from a ZeRO checkpoint after a
cancelled launch."""

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
from model_fixtures import make_causal_lm_dir, make_tokenizer_dir
from test_pretrain import tiny_config, write_pattern_shards, write_tokenizer
from test_train_rm import rm_config, toy_prompts, write_toy_pairs
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from zero_chatgpt.config import DemoCorpusConfig, OptimConfig, ResourcesConfig, SftConfig, SftSource
from zero_chatgpt.data_process.token_shards import TokenShards
from zero_chatgpt.model import sft as sft_module
from zero_chatgpt.model import train_rm as rm
from zero_chatgpt.model.batching import ShuffledBatches
from zero_chatgpt.model.distributed import deepspeed_config, needs_launcher, rank_info_from_env, training_engine
from zero_chatgpt.model.launch import (
    LaunchError,
    decode_inputs,
    encode_inputs,
    launch_stage,
    launcher_command,
    run_launcher,
)
from zero_chatgpt.model.pretrain import RandomWindows, pretrain
from zero_chatgpt.tokenizer.chat import IM_END_ID

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
    assert torchrun[-3:] == ["-m", "zero_chatgpt.model.launch", str(spec)]

    ds = " ".join(
        launcher_command(
            ResourcesConfig(
                ranks=8, nodes=2, launcher="deepspeed", hostfile="/etc/hosts.ds", launcher_args=["--ssh_port", "2222"]
            ),
            spec,
            29601,
        )
    )
    assert "deepspeed.launcher.runner" in ds and "--num_gpus 8 --num_nodes 2" in ds
    assert "--hostfile /etc/hosts.ds" in ds and "--ssh_port 2222" in ds and "--no_ssh" not in ds
    assert ds.endswith(f"--module zero_chatgpt.model.launch {spec}")
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
    return tiny_config(
        max_steps=STEPS, batch_size=batch_size, eval_every=5, eval_batches=2, checkpoint_every=3, precision="fp32"
    )


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
    return launch_stage(
        "pretrain",
        _config(GLOBAL_BATCH // 2),
        data,
        out_dir,
        0,
        "cpu",
        checkpoint_dir,
        ResourcesConfig(ranks=2, **resources),
        on_line=on_line or (lambda line: None),
    )


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
    from zero_chatgpt.artifacts import read_manifest
    from zero_chatgpt.config import PipelineConfig
    from zero_chatgpt.tasks.pretrain import pretrain_task

    config = PipelineConfig.model_validate(
        {
            "run": {"seed": 0, "device": "cpu"},
            "resources": {"ranks": 2, "launcher": "torchrun", "engine": "ddp"},
            "pretrain": _config(GLOBAL_BATCH // 2).model_dump(),
        }
    ).model_dump(mode="json")
    upstream = {
        "shard": {"stage": "shard", "path": str(data["shard_dir"]), "fingerprint": "1" * 64},
        "train_tokenizer": {"stage": "train_tokenizer", "path": str(data["tokenizer_dir"]), "fingerprint": "2" * 64},
    }
    record = pretrain_task.fn(config, upstream, str(tmp_path / "root"))
    manifest = read_manifest(record["path"])
    assert manifest["metrics"]["ranks"] == 2 and manifest["metrics"]["engine"] == "ddp"
    np.testing.assert_allclose(_records(Path(record["path"]), "loss"), _records(one_rank, "loss"), rtol=0, atol=1e-5)
    assert AutoModelForCausalLM.from_pretrained(record["path"]).config.num_hidden_layers == 2
    # Rank 0 streams the metrics to the stage's TensorBoard run, as a one-process stage would.
    (run_dir,) = (tmp_path / "root" / "tensorboard").iterdir()
    assert run_dir.name == f"pretrain-{record['fingerprint'][:12]}" and any(run_dir.glob("events.out.tfevents.*"))


def test_a_cancelled_zero2_run_converts_to_hf_and_resumes_from_its_checkpoint(data, one_rank, tmp_path):
    from zero_chatgpt.model.distributed import zero_checkpoint_to_hf

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


# ------------------------------------------------------------------------------ sft and train_rm ranks


SFT_DEMO = DemoCorpusConfig(num_entities=8, docs_per_entity=1)


def test_launch_inputs_survive_the_json_spec_as_the_stage_function_types(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sources = [SftSource(kind="demo"), SftSource(kind="jsonl", path="data/*.jsonl", limit=5)]
    inputs = {"sft_sources": sources, "demo": SFT_DEMO, "pretrain_dir": Path("pre")}
    encoded = json.loads(json.dumps(encode_inputs(inputs)))  # what the spec file holds
    assert encoded["pretrain_dir"] == str(tmp_path / "pre")  # made absolute: ranks may start elsewhere
    decoded = decode_inputs(sft_module.sft, encoded)
    assert decoded["sft_sources"] == sources and isinstance(decoded["sft_sources"][1], SftSource)
    assert decoded["demo"] == SFT_DEMO and decoded["pretrain_dir"] == tmp_path / "pre"
    with pytest.raises(TypeError, match="no annotated parameter 'shard_dir'"):
        decode_inputs(sft_module.sft, {"shard_dir": "x"})
    with pytest.raises(ValueError, match="limit"):
        decode_inputs(sft_module.sft, {"sft_sources": [{"kind": "demo", "limit": 0}]})


def _unpadded_rows(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_sft_ranks_split_the_global_batch_and_normalise_by_its_token_count():
    examples = [
        sft_module.SftExample(input_ids=list(range(3 + i)), labels=[-100] * 2 + list(range(2, 3 + i)), truncated=False)
        for i in range(9)
    ]
    one = sft_module.sft_batches(examples, batch_size=6, pad_id=0, seed=3)
    halves = [sft_module.sft_batches(examples, batch_size=3, pad_id=0, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(4):
        whole, parts = one.next_batch(), [h.next_batch() for h in halves]
        assert _unpadded_rows(parts[0]) + _unpadded_rows(parts[1]) == _unpadded_rows(whole)
        scored = int((whole["labels"][:, 1:] != -100).sum())
        assert float(whole["loss_normaliser"]) == scored
        assert float(parts[0]["loss_normaliser"]) == float(parts[1]["loss_normaliser"]) == scored / 2


def test_reward_ranks_split_the_global_batch():
    one = ShuffledBatches(list(range(10)), batch_size=4, seed=1)
    halves = [ShuffledBatches(list(range(10)), batch_size=2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(5):
        assert halves[0].next_batch() + halves[1].next_batch() == one.next_batch()
    assert halves[0].state_dict() == halves[1].state_dict() == one.state_dict()


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory) -> Path:
    """A trained chat tokenizer and a random-init tiny causal LM: the shape of a pretrain (or sft) artifact."""
    root = tmp_path_factory.mktemp("dist_chat")
    return make_causal_lm_dir(root, make_tokenizer_dir(root))


@pytest.fixture(scope="module")
def sft_sources(tmp_path_factory) -> list[SftSource]:
    """Chat rows of very different lengths, so the ranks' halves of a batch hold different token counts."""
    path = tmp_path_factory.mktemp("dist_sft") / "rows.jsonl"
    words = "the river runs past an old stone bridge near the harbour".split()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(60):
            response = " ".join(words[j % len(words)] for j in range(i, i + 2 + (i * 7) % 17))
            handle.write(json.dumps({"prompt": f"Tell me about place {i}.", "response": response}) + "\n")
    return [SftSource(kind="jsonl", path=str(path))]


def _sft_config(batch_size: int) -> SftConfig:
    return SftConfig.model_validate(
        {
            "optim": {
                "lr": 3e-3,
                "warmup_steps": 2,
                "max_steps": STEPS,
                "batch_size": batch_size,
                "eval_every": 5,
                "eval_batches": 2,
                "checkpoint_every": 3,
                "precision": "fp32",
            },
            "max_seq_len": 64,
            "rlhf_prompt_fraction": 0.2,
            "val_fraction": 0.2,
        }
    )


def test_sft_on_two_zero2_ranks_with_half_batches_matches_one_rank(chat_model_dir, sft_sources, tmp_path):
    pytest.importorskip("deepspeed")
    one = tmp_path / "one"
    expected = sft_module.sft(
        _sft_config(GLOBAL_BATCH), sft_sources, SFT_DEMO, chat_model_dir, one, seed=0, device="cpu"
    )
    two = tmp_path / "two"
    inputs = {"sft_sources": sft_sources, "demo": SFT_DEMO, "pretrain_dir": chat_model_dir}
    metrics = launch_stage(
        "sft",
        _sft_config(GLOBAL_BATCH // 2),
        inputs,
        two,
        0,
        "cpu",
        tmp_path / "ckpt",
        ResourcesConfig(ranks=2, zero_stage=2),
        on_line=lambda line: None,
    )
    assert metrics["ranks"] == 2 and metrics["engine"] == "deepspeed" and metrics["steps"] == STEPS
    assert metrics["val_scored_rows"] == expected["val_scored_rows"]  # the same val rows on every rank
    np.testing.assert_allclose(_records(two, "loss"), _records(one, "loss"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_records(two, "val_loss"), _records(one, "val_loss"), rtol=0, atol=1e-5)
    assert metrics["base_val_loss"] == pytest.approx(expected["base_val_loss"], abs=1e-5)
    assert _records(two, "tokens_seen") == _records(one, "tokens_seen")
    for name in (sft_module.RLHF_PROMPTS, sft_module.SFT_VAL, sft_module.REJECTED):  # rank 0 wrote them once
        assert (two / name).read_text() == (one / name).read_text()
    assert not (tmp_path / "ckpt").exists()

    # The export consolidated from the ZeRO 2 partitions is the 1-rank model, and still stops at <|im_end|>.
    exported = AutoModelForCausalLM.from_pretrained(two)
    reference = AutoModelForCausalLM.from_pretrained(one)
    for (name, got), (_, want) in zip(exported.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)
    assert IM_END_ID in exported.generation_config.eos_token_id
    assert AutoTokenizer.from_pretrained(two).chat_template


def test_the_train_rm_task_on_two_ddp_ranks_with_half_batches_matches_one_rank(chat_model_dir, tmp_path):
    """The Prefect task's body (called without a flow run) routes through torchrun with 2 DDP ranks."""
    from zero_chatgpt.artifacts import read_manifest
    from zero_chatgpt.config import PipelineConfig
    from zero_chatgpt.tasks.train_rm import train_rm_task

    prefs = write_toy_pairs(tmp_path / "prefs", toy_prompts(20))
    one = tmp_path / "one"
    rm_optim = dict(max_steps=STEPS, eval_every=5, checkpoint_every=3, precision="fp32")
    rm.train_reward_model(
        rm_config(independent_judge=True, batch_size=GLOBAL_BATCH, **rm_optim),
        chat_model_dir,
        prefs,
        one,
        seed=0,
        device="cpu",
    )

    config = PipelineConfig.model_validate(
        {
            "run": {"seed": 0, "device": "cpu"},
            "resources": {"ranks": 2, "launcher": "torchrun", "engine": "ddp"},
            "train_rm": rm_config(independent_judge=True, batch_size=GLOBAL_BATCH // 2, **rm_optim).model_dump(),
        }
    ).model_dump(mode="json")
    upstream = {
        "sft": {"stage": "sft", "path": str(chat_model_dir), "fingerprint": "3" * 64},
        "build_prefs": {"stage": "build_prefs", "path": str(prefs), "fingerprint": "4" * 64},
    }
    record = train_rm_task.fn(config, upstream, str(tmp_path / "root"))
    two = Path(record["path"])
    assert read_manifest(two)["metrics"]["ranks"] == 2
    np.testing.assert_allclose(_records(two, "loss"), _records(one, "loss"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_records(two, "val_accuracy"), _records(one, "val_accuracy"), rtol=0, atol=1e-6)
    judge = "independent_judge"  # trained after the first model, by the same ranks
    np.testing.assert_allclose(_records(two / judge, "loss"), _records(one / judge, "loss"), rtol=0, atol=1e-5)
    model = AutoModelForSequenceClassification.from_pretrained(two)
    assert model.config.num_labels == 1 and (two / "tokenizer.json").is_file()


if __name__ == "__main__":  # pragma: no cover - `python tests/test_distributed.py` runs just this file
    sys.exit(pytest.main([__file__, "-q"]))
