"""Training-step throughput: the pipeline's training core vs a plain minimal PyTorch loop, side by side.

Both train the same model on the same batches (random token windows: speed does not depend on the text).
Repeats interleave core and plain runs so drift in machine load hits both alike; medians are reported.
Each timed run is wall-clock around the whole call, so the core's setup (optimizer, scheduler, metrics
file) and its per-step extras (schedule, clipping, logging, loss sync) are all paid for.

    PYTHONPATH=. python bench/train.py --quick

The last line printed is one JSON object: {"vs_plain_loop", "core_tokens_per_s", "plain_tokens_per_s", ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zero_chatgpt.config import ModelConfig, OptimConfig  # noqa: E402
from zero_chatgpt.model.build import build_model, count_parameters, resolve_device  # noqa: E402
from zero_chatgpt.model.losses import causal_lm_window_loss  # noqa: E402
from zero_chatgpt.model.training import train  # noqa: E402


def plain_loop(model: torch.nn.Module, batches: list[torch.Tensor], lr: float) -> None:
    """The reference: forward, loss, backward, AdamW step, nothing else."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for windows in batches:
        logits = model(input_ids=windows[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def core_loop(
    model: torch.nn.Module, batches: list[torch.Tensor], optim: OptimConfig, device: torch.device, metrics_path: Path
) -> None:
    """The pipeline's `train` with the stage's loss, writing its metrics file as pretrain does."""
    train(model, iter(batches), causal_lm_window_loss, optim, device=device, metrics_path=metrics_path, log_every=10**9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps and repeats (a few minutes on 2 cores)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side")
    parser.add_argument("--vocab-size", type=int, default=6000)
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--num-heads", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.threads:
        torch.set_num_threads(args.threads)
    # Short runs, many repeats: on a shared machine the median of many short runs is the stable figure.
    steps = args.steps or (4 if args.quick else 20)
    repeats = args.repeats or (7 if args.quick else 9)
    model_overrides = {
        key: value
        for key, value in {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "max_seq_len": args.max_seq_len,
        }.items()
        if value is not None
    }
    model_cfg = ModelConfig(**model_overrides)
    optim = OptimConfig(
        max_steps=steps,
        warmup_steps=min(2, steps),
        eval_every=10**9,
        checkpoint_every=10**9,
        **({"batch_size": args.batch_size} if args.batch_size else {}),
    )
    device = resolve_device(args.device)

    torch.manual_seed(0)
    batches = [
        torch.randint(0, args.vocab_size, (optim.batch_size, model_cfg.max_seq_len + 1)).to(device)
        for _ in range(steps)
    ]
    tokens_per_run = steps * optim.batch_size * model_cfg.max_seq_len
    model = build_model(model_cfg, args.vocab_size).to(device)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}

    def timed(run) -> float:
        model.load_state_dict(initial_state)  # same starting point for every run
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return tokens_per_run / (time.perf_counter() - started)

    core_rates, plain_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        metrics_path = Path(tmp) / "metrics.jsonl"
        run_core = lambda: core_loop(model, batches, optim, device, metrics_path)  # noqa: E731
        run_plain = lambda: plain_loop(model, batches, optim.lr)  # noqa: E731
        run_plain()  # warm-up: allocator, kernels, lazy imports
        run_core()
        for repeat in range(repeats):
            # Alternate which side goes first so neither always runs on a warmer machine.
            order = [(run_core, core_rates), (run_plain, plain_rates)]
            for run, rates in order if repeat % 2 == 0 else order[::-1]:
                rates.append(timed(run))

    core, plain = statistics.median(core_rates), statistics.median(plain_rates)
    result = {
        "vs_plain_loop": round(core / plain, 4),
        "core_tokens_per_s": round(core, 1),
        "plain_tokens_per_s": round(plain, 1),
        "params": count_parameters(model),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "repeats": repeats,
        "batch_size": optim.batch_size,
        "max_seq_len": model_cfg.max_seq_len,
        "hidden_size": model_cfg.hidden_size,
        "num_layers": model_cfg.num_layers,
        "vocab_size": args.vocab_size,
    }
    print(f"{'loop':<8}{'median tokens/s':>18}{'runs':>44}")
    for name, rates in (("core", core_rates), ("plain", plain_rates)):
        print(f"{name:<8}{statistics.median(rates):>18.0f}    " + " ".join(f"{r:8.0f}" for r in rates))
    print(
        f"core / plain = {result['vs_plain_loop']:.3f} ({result['params']:,} params, {steps} steps x "
        f"{optim.batch_size} x {model_cfg.max_seq_len} tokens, {torch.get_num_threads()} threads)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
