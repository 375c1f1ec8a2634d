"""sft, train_rm and ppo killed with SIGKILL after a checkpoint resume to the run never interrupted.

Each attempt writes into a fresh out dir, as the flow's temporary artifact dir is, while the checkpoints live
beside it (`tasks.stage.resume_dir`): the metrics history must come back from the checkpoints alone. The
kills fall between two checkpoints, so records past the checkpoint are left behind to be dropped. train_rm
with its independent judge is killed twice, once in each of its two trainings. (pretrain's own test of the
same kind: tests/test_pretrain.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kill_and_resume import assert_same_history, assert_same_metrics, read_history, run_killed, run_to_end
from model_fixtures import make_tokenizer_dir
from test_train_rm import make_sft_dir, rm_config, toy_prompts, write_toy_pairs

from zero_chatgpt.config import DemoCorpusConfig, PpoConfig, SftConfig, SftSource
from zero_chatgpt.model.ppo import ppo
from zero_chatgpt.model.sft import sft
from zero_chatgpt.model.train_rm import train_reward_model
from zero_chatgpt.stage_files import INDEPENDENT_JUDGE_DIR

SEED = 0
# Checkpoints every 3 steps; every kill comes after step 5: past the checkpoint at 3, before the one at 6.
CHECKPOINT_EVERY = 3
KILL_AFTER_STEP = 5


# -------------------------------------------------------- the stages, called with JSON arguments (a child can too)


def run_sft(model_dir: str, out_dir: str, checkpoint_dir: str) -> dict[str, Any]:
    cfg = SftConfig.model_validate(
        {
            "optim": {
                "lr": 3e-3,
                "warmup_steps": 2,
                "max_steps": 8,
                "batch_size": 8,
                "eval_every": 4,
                "eval_batches": 2,
                "checkpoint_every": CHECKPOINT_EVERY,
                "precision": "fp32",
            },
            "max_seq_len": 96,
        }
    )
    demo = DemoCorpusConfig(num_entities=8, docs_per_entity=1)
    return sft(
        cfg,
        [SftSource(kind="demo")],
        demo,
        Path(model_dir),
        Path(out_dir),
        seed=SEED,
        device="cpu",
        checkpoint_dir=Path(checkpoint_dir),
    )


def run_train_rm(sft_dir: str, prefs_dir: str, out_dir: str, checkpoint_dir: str) -> dict[str, Any]:
    cfg = rm_config(independent_judge=True, max_steps=7, eval_every=4, checkpoint_every=CHECKPOINT_EVERY)
    return train_reward_model(
        cfg, Path(sft_dir), Path(prefs_dir), Path(out_dir), seed=SEED, device="cpu", checkpoint_dir=Path(checkpoint_dir)
    )


def run_ppo(sft_dir: str, rm_dir: str, out_dir: str, checkpoint_dir: str) -> dict[str, Any]:
    cfg = PpoConfig.model_validate(
        {
            "rollout_batch_size": 8,
            "mini_batch_size": 4,
            "ppo_epochs": 2,
            "max_new_tokens": 8,
            "num_eval_prompts": 8,
            "optim": {
                "lr": 3e-3,
                "warmup_steps": 0,
                "max_steps": 7,
                "min_lr_ratio": 1.0,
                "weight_decay": 0.0,
                "checkpoint_every": CHECKPOINT_EVERY,
            },
        }
    )
    return ppo(
        cfg, Path(sft_dir), Path(rm_dir), Path(out_dir), seed=SEED, device="cpu", checkpoint_dir=Path(checkpoint_dir)
    )


# ------------------------------------------------------------------------------------------------ inputs


PROMPTS = toy_prompts(40)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    """A tiny random-init chat model with RLHF prompts: what sft starts from, and what train_rm and ppo read."""
    root = tmp_path_factory.mktemp("resume_sft")
    return make_sft_dir(root, make_tokenizer_dir(root), PROMPTS)


@pytest.fixture(scope="module")
def prefs_dir(tmp_path_factory) -> Path:
    return write_toy_pairs(tmp_path_factory.mktemp("resume_prefs"), PROMPTS)


@pytest.fixture(scope="module")
def reward_model_dir(sft_dir, prefs_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume_rm")
    train_reward_model(rm_config(max_steps=15, eval_every=15), sft_dir, prefs_dir, out, seed=SEED, device="cpu")
    return out


# ------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Kill:
    """Where an attempt dies: right after logging step `KILL_AFTER_STEP` to `metrics_log`, leaving `checkpoint`
    (at step `CHECKPOINT_EVERY`). Both paths are relative to the test's dir; `{out}` is the attempt's out dir."""

    metrics_log: str
    checkpoint: str


@dataclass(frozen=True)
class Case:
    run: Callable[..., dict[str, Any]]  # a `run_*` above
    inputs: dict[str, str]  # its arguments besides out_dir and checkpoint_dir, as fixtures naming input dirs
    kills: tuple[Kill, ...]
    metrics_logs: tuple[str, ...]  # the histories to compare, relative to the out dir


CASES = {
    "sft": Case(
        run_sft, {"model_dir": "sft_dir"}, (Kill("{out}/metrics.jsonl", "checkpoints/latest.pt"),), ("metrics.jsonl",)
    ),
    # The reward model, then the judge: each of the two trainings is killed once.
    "train_rm": Case(
        run_train_rm,
        {"sft_dir": "sft_dir", "prefs_dir": "prefs_dir"},
        (
            Kill("checkpoints-reward_model/metrics.jsonl", "checkpoints/latest.pt"),
            Kill(f"{{out}}/{INDEPENDENT_JUDGE_DIR}/metrics.jsonl", "checkpoints-judge/latest.pt"),
        ),
        ("metrics.jsonl", f"{INDEPENDENT_JUDGE_DIR}/metrics.jsonl"),
    ),
    "ppo": Case(
        run_ppo,
        {"sft_dir": "sft_dir", "rm_dir": "reward_model_dir"},
        (Kill("{out}/metrics.jsonl", "checkpoints/actor/latest.pt"),),
        ("metrics.jsonl",),
    ),
}


@pytest.mark.parametrize("stage", CASES)
def test_a_stage_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(stage, request, tmp_path):
    case = CASES[stage]
    target = f"{__name__}:{case.run.__name__}"
    inputs = {name: str(request.getfixturevalue(fixture)) for name, fixture in case.inputs.items()}

    def arguments(out_dir: str) -> dict[str, str]:
        return {**inputs, "out_dir": str(tmp_path / out_dir), "checkpoint_dir": str(tmp_path / "checkpoints")}

    for attempt, kill in enumerate(case.kills):
        out_dir = f"killed-{attempt}"
        metrics_log = tmp_path / kill.metrics_log.format(out=out_dir)
        output = run_killed(target, arguments(out_dir), metrics_log, KILL_AFTER_STEP)
        assert (tmp_path / kill.checkpoint).is_file(), output
        # The records past the checkpoint were on disk when it died: the resumed run must not keep them twice.
        assert read_history(metrics_log)[-1]["step"] == KILL_AFTER_STEP
        assert attempt == 0 or f"resuming from step {CHECKPOINT_EVERY} " in output, output

    resumed, output = run_to_end(target, arguments("resumed"))
    assert f"resuming from step {CHECKPOINT_EVERY} " in output, output
    # train_rm: the reward model finished by the second attempt is not trained again by the third.
    assert resumed["resumed_from"] == CHECKPOINT_EVERY
    assert not list(tmp_path.glob("checkpoints*")), "the finished run leaves no checkpoints behind"

    straight = case.run(
        **inputs, out_dir=str(tmp_path / "straight"), checkpoint_dir=str(tmp_path / "straight-checkpoints")
    )
    assert straight["resumed_from"] == 0
    assert_same_metrics(resumed, straight)
    for metrics_log in case.metrics_logs:
        assert_same_history(
            read_history(tmp_path / "resumed" / metrics_log),
            read_history(tmp_path / "straight" / metrics_log),
        )
