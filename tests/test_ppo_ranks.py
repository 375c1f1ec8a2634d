"""PPO on several ranks: the global rollout batch split between ranks, rollouts gathered and figures averaged
over a real gloo group, 2-rank runs (DDP, and DeepSpeed ZeRO 2) that match one rank, a 2-rank run that
resumes from its checkpoint after a cancelled launch, ZeRO 3 refused, and the PPO task routing through
the launcher when ranks > 1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_ppo import dirs, ppo_config  # noqa: F401 - `dirs` is a fixture: a tiny sft dir and a trained rm
from transformers import AutoModelForCausalLM

from zero_chatgpt.config import ResourcesConfig
from zero_chatgpt.model.distributed import DeepSpeedParallel, RankInfo, mean_over_ranks
from zero_chatgpt.model.launch import decode_inputs, launch_stage
from zero_chatgpt.model.ppo.rollout import Experience, gather_experience
from zero_chatgpt.model.ppo.stage import ppo, rank_prompt_batches, rank_seed
from zero_chatgpt.model.ppo.update import UpdateSettings

TWO_DDP_RANKS = ResourcesConfig(ranks=2, launcher="torchrun", engine="ddp")
TWO_ZERO2_RANKS = ResourcesConfig(ranks=2, launcher="torchrun", engine="deepspeed", zero_stage=2)


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
    updates = UpdateSettings.from_config(ppo_config(rollout_batch_size=8, mini_batch_size=4), world_size=2, rank=1)
    assert updates.optimizer_steps(8) == 2 * 2  # ppo_epochs x global mini-batches, as on one rank


def test_zero_3_is_refused_at_once_naming_the_key(tmp_path):
    parallel = DeepSpeedParallel(RankInfo(), zero_stage=3)
    with pytest.raises(ValueError, match=r"resources.zero_stage 0 / 1 / 2, not 3"):
        ppo(ppo_config(), tmp_path / "no_sft", tmp_path / "no_rm", tmp_path / "out", seed=0, parallel=parallel)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_ppo_inputs_round_trip_the_launch_spec(tmp_path):
    decoded = decode_inputs(ppo, {"sft_dir": str(tmp_path / "sft"), "rm_dir": str(tmp_path / "rm"), "shard_dir": None})
    assert decoded == {"sft_dir": tmp_path / "sft", "rm_dir": tmp_path / "rm", "shard_dir": None}
    assert decode_inputs(ppo, {"shard_dir": str(tmp_path)})["shard_dir"] == tmp_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_experience(rank: int) -> Experience:
    """Rank 0: 1 rollout, prompt width 2, 1 response token; rank 1: 2 rollouts, prompt width 1, 2 tokens."""
    prompt_length, response_length, rows = (2, 1, 1) if rank == 0 else (1, 2, 2)
    per_token = torch.full((rows, response_length), float(rank + 1))
    return Experience(
        sequences=torch.full((rows, prompt_length + response_length), 10 + rank),
        attention_mask=torch.ones(rows, prompt_length + response_length, dtype=torch.long),
        response_mask=torch.ones(rows, response_length),
        prompt_length=prompt_length,
        logprobs=per_token,
        ref_logprobs=per_token,
        values=per_token,
        scores=torch.full((rows,), rank),
        kl=per_token,
        advantages=per_token,
        returns=per_token,
    )


def _gathering_rank(rank: int, port: int, out_dir: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        means = mean_over_ranks({"reward": float(rank), "kl": 2.0 * rank}, 2, torch.device("cpu"), weight=rank + 1)
        gathered = gather_experience(_rank_experience(rank), pad_id=0, world_size=2)
        (out_dir / f"rank{rank}.json").write_text(
            json.dumps(
                [
                    means,
                    gathered.prompt_length,
                    {
                        name: getattr(gathered, name).tolist()
                        for name in ("sequences", "attention_mask", "values", "scores")
                    },
                ]
            )
        )
    finally:
        dist.destroy_process_group()


def test_rollouts_are_gathered_and_figures_averaged_over_a_real_two_rank_group(tmp_path):
    mp.spawn(_gathering_rank, args=(_free_port(), tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]  # every rank holds the same global batch and the same means
    means, prompt_length, gathered = results[0]
    assert means == pytest.approx({"reward": 2 / 3, "kl": 4 / 3})  # weighted 1 : 2
    assert prompt_length == 2  # the widest prompt part; responses padded to the longest (2 tokens)
    assert gathered["sequences"] == [[10, 10, 10, 0], [0, 11, 11, 11], [0, 11, 11, 11]]
    assert gathered["attention_mask"] == [[1, 1, 1, 0], [0, 1, 1, 1], [0, 1, 1, 1]]
    assert gathered["values"] == [[1.0, 0.0], [2.0, 2.0], [2.0, 2.0]] and gathered["scores"] == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------- real 2-rank runs (gloo, CPU)


@pytest.fixture(scope="module")
def one_rank_run(dirs, tmp_path_factory):  # noqa: F811
    """The 1-rank run the 2-rank runs must reproduce (see `_matching_config`)."""
    out = tmp_path_factory.mktemp("ppo_one_rank")
    ppo(_matching_config(), dirs["sft"], dirs["rm"], out, seed=0, device="cpu")
    return out


def _matching_config(checkpoint_every: int = 100):
    """Rollouts that do not depend on the sampling stream: each rank draws from its own generator, so only
    a top_p that keeps just the likeliest token makes 2 ranks' rollouts those of 1 rank (the rest of the
    step, whitening and mini-batches included, matches by construction). 3 steps."""
    return ppo_config(
        top_p=1e-6,
        optim=dict(
            lr=3e-3, warmup_steps=0, max_steps=3, min_lr_ratio=1.0, weight_decay=0.0, checkpoint_every=checkpoint_every
        ),
    )


def _assert_matches_one_rank(out: Path, one_rank_out: Path) -> None:
    """The step records' losses and figures, and the exported actor's weights, within 1e-5 of one rank's."""
    one, two = _records(one_rank_out), _records(out)
    assert [r["step"] for r in two] == [1, 2, 3]
    for key in ("policy_loss", "value_loss", "reward", "kl", "response_length", "clip_fraction", "entropy"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=1e-5), key
    assert one[-1]["policy_loss"] != one[0]["policy_loss"]  # the steps did something to compare
    expected = AutoModelForCausalLM.from_pretrained(one_rank_out).state_dict()
    actor = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert expected.keys() == actor.keys()
    assert max((actor[key] - expected[key]).abs().max().item() for key in expected) < 1e-5


def _shadowing_cwd(path: Path) -> Path:
    """A working directory with its own model.py, tokenizer.py and tasks.py that must not be imported."""
    path.mkdir()
    for name in ("model.py", "tokenizer.py", "tasks.py"):
        (path / name).write_text('raise SystemExit("shadowed")\n')
    return path


@pytest.mark.parametrize("resources", [TWO_DDP_RANKS, TWO_ZERO2_RANKS], ids=["ddp", "deepspeed-zero2"])
def test_two_rank_ppo_matches_one_rank(dirs, one_rank_run, tmp_path, monkeypatch, resources):  # noqa: F811
    """Losses, rewards and the exported actor of 2 ranks with half the rollouts each equal 1 rank's, also
    when started from a directory whose own model.py / tokenizer.py / tasks.py would shadow ours."""
    monkeypatch.chdir(_shadowing_cwd(tmp_path / "cwd"))
    out = tmp_path / "out"
    lines: list[str] = []
    metrics = launch_stage(
        "ppo",
        _matching_config(),
        {"sft_dir": dirs["sft"], "rm_dir": dirs["rm"]},
        out,
        0,
        "cpu",
        tmp_path / "ckpt",
        resources,
        on_line=lines.append,
    )
    assert metrics["ranks"] == 2 and metrics["engine"] == resources.engine
    backend = "DeepSpeedBackend" if resources.engine == "deepspeed" else "LocalBackend"  # DDP: LocalBackend
    assert any(f"actor and critic train through {backend} on 2 rank(s)" in line for line in lines)
    _assert_matches_one_rank(out, one_rank_run)
    assert _differs_from_sft(out, dirs["sft"])


def _saved_ppo_state(checkpoint_dir: Path) -> dict:
    """What the actor's backend saved with PPO's state: a torch checkpoint (DDP), or a ZeRO one whose
    model-states file holds the client state (DeepSpeed)."""
    actor_dir = checkpoint_dir / "actor"
    if (actor_dir / "latest.pt").is_file():
        return torch.load(actor_dir / "latest.pt", weights_only=False)
    tag = (actor_dir / "latest").read_text().strip()
    return torch.load(actor_dir / tag / "mp_rank_00_model_states.pt", weights_only=False)


@pytest.mark.parametrize("resources", [TWO_DDP_RANKS, TWO_ZERO2_RANKS], ids=["ddp", "deepspeed-zero2"])
def test_two_rank_ppo_resumes_after_a_cancelled_launch_to_the_uninterrupted_result(
    dirs,  # noqa: F811
    one_rank_run,
    tmp_path,
    resources,
):
    """torchrun, 2 ranks on the CPU: the first launch is cancelled once the step-2 checkpoint is written
    (by the backends: torch files for DDP, ZeRO partitions for DeepSpeed, with every rank's sampling state),
    the second resumes there and ends where an uninterrupted (1-rank) run ends."""
    cfg = _matching_config(checkpoint_every=2)  # 8 prompts per step: 4 per rank; a checkpoint after step 2 of 3
    inputs = {"sft_dir": dirs["sft"], "rm_dir": dirs["rm"]}
    out, checkpoint_dir = tmp_path / "out", tmp_path / "ckpt"

    def cancel_after_checkpoint(line: str) -> None:
        if "saved PPO checkpoint at step 2" in line:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        launch_stage("ppo", cfg, inputs, out, 0, "cpu", checkpoint_dir, resources, on_line=cancel_after_checkpoint)
    saved = _saved_ppo_state(checkpoint_dir)
    assert saved["step"] == 2 and len(saved["rank_states"]) == 2
    assert not torch.equal(saved["rank_states"][0]["generator"], saved["rank_states"][1]["generator"])

    lines: list[str] = []
    metrics = launch_stage("ppo", cfg, inputs, out, 0, "cpu", checkpoint_dir, resources, on_line=lines.append)
    assert any("resuming from step 2" in line for line in lines)
    assert metrics["ranks"] == 2 and metrics["engine"] == resources.engine and metrics["steps"] == 3
    assert metrics["resumed_from"] == 2 and metrics["train_prompts"] + metrics["eval_prompts"] == 40
    assert {"reward_before", "reward_after", "kl", "mean_reward", "mean_kl"} <= metrics.keys()
    assert _records(out)[:2] == saved["history"]  # rank 0 alone writes, each step once
    _assert_matches_one_rank(out, one_rank_run)
    assert not checkpoint_dir.exists() and (out / "tokenizer.json").is_file()


def test_lora_ppo_on_zero2_ranks_exports_a_merged_plain_model(dirs, tmp_path):  # noqa: F811
    """LoRA adapters trained by DeepSpeed engines (only matrices train), checkpointed, then merged: the output
    loads without peft and holds no adapter weights."""
    pytest.importorskip("peft")
    cfg = ppo_config(lora={"rank": 4}, optim=dict(lr=3e-2, warmup_steps=0, max_steps=2, checkpoint_every=1))
    out = tmp_path / "out"
    metrics = launch_stage(
        "ppo",
        cfg,
        {"sft_dir": dirs["sft"], "rm_dir": dirs["rm"]},
        out,
        0,
        "cpu",
        tmp_path / "ckpt",
        TWO_ZERO2_RANKS,
        on_line=lambda line: None,
    )
    assert metrics["steps"] == 2 and [r["step"] for r in _records(out)] == [1, 2]
    assert not any("lora" in key for key in AutoModelForCausalLM.from_pretrained(out).state_dict())
    assert _differs_from_sft(out, dirs["sft"])


def test_the_ppo_task_routes_through_the_launcher_when_ranks_exceed_one(dirs, tmp_path):  # noqa: F811
    """The Prefect task's body (called without a flow run) with 2 DDP ranks under torchrun."""
    from zero_chatgpt.artifacts import read_manifest
    from zero_chatgpt.config import PipelineConfig
    from zero_chatgpt.tasks.ppo import ppo_task

    config = PipelineConfig.model_validate(
        {
            "run": {"seed": 0, "device": "cpu"},
            "resources": TWO_DDP_RANKS.model_dump(),
            "ppo": ppo_config(optim=dict(lr=3e-3, warmup_steps=0, max_steps=2, checkpoint_every=10)).model_dump(),
        }
    ).model_dump(mode="json")
    (tmp_path / "shards").mkdir()  # PPO-ptx is off: the shard dir is passed through, not read
    upstream = {
        "sft": {"stage": "sft", "path": str(dirs["sft"]), "fingerprint": "1" * 64},
        "train_rm": {"stage": "train_rm", "path": str(dirs["rm"]), "fingerprint": "2" * 64},
        "shard": {"stage": "shard", "path": str(tmp_path / "shards"), "fingerprint": "3" * 64},
    }
    record = ppo_task.fn(config, upstream, str(tmp_path / "root"))
    metrics = read_manifest(record["path"])["metrics"]
    assert metrics["ranks"] == 2 and metrics["engine"] == "ddp" and metrics["steps"] == 2
    assert {"reward_before", "reward_after", "kl"} <= metrics.keys()
    assert [r["step"] for r in _records(Path(record["path"]))] == [1, 2]
    assert _differs_from_sft(Path(record["path"]), dirs["sft"])
