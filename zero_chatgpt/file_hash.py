"""Content hashes of files, fast enough for model weights and corpora, and remembered while a file is unchanged.

xxh3-128 reads at several GB/s (far faster than sha256), and these hashes detect change, not tampering. A file is
hashed once per (path, size, mtime): the cache, a small JSON file, keeps that so a 10 GB base model or corpus is
not read again on every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import xxhash

_CHUNK_BYTES = 8 << 20


def hash_file(path: str | Path) -> str:
    """Hex xxh3-128 of the file's bytes."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class FileHashCache:
    """`hash(path)` that reuses a stored hash while the file's size and mtime are those it was hashed at.

    `save()` writes the cache atomically; without a cache path it only remembers within the process.
    """

    def __init__(self, cache_path: str | Path | None = None) -> None:
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.entries: dict[str, dict[str, int | str]] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            try:
                self.entries = json.loads(self.cache_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.entries = {}  # a damaged cache only costs rehashing
        self.changed = False

    def hash(self, path: str | Path) -> str:
        resolved = str(Path(path).resolve())
        stat = os.stat(resolved)
        entry = self.entries.get(resolved)
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return str(entry["hash"])
        digest = hash_file(resolved)
        self.entries[resolved] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": digest}
        self.changed = True
        return digest

    def save(self) -> None:
        if self.cache_path is None or not self.changed:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.entries, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.cache_path)
        self.changed = False
