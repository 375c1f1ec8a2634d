"""The tiny preset at several seeds: each stage's key figures per seed, with mean and range.

The acceptance floors in tests/test_tiny_acceptance.py and the README's "What the tiny run learns" table come from
this bench, so no floor rests on one lucky seed. Runs are sequential (one heavy job at a time; torch on a busy
2-core machine slows down 10x) and cached per seed under --root, so a second call only reads the manifests.

    python bench/tiny_seeds.py --root /tmp/tiny-seeds                  # seeds 1234, 7, 99 (~35 min on 2 cores)
    python bench/tiny_seeds.py --root /tmp/tiny-seeds --seeds 1234 7   # a subset

Prints a table and, last, one JSON line {metric: {seed: value, ..., "mean", "min", "max"}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SEEDS = (1234, 7, 99)

# (stage, metric key, nested key or None): the figures the README table and the acceptance test use.
FIGURES = (
    ("pretrain", "val_loss", None),
    ("pretrain", "unigram_val_loss", None),
    ("sft", "val_loss", None),
    ("sft", "base_val_loss", None),
    ("build_prefs", "pairs", None),
    ("train_rm", "val_accuracy", None),
    ("train_rm", "length_baseline_accuracy", None),
    ("ppo", "reward_before", None),
    ("ppo", "reward_after", None),
    ("ppo", "kl", None),
    ("evaluate", "win_rate_vs_sft", None),
    ("evaluate", "win_rate_vs_sft_independent", None),
    ("evaluate", "exact_match", "pretrain"),
    ("evaluate", "exact_match", "sft"),
    ("evaluate", "exact_match", "ppo"),
)


def run_seed(root: Path, seed: int, extra: list[str]) -> tuple[dict[str, dict[str, Any]], float]:
    """Run (or reuse) the tiny pipeline at `seed`; returns each stage's manifest metrics and the wall seconds."""
    seed_root = root / f"seed-{seed}"
    command = [
        sys.executable,
        "-m",
        "zero_chatgpt.cli",
        "run",
        "--preset",
        "tiny",
        "--root",
        str(seed_root),
        "--set",
        f"run.seed={seed}",
        *extra,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    latest = json.loads((seed_root / "latest.json").read_text(encoding="utf-8"))
    metrics = {}
    for stage, entry in latest.items():
        manifest = json.loads((Path(entry["path"]) / "manifest.json").read_text(encoding="utf-8"))
        metrics[stage] = manifest.get("metrics", {})
    return metrics, seconds


def figure(metrics: dict[str, dict[str, Any]], stage: str, key: str, nested: str | None) -> float | None:
    value = metrics.get(stage, {}).get(key)
    if nested is not None:
        value = value.get(nested) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="one sub-root per seed is kept here (cache)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--set", action="append", default=[], help="extra config override for every seed")
    args = parser.parse_args()
    extra = [item for override in args.set for item in ("--set", override)]

    per_seed = {}
    for seed in args.seeds:
        metrics, seconds = run_seed(args.root, seed, extra)
        per_seed[seed] = metrics
        print(f"seed {seed}: {seconds:.0f} s", flush=True)

    summary: dict[str, dict[str, float]] = {}
    header = (
        f"{'metric':<44}" + "".join(f"{'seed ' + str(s):>11}" for s in args.seeds) + f"{'mean':>9}{'min':>9}{'max':>9}"
    )
    print(header)
    for stage, key, nested in FIGURES:
        name = f"{stage}.{key}" + (f".{nested}" if nested else "")
        values = {seed: figure(per_seed[seed], stage, key, nested) for seed in args.seeds}
        known = [v for v in values.values() if v is not None]
        if not known:
            continue
        row = {str(seed): value for seed, value in values.items()}
        row.update(mean=statistics.fmean(known), min=min(known), max=max(known))
        summary[name] = row
        cells = "".join(f"{v:>11.3f}" if v is not None else f"{'-':>11}" for v in values.values())
        print(f"{name:<44}{cells}{row['mean']:>9.3f}{row['min']:>9.3f}{row['max']:>9.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
