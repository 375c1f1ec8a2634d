"""Benchmark: tokens per second of the `shard` stage against a per-document `tokenizer.encode` loop.

Same text, same process, best of `--repeats` runs each:
  shard path   `shard_corpus` with a process pool of `--workers` (reads parquet, batched encode, writes shards)
  hf loop      `AutoTokenizer.from_pretrained(dir).encode(doc)` for each document (the naive way)
  sp loop      `sentencepiece.encode(doc)` for each document (the fastest per-document loop we know of)

`vs_loop` = shard path / hf loop; `vs_sp_loop` = shard path / sp loop. Text: /work/shared/data/*pretrain.jsonl
when present, else a generated corpus. The tokenizer is trained here (small vocab).

    PYTHONPATH=. python bench/shard.py --quick

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sentencepiece as spm  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from zero_chatgpt.config import ShardConfig, TrainTokenizerConfig  # noqa: E402
from zero_chatgpt.data_process.shard import shard_corpus  # noqa: E402
from zero_chatgpt.parallel import process_pool_map  # noqa: E402
from zero_chatgpt.tokenizer.files import SP_MODEL_FILE  # noqa: E402
from zero_chatgpt.tokenizer.toy_corpus import toy_documents, write_corpus_parts  # noqa: E402
from zero_chatgpt.tokenizer.train import train_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_documents(copies: int) -> tuple[list[str], str]:
    """Benchmark text: the shared pretraining files (repeated `copies` times) or a generated corpus."""
    files = sorted(SHARED_DATA.glob("*pretrain.jsonl"))
    if files:
        docs = [json.loads(line)["text"] for path in files for line in path.open(encoding="utf-8")]
        source = ", ".join(path.name for path in files)
    else:
        docs = toy_documents(6000, seed=0)
        source = "generated toy corpus"
    return docs * copies, source


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_seconds(run, repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest of `repeats` calls of `run()`: less noise from other work."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        cpu_before, started = _cpu_seconds(), time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - started, _cpu_seconds() - cpu_before))
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one copy of the text (well under a minute)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the shard path")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--docs-per-batch", type=int, default=500)
    parser.add_argument("--chars-per-batch", type=int, default=100_000)
    args = parser.parse_args(argv)
    copies, repeats = (1, 3) if args.quick else (4, 3)
    logging.basicConfig(level=logging.WARNING)

    docs, source = load_documents(copies)
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        tmp_dir = Path(tmp)
        write_corpus_parts(docs, tmp_dir / "dedup", docs_per_part=2000)
        train_tokenizer(
            TrainTokenizerConfig(vocab_size=args.vocab_size, max_sample_chars=2_000_000),
            tmp_dir / "dedup",
            tmp_dir / "tokenizer",
            seed=0,
        )

        config = ShardConfig(docs_per_batch=args.docs_per_batch, chars_per_batch=args.chars_per_batch)
        metrics: dict = {}

        def run_shard() -> None:
            metrics.update(
                shard_corpus(
                    config,
                    tmp_dir / "dedup",
                    tmp_dir / "tokenizer",
                    tmp_dir / "shards",
                    seed=0,
                    parallel_map=process_pool_map(args.workers),
                )
            )

        hf = AutoTokenizer.from_pretrained(tmp_dir / "tokenizer")
        sp = spm.SentencePieceProcessor(model_file=str(tmp_dir / "tokenizer" / SP_MODEL_FILE))
        load_before = os.getloadavg()[0]
        shard_s, shard_cpu = best_seconds(run_shard, repeats)
        hf_loop_s, hf_loop_cpu = best_seconds(lambda: [hf.encode(d) for d in docs], repeats)
        sp_loop_s, sp_loop_cpu = best_seconds(lambda: [sp.encode(d) for d in docs], repeats)

        tokens = metrics["train_tokens"] + metrics["val_tokens"]
        loop_tokens = sum(len(sp.encode(d)) + 1 for d in docs if d)  # + EOS, as in the shards
        if loop_tokens != tokens:
            raise RuntimeError(f"shard path wrote {tokens} tokens, the loop made {loop_tokens}")

    result = {
        "text": source,
        "docs": len(docs),
        "chars": sum(map(len, docs)),
        "tokens": tokens,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "shard_tokens_per_s": round(tokens / shard_s),
        "hf_loop_tokens_per_s": round(tokens / hf_loop_s),
        "sp_loop_tokens_per_s": round(tokens / sp_loop_s),
        "vs_loop": round(hf_loop_s / shard_s, 3),
        "vs_sp_loop": round(sp_loop_s / shard_s, 3),
        # CPU seconds (all processes): what the work costs, whatever else the machine is doing.
        "shard_cpu_s": round(shard_cpu, 3),
        "hf_loop_cpu_s": round(hf_loop_cpu, 3),
        "sp_loop_cpu_s": round(sp_loop_cpu, 3),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    rows = [
        (f"shard path (parquet -> .bin, {args.workers} workers)", shard_s, shard_cpu),
        ("hf AutoTokenizer.encode loop", hf_loop_s, hf_loop_cpu),
        ("sentencepiece encode loop", sp_loop_s, sp_loop_cpu),
    ]
    print(
        f"\n{len(docs)} docs, {result['chars']:,} chars, {tokens:,} tokens ({source}); best of {repeats}; "
        f"load average {load_before:.2f} on {os.cpu_count()} cores"
    )
    print(f"{'path':45s} {'wall s':>8s} {'cpu s':>8s} {'tokens/s':>14s}")
    for name, seconds, cpu in rows:
        print(f"{name:45s} {seconds:8.3f} {cpu:8.3f} {tokens / seconds:14,.0f}")
    print(f"vs_loop (shard / hf loop) = {result['vs_loop']:.2f}   vs_sp_loop = {result['vs_sp_loop']:.2f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
