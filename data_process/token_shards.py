"""The token-shard format: the boundary between the data half and the model half.

A shard dir holds `train_00000.bin`, `train_00001.bin`, ... and `val_00000.bin`, ...: flat little-endian
arrays of token ids, every document followed by the EOS id, plus `meta.json`:

    {"dtype": "uint16" | "uint32", "vocab_size": int, "eos_id": int,
     "train_tokens": int, "val_tokens": int,
     "files": {"train": [{"file": "train_00000.bin", "tokens": int}, ...], "val": [...]}}

Read them back only through `TokenShards`, which takes the dtype from `meta.json` (uint16 ids above 32767
must never come back negative) and spans every shard of a split, not only the first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

META = "meta.json"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays to `<split>_XXXXX.bin` files, starting a new file past `tokens_per_shard`."""

    def __init__(self, out_dir: str | Path, split: str, dtype: np.dtype, tokens_per_shard: int) -> None:
        self.out_dir = Path(out_dir)
        self.split = split
        self.dtype = np.dtype(dtype)
        self.tokens_per_shard = tokens_per_shard
        self.files: list[dict[str, Any]] = []
        self._handle = None
        self._in_current = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append one or more whole documents (already EOS-terminated); a document never spans two files."""
        if tokens.size == 0:
            return
        limit = np.iinfo(self.dtype).max
        if int(tokens.max()) > limit or int(tokens.min()) < 0:
            raise ValueError(f"token id out of range for {self.dtype}: {int(tokens.min())}..{int(tokens.max())}")
        if self._handle is None or self._in_current >= self.tokens_per_shard:
            self._open_next()
        self._handle.write(np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<")).tobytes())
        self._in_current += int(tokens.size)
        self.files[-1]["tokens"] = self._in_current

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        name = f"{self.split}_{len(self.files):05d}.bin"
        self._handle = open(self.out_dir / name, "wb")
        self._in_current = 0
        self.files.append({"file": name, "tokens": 0})

    def close(self) -> list[dict[str, Any]]:
        """Finish the last file; returns `[{"file", "tokens"}]` for `meta.json`."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        return self.files


def write_meta(
    out_dir: str | Path,
    dtype: np.dtype,
    vocab_size: int,
    eos_id: int,
    files: dict[str, list[dict[str, Any]]],
    **extra: Any,
) -> dict[str, Any]:
    """Write `meta.json` for a shard dir and return it."""
    meta = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": int(vocab_size),
        "eos_id": int(eos_id),
        "train_tokens": sum(f["tokens"] for f in files.get("train", [])),
        "val_tokens": sum(f["tokens"] for f in files.get("val", [])),
        "files": files,
        **extra,
    }
    (Path(out_dir) / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


class TokenShards:
    """All shards of one split as one long token sequence, memory-mapped.

    `tokens(start, length) -> np.ndarray[int64] (length,)` reads across file boundaries;
    `sample_windows(rng, batch_size, window) -> np.ndarray[int64] (batch_size, window)` draws random windows
    (pretraining uses `window = seq_len + 1` so inputs and shifted targets come from one read).
    """

    def __init__(self, shard_dir: str | Path, split: str = "train") -> None:
        self.dir = Path(shard_dir)
        meta_path = self.dir / META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {self.dir} is not a token-shard dir")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        self.vocab_size = int(self.meta["vocab_size"])
        self.eos_id = int(self.meta["eos_id"])
        entries = self.meta["files"].get(split, [])
        if not entries:
            raise ValueError(f"{meta_path}: no '{split}' shards listed")
        self.arrays = [np.memmap(self.dir / e["file"], dtype=self.dtype, mode="r") for e in entries]
        for entry, array in zip(entries, self.arrays):
            if array.size != entry["tokens"]:
                raise ValueError(
                    f"{self.dir / entry['file']}: {array.size} tokens on disk, meta.json says {entry['tokens']}"
                )
        self.offsets = np.cumsum([0] + [a.size for a in self.arrays])
        self.num_tokens = int(self.offsets[-1])

    def __len__(self) -> int:
        return self.num_tokens

    def tokens(self, start: int, length: int) -> np.ndarray:
        """Tokens `[start, start + length)` of the split as int64, read across shard files."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside 0..{self.num_tokens}")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.offsets, start, side="right") - 1)
        position = start - int(self.offsets[shard])
        while filled < length:
            chunk = self.arrays[shard][position : position + (length - filled)]
            out[filled : filled + chunk.size] = chunk
            filled += chunk.size
            shard += 1
            position = 0
        return out

    def sample_windows(self, rng: np.random.Generator, batch_size: int, window: int) -> np.ndarray:
        """`batch_size` random windows of `window` tokens, shape (batch_size, window), int64."""
        if self.num_tokens < window:
            raise ValueError(f"{self.dir}: only {self.num_tokens} tokens, fewer than one window of {window}")
        starts = rng.integers(0, self.num_tokens - window + 1, size=batch_size)
        return np.stack([self.tokens(int(s), window) for s in starts])

    def iter_windows(self, window: int, stride: int | None = None):
        """Consecutive windows over the whole split (evaluation), each shape (window,)."""
        stride = stride or window
        for start in range(0, self.num_tokens - window + 1, stride):
            yield self.tokens(start, window)
