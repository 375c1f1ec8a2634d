"""Reading and writing what model stages leave in their artifact dirs: JSONL side files and the final model.

Every training stage ends the same way (save the weights — gathered from all ranks under ZeRO — and the
tokenizer, then drop the resume checkpoints), and later stages read the earlier ones' JSONL files; both live
here once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the JSONL helpers are read by light modules (zero_chatgpt.stage_files): no torch import
    import torch

    from zero_chatgpt.model.training import Parallel


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept readable); returns the number of rows."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object is an error naming the
    file and line, so a damaged or hand-edited file never passes silently."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def read_jsonl(path: Path, required_str_keys: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSONL file this project wrote; a row whose `required_str_keys` are missing or not strings is
    an error naming the file and line, like a broken line (see `iter_jsonl`)."""
    required = tuple(required_str_keys)
    rows = []
    for number, row in iter_jsonl(path):
        for key in required:
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}:{number}: key {key!r} is missing or not a string")
        rows.append(row)
    return rows


def export_trained_model(
    model: torch.nn.Module,
    tokenizer,
    out_dir: Path,
    checkpoint_dir: Path,
    parallel: Parallel | None,
    is_main_process: bool,
) -> None:
    """Save the final model and tokenizer as a Hugging Face checkpoint, then delete the resume checkpoints.

    With a `parallel` backend every rank must call this (ZeRO weights are gathered across ranks); only the
    main process writes the tokenizer and deletes the checkpoints.
    """
    if parallel is None:
        _name_deepspeeds_accelerator()
        model.save_pretrained(out_dir)
    else:
        parallel.save_pretrained(model, out_dir, checkpoint_dir)
    if is_main_process:
        tokenizer.save_pretrained(out_dir)
        # Optimizer state triples an artifact's size; the final weights were just saved on their own.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _name_deepspeeds_accelerator() -> None:
    """transformers imports DeepSpeed inside `save_pretrained` (to ask about ZeRO-3); on a machine without CUDA
    DeepSpeed's accelerator probe then warns that it fell back to the CPU. Naming the CPU first keeps every save
    quiet, as the launcher does for CPU ranks; a user's own DS_ACCELERATOR is left alone."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and "deepspeed" not in sys.modules and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
