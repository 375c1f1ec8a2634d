"""The align route (configs/align.yaml) per base-model family and seed, on the real samples in ../shared/data.

For each family a tiny random-weight base model is built with a byte-level BPE trained on the samples (LLaMA and
Qwen2 get a Llama-3-style chat template of their own; GPT-2, BLOOM and OPT none, so ChatML is added), then
base_model -> sft -> build_prefs (the HH pairs only) -> train_rm -> ppo -> evaluate runs through the CLI, one run
at a time. Reports stage seconds, sft val loss vs the base's, the reward model's held-out accuracy next to the
longer-answer baseline, PPO reward before/after with KL and its bound.

    python bench/align_families.py --root /tmp/align-bench                       # gpt2 llama, seeds 1234 7 99
    python bench/align_families.py --root /tmp/align-bench --families qwen2 bloom opt --seeds 1234
    python bench/align_families.py --root /tmp/rm-2x2 --families gpt2 --style llama3 --until train_rm
    python bench/align_families.py --root /tmp/rm-untied --families gpt2 --until train_rm \
        --base-config tie_word_embeddings=False

`--style` gives every family that tokenizer style instead of its own ("gpt2": no template, so ChatML is added;
"llama3": a template of its own), to tell a family's architecture from its tokenizer; `--until` stops the runs
after that stage (figures of later stages are then null); `--base-config` changes the tiny bases' configs. A base
already in ROOT is reused as it is, so give each variant its own root.

Prints a table and, last, one JSON line {family: {seed: {figure: value}}}.
"""

from __future__ import annotations

import argparse
import ast
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
    ("train_rm", "reward_margin"),
    ("train_rm", "train_loss"),
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
    parser.add_argument("--style", choices=("gpt2", "llama3"), help="tokenizer style for every family")
    parser.add_argument("--until", help="stop each run after this stage (e.g. train_rm)")
    parser.add_argument(
        "--base-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config attribute of the base models built (a Python literal: tie_word_embeddings=False)",
    )
    args = parser.parse_args()
    if not shared_data_present():
        print("../shared/data is not present: nothing to measure", file=sys.stderr)
        return 1
    results: dict[str, dict[int, dict[str, float]]] = {}
    for family in args.families:
        base = args.root / f"{family}-base"
        if not base.is_dir():
            base.parent.mkdir(parents=True, exist_ok=True)
            changes = {key: ast.literal_eval(value) for key, value in (item.split("=", 1) for item in args.base_config)}
            build_base(args.root, family, args.style or TEMPLATE_STYLE[family], width=args.width, **changes)
        for seed in args.seeds:
            stages = run_align(args.root / f"{family}-{seed}", base, seed=seed, extra=tuple(args.set), until=args.until)
            figures = {
                f"{stage}.{key}": stages[stage]["metrics"].get(key) if stage in stages else None
                for stage, key in FIGURES
            }
            figures.update({f"seconds.{stage}": entry["seconds"] for stage, entry in stages.items()})
            results.setdefault(family, {})[seed] = figures
            print(f"{family} seed {seed}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()), flush=True)
    print(json.dumps(results))
    return 0


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
