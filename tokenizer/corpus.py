"""Reading the dedup artifact (`part_*.parquet` with columns `id`, `text`, `source`) for the token stages.

Documents are ordered and split by a seeded hash of their id, not by their position: the order is the same
whatever the number or order of input shards, and a document keeps its split when others are added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zero_chatgpt.data_process.text_script import cjk_share

REQUIRED_COLUMNS = ("id", "text")


def corpus_parts(corpus_dir: str | Path) -> list[Path]:
    """The sorted `part_*.parquet` files of a corpus dir; a clear error when there are none."""
    parts = sorted(Path(corpus_dir).glob("part_*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{corpus_dir}: no part_*.parquet files (expected the dedup stage's output)")
    return parts


def check_columns(path: Path, columns: Iterable[str] = REQUIRED_COLUMNS) -> None:
    """A clear error naming the file when a parquet part lacks one of `columns`."""
    schema_names = pq.read_schema(path).names
    missing = [c for c in columns if c not in schema_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {schema_names}")


def read_checked_table(path: Path, columns: Iterable[str] = REQUIRED_COLUMNS) -> pa.Table:
    """Columns of one parquet part; names the file (and row) of a missing column or a null value."""
    columns = list(columns)
    check_columns(path, columns)
    table = pq.read_table(path, columns=columns)
    for name in columns:
        column = table.column(name)
        if column.null_count:
            first = column.is_null().to_pylist().index(True)
            raise ValueError(f"{path}: {column.null_count} row(s) with a null `{name}`, the first is row {first}")
    return table


def read_part(path: Path, columns: Iterable[str] = REQUIRED_COLUMNS) -> dict[str, list]:
    """Columns of one parquet part as Python lists, checked like `read_checked_table`."""
    table = read_checked_table(path, columns)
    return {name: table.column(name).to_pylist() for name in table.column_names}


def doc_hash_keys(seed: int, doc_ids: Iterable[object]) -> np.ndarray:
    """A seeded 64-bit hash of each document id, shape (num_docs,) uint64: the seeded shuffle order.

    Divided by 2**64 it is a uniform number in [0, 1) per document, used to draw the validation split.
    """
    prefix = f"{seed}\x00".encode()
    keys = [
        int.from_bytes(hashlib.blake2b(prefix + str(i).encode("utf-8"), digest_size=8).digest(), "little")
        for i in doc_ids
    ]
    return np.asarray(keys, dtype=np.uint64)


def hash_key_to_unit(keys: np.ndarray) -> np.ndarray:
    """uint64 hash keys -> floats in [0, 1), shape unchanged."""
    return (keys >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def is_chinese(text: str, threshold: float = 0.3) -> bool:
    """A document counts as Chinese when at least `threshold` of its visible characters are CJK."""
    return cjk_share(text) >= threshold
