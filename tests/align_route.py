"""The align route on the real public samples in ../shared/data, as the tests and `bench/align_families.py` run it:
a tiny random-weight base model of some family with a tokenizer trained on the samples, the instruction sets for
SFT, the HH-style pairs for the reward model, then PPO and evaluate through the `align` preset."""

from __future__ import annotations

import json
from pathlib import Path

from tests.foreign_models import save_base_model
from tests.foreign_tokenizers import trained_tokenizer
from zero_chatgpt.cli import main

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = ("en_sft.jsonl", "zh_sft.jsonl", "en_pref.jsonl")

# Small budgets: this checks that the route works and learns on real data, not how well.
ALIGN_SETTINGS = [
    "run.device=cpu",
    "resources.torch_threads=1",
    "sft.max_seq_len=128",
    "sft.lora.rank=0",
    "sft.optim={lr: 3.0e-3, warmup_steps: 5, max_steps: 60, batch_size: 16, eval_every: 30, eval_batches: 2}",
    "train_rm.max_seq_len=128",
    "train_rm.lora.rank=0",
    "train_rm.optim={lr: 1.0e-3, warmup_steps: 5, max_steps: 60, batch_size: 16, eval_every: 30, eval_batches: 4}",
    "train_rm.judge_optim.max_steps=20",
    "ppo.lora.rank=0",
    "ppo.max_prompt_tokens=96",
    "ppo.max_new_tokens=24",
    "ppo.rollout_batch_size=16",
    "ppo.mini_batch_size=8",
    "ppo.num_eval_prompts=32",
    # The reward models these tiny bases learn from HH pairs score within a few hundredths of each other: a
    # small KL weight lets that signal move the policy (docs/what_we_tried.md, "align route").
    "ppo.kl_coef=0.05",
    "ppo.optim={lr: 1.0e-3, max_steps: 32, checkpoint_every: 32}",
    "evaluate.max_prompts=16",
    "evaluate.max_new_tokens=24",
    "evaluate.num_samples=1",
]


def shared_sources(sft_rows: int) -> list[str]:
    sft = [
        f"{{kind: jsonl, path: '{SHARED_DATA / 'en_sft.jsonl'}', limit: {sft_rows}}}",
        f"{{kind: jsonl, path: '{SHARED_DATA / 'zh_sft.jsonl'}', limit: {sft_rows // 2}}}",
    ]
    prefs = f"[{{kind: jsonl, path: '{SHARED_DATA / 'en_pref.jsonl'}', format: hh}}]"
    return [f"data.sft_sources=[{', '.join(sft)}]", f"data.pref_sources={prefs}"]


def tokenizer_texts(limit: int = 3000) -> list[str]:
    texts = []
    for name in SAMPLES:
        for line in (SHARED_DATA / name).read_text(encoding="utf-8").splitlines()[:limit]:
            row = json.loads(line)
            texts += [value for key, value in row.items() if key in ("prompt", "response", "chosen", "rejected")]
    return texts


def build_base(tmp_path: Path, family: str, style: str, seed: int = 0, width: int = 32, **config_changes) -> Path:
    return save_base_model(
        tmp_path / f"{family}-base",
        family,
        trained_tokenizer(style, tokenizer_texts()),
        seed,
        256,
        width,
        **config_changes,
    )


def run_align(
    root: Path,
    base: Path,
    seed: int = 1234,
    sft_rows: int = 600,
    extra: tuple[str, ...] = (),
    until: str | None = None,
) -> dict[str, dict]:
    """Run the align preset on `base` into `root` (through `until`, None: every stage); each stage's latest.json
    entry with its manifest's metrics."""
    settings = [f"base_model.path={base}", f"run.seed={seed}", *shared_sources(sft_rows), *ALIGN_SETTINGS, *extra]
    stop = ["--until", until] if until else []
    assert main(["run", "--preset", "align", "--root", str(root), *stop, *[f"--set={s}" for s in settings]]) == 0
    latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
    return {
        stage: {**entry, "metrics": json.loads((Path(entry["path"]) / "manifest.json").read_text())["metrics"]}
        for stage, entry in latest.items()
    }


def shared_data_present() -> bool:
    return all((SHARED_DATA / name).is_file() for name in SAMPLES)
