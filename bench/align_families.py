"""The align route (configs/align.yaml) per base-model family and seed, on the real samples in ../shared/data.

For each family a tiny random-weight base model is built with a byte-level BPE trained on the samples (LLaMA and
Qwen2 get a Llama-3-style chat template of their own; GPT-2, BLOOM and OPT none, so ChatML is added), then
base_model -> sft -> build_prefs (the HH pairs only) -> train_rm -> ppo -> evaluate runs through the CLI, one run
at a time. Reports stage seconds, sft val loss vs the base's, the reward model's held-out accuracy next to the
longer-answer baseline, PPO reward before/after with KL and its bound.

    python bench/align_families.py --root /tmp/align-bench                       # gpt2 llama, seeds 1234 7 99
    python bench/align_families.py --root /tmp/align-bench --families qwen2 bloom opt --seeds 1234

Prints a table and, last, one JSON line {family: {seed: {figure: value}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.align_route import build_base, run_align, shared_data_present  # noqa: E402

TEMPLATE_STYLE = {"gpt2": "gpt2", "bloom": "gpt2", "opt": "gpt2", "llama": "llama3", "qwen2": "llama3"}
FIGURES = (
    ("sft", "val_loss"),
    ("sft", "base_val_loss"),
    ("train_rm", "val_accuracy"),
    ("train_rm", "length_baseline_accuracy"),
    ("ppo", "reward_before"),
    ("ppo", "reward_after"),
    ("ppo", "kl"),
    ("ppo", "kl_bound"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"], choices=sorted(TEMPLATE_STYLE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1234, 7, 99])
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE settings for every run")
    parser.add_argument("--width", type=int, default=32, help="hidden size of the tiny base models")
    args = parser.parse_args()
    if not shared_data_present():
        print("../shared/data is not present: nothing to measure", file=sys.stderr)
        return 1
    results: dict[str, dict[int, dict[str, float]]] = {}
    for family in args.families:
        base = args.root / f"{family}-base"
        if not base.is_dir():
            base.parent.mkdir(parents=True, exist_ok=True)
            build_base(args.root, family, TEMPLATE_STYLE[family], width=args.width)
        for seed in args.seeds:
            stages = run_align(args.root / f"{family}-{seed}", base, seed=seed, extra=tuple(args.set))
            figures = {f"{stage}.{key}": stages[stage]["metrics"].get(key) for stage, key in FIGURES}
            figures.update({f"seconds.{stage}": entry["seconds"] for stage, entry in stages.items()})
            results.setdefault(family, {})[seed] = figures
            print(f"{family} seed {seed}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()), flush=True)
    print(json.dumps(results))
    return 0


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
