"""Resume checkpoints: everything a training run needs to continue exactly where it stopped.

One file, `<checkpoint_dir>/latest.pt`, written to a temporary name and renamed into place, so a process
killed mid-write leaves the previous checkpoint intact. It holds the model, optimizer and scheduler state,
the step, the data position (the batch source's own state) and the python / numpy / torch RNG states.
The final model is not saved here: stages export it with `save_pretrained`.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

LATEST = "latest.pt"


def rng_states() -> dict[str, Any]:
    """The global RNG states that dropout, sampling and data shuffling may draw from, as tensors and plain
    Python values only, so the checkpoint loads with `weights_only=True` (no pickled objects)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what `rng_states` captured (CUDA states only when this machine has the same GPUs)."""
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(checkpoint_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `<checkpoint_dir>/latest.pt` atomically (temporary file, fsync, rename)."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / LATEST
    tmp = checkpoint_dir / f".{LATEST}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def load_checkpoint(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The latest checkpoint in the dir, or None when there is none yet.

    Loaded with `weights_only=True`: a checkpoint holds tensors and plain values only, so a file swapped into the
    run dir cannot execute code when a run resumes.
    """
    path = Path(checkpoint_dir) / LATEST
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file must name itself, not crash obscurely
        raise RuntimeError(f"{path}: cannot read the resume checkpoint ({err}); delete it to start over") from err
