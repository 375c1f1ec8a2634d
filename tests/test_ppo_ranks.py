"""PPO on several ranks: the global rollout batch split between ranks, gradient / metric averaging over a real
gloo group, a 2-rank torchrun run through the launcher that exports a trained actor and resumes from its
checkpoint after a cancelled launch, and the PPO task routing through the launcher when ranks > 1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from zero_chatgpt.model.distributed import all_reduce_mean_
from zero_chatgpt.model.launch import decode_inputs, launch_stage
from zero_chatgpt.model.ppo.stage import mean_over_ranks, ppo, rank_prompt_batches, rank_seed
from zero_chatgpt.model.ppo.update import UpdateSettings
from test_ppo import dirs, ppo_config  # noqa: F401 - `dirs` is a fixture: a tiny sft dir and a trained rm
from zero_chatgpt.config import ResourcesConfig

STEPS = 4
TWO_DDP_RANKS = ResourcesConfig(ranks=2, launcher="torchrun", engine="ddp")


def _records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _differs_from_sft(out_dir: Path, sft_dir: Path) -> bool:
    actor = AutoModelForCausalLM.from_pretrained(out_dir).state_dict()
    sft = AutoModelForCausalLM.from_pretrained(sft_dir).state_dict()
    return any(not torch.equal(actor[key], sft[key]) for key in sft)


# ------------------------------------------------------------------------------------------ pure parts


def test_ranks_split_each_global_rollout_batch_into_disjoint_halves():
    prompts = [[100 + i, i] for i in range(12)]  # two global batches per epoch, reshuffled each epoch
    one = rank_prompt_batches(prompts, rollout_batch_size=6, seed=5)
    halves = [rank_prompt_batches(prompts, 6, 5, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(6):
        whole = one.next_batch()
        parts = [h.next_batch() for h in halves]
        assert [len(p) for p in parts] == [3, 3]
        assert not {tuple(p) for p in parts[0]} & {tuple(p) for p in parts[1]}
        assert parts[0] + parts[1] == whole  # together: exactly what one rank takes for this step
    assert halves[0].state_dict() == halves[1].state_dict() == one.state_dict()  # one copy in a checkpoint
    with pytest.raises(ValueError, match="rollout_batch_size 5 does not split evenly over 2 ranks"):
        rank_prompt_batches(prompts, 5, 0, rank=0, world_size=2)


def test_per_rank_sizes_and_sampling_seeds():
    cfg = ppo_config(mini_batch_size=4)
    assert UpdateSettings.from_config(cfg).mini_batch_size == 4
    assert UpdateSettings.from_config(cfg, world_size=2).mini_batch_size == 2  # a global count, like rollouts
    with pytest.raises(ValueError, match="ppo.mini_batch_size 4 does not split evenly over 3 ranks"):
        UpdateSettings.from_config(cfg, world_size=3)  # rounding down would shrink the global mini-batch
    assert rank_seed(7, 0) == 7  # a one-rank run samples exactly as before
    seeds = {rank_seed(7, r) for r in range(4)} | {rank_seed(8, r) for r in range(4)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert mean_over_ranks({"reward": 1.5}, 1, torch.device("cpu")) == {"reward": 1.5}


def test_ppo_inputs_round_trip_the_launch_spec(tmp_path):
    decoded = decode_inputs(ppo, {"sft_dir": str(tmp_path / "sft"), "rm_dir": str(tmp_path / "rm"),
                                  "shard_dir": None})
    assert decoded == {"sft_dir": tmp_path / "sft", "rm_dir": tmp_path / "rm", "shard_dir": None}
    assert decode_inputs(ppo, {"shard_dir": str(tmp_path)})["shard_dir"] == tmp_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _averaging_rank(rank: int, port: int, out_dir: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # Two dtypes and a bucket smaller than the tensors: several collectives, order kept.
        tensors = [torch.full((3, 2), float(rank)), torch.arange(5.0) * (rank + 1),
                   torch.full((4,), float(rank), dtype=torch.float64)]
        all_reduce_mean_(tensors, 2, bucket_numel=5)
        means = mean_over_ranks({"reward": float(rank), "kl": 2.0 * rank}, 2, torch.device("cpu"), weight=rank + 1)
        (out_dir / f"rank{rank}.json").write_text(json.dumps([[t.tolist() for t in tensors], means]))
    finally:
        dist.destroy_process_group()


def test_gradients_and_metrics_are_averaged_over_a_real_two_rank_group(tmp_path):
    mp.spawn(_averaging_rank, args=(_free_port(), tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]
    tensors, means = results[0]
    assert tensors[0] == [[0.5, 0.5]] * 3 and tensors[1] == [1.5 * i for i in range(5)] and tensors[2] == [0.5] * 4
    assert means == pytest.approx({"reward": 2 / 3, "kl": 4 / 3})  # weighted 1 : 2


# --------------------------------------------------------------------- real 2-rank runs (gloo, CPU)


def test_two_rank_ppo_exports_a_trained_actor_and_resumes_after_a_cancelled_launch(dirs, tmp_path):  # noqa: F811
    """torchrun, 2 DDP ranks on the CPU: the first launch is cancelled once the step-2 checkpoint is written
    (every rank's sampling state gathered into it), the second resumes there and finishes."""
    cfg = ppo_config()  # 8 prompts per step: 4 per rank; checkpoint every 2 of 4 steps
    inputs = {"sft_dir": dirs["sft"], "rm_dir": dirs["rm"]}
    out, checkpoint_dir = tmp_path / "out", tmp_path / "ckpt"

    def cancel_after_checkpoint(line: str) -> None:
        if "saved PPO checkpoint at step 2" in line:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        launch_stage("ppo", cfg, inputs, out, 0, "cpu", checkpoint_dir, TWO_DDP_RANKS, on_line=cancel_after_checkpoint)
    saved = torch.load(checkpoint_dir / "latest.pt", weights_only=False)
    assert saved["step"] == 2 and len(saved["rank_states"]) == 2
    assert not torch.equal(saved["rank_states"][0]["generator"], saved["rank_states"][1]["generator"])

    lines: list[str] = []
    metrics = launch_stage("ppo", cfg, inputs, out, 0, "cpu", checkpoint_dir, TWO_DDP_RANKS, on_line=lines.append)
    assert any("resuming from step 2" in line for line in lines)
    assert metrics["ranks"] == 2 and metrics["engine"] == "ddp" and metrics["steps"] == STEPS
    assert metrics["resumed_from"] == 2 and metrics["train_prompts"] + metrics["eval_prompts"] == 40
    assert {"reward_before", "reward_after", "kl", "mean_reward", "mean_kl"} <= metrics.keys()
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # rank 0 alone writes, each step once
    assert records[:2] == saved["history"]
    assert not checkpoint_dir.exists() and (out / "tokenizer.json").is_file()
    assert _differs_from_sft(out, dirs["sft"])


def test_the_ppo_task_routes_through_the_launcher_when_ranks_exceed_one(dirs, tmp_path):  # noqa: F811
    """The Prefect task's body (called without a flow run) with 2 DDP ranks under torchrun."""
    from zero_chatgpt.tasks.ppo import ppo_task
    from zero_chatgpt.artifacts import read_manifest
    from zero_chatgpt.config import PipelineConfig

    config = PipelineConfig.model_validate({
        "run": {"seed": 0, "device": "cpu"},
        "resources": TWO_DDP_RANKS.model_dump(),
        "ppo": ppo_config(optim=dict(lr=3e-3, warmup_steps=0, max_steps=2, checkpoint_every=10)).model_dump(),
    }).model_dump(mode="json")
    (tmp_path / "shards").mkdir()  # PPO-ptx is off: the shard dir is passed through, not read
    upstream = {"sft": {"stage": "sft", "path": str(dirs["sft"]), "fingerprint": "1" * 64},
                "train_rm": {"stage": "train_rm", "path": str(dirs["rm"]), "fingerprint": "2" * 64},
                "shard": {"stage": "shard", "path": str(tmp_path / "shards"), "fingerprint": "3" * 64}}
    record = ppo_task.fn(config, upstream, str(tmp_path / "root"))
    metrics = read_manifest(record["path"])["metrics"]
    assert metrics["ranks"] == 2 and metrics["engine"] == "ddp" and metrics["steps"] == 2
    assert {"reward_before", "reward_after", "kl"} <= metrics.keys()
    assert [r["step"] for r in _records(Path(record["path"]))] == [1, 2]
    assert _differs_from_sft(Path(record["path"]), dirs["sft"])
