"""What hashing an artifact's files for its manifest costs: hashed after writing (what `artifacts.list_files`
does) vs hashed while writing (the digest fed from the same buffers the writer writes).

Writes a checkpoint-sized file of random bytes in 8 MB chunks both ways and prints CPU seconds, wall seconds and
the ratio, side by side in one run. The file just written is in the page cache, so the after-write pass reads
memory, not disk.

    python bench/manifest_hashing.py --mb 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import xxhash

from zero_chatgpt.file_hash import hash_file

CHUNK = 8 << 20


def write(path: Path, chunks: list[bytes], digest=None) -> None:
    with open(path, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            if digest is not None:
                digest.update(chunk)
        handle.flush()
        os.fsync(handle.fileno())


def timed(work) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="file size in MB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chunks = [os.urandom(CHUNK) for _ in range(max(1, args.mb * (1 << 20) // CHUNK))]
    results = {"after": [], "while": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.bin"
        for _ in range(args.repeats):
            write_wall, write_cpu = timed(partial(write, path, chunks))
            hash_wall, hash_cpu = timed(partial(hash_file, path))
            results["after"].append((write_wall + hash_wall, write_cpu + hash_cpu, hash_wall))
            path.unlink()
            results["while"].append((*timed(partial(write, path, chunks, xxhash.xxh3_128())), 0.0))
            path.unlink()
    best = {way: min(runs, key=lambda run: run[1]) for way, runs in results.items()}
    size_gb = len(chunks) * CHUNK / 1e9
    for way, (wall, cpu, _) in best.items():
        print(f"hash {way:<5} writing: {wall:6.2f} s wall {cpu:6.2f} s CPU for {size_gb:.2f} GB")
    print(f"hashing after writing adds {best['after'][2]:.2f} s ({size_gb / max(best['after'][2], 1e-9):.1f} GB/s)")
    summary = {
        "gb": round(size_gb, 3),
        "after_cpu_s": round(best["after"][1], 3),
        "while_cpu_s": round(best["while"][1], 3),
        "cpu_ratio_after_over_while": round(best["after"][1] / max(best["while"][1], 1e-9), 3),
        "wall_ratio_after_over_while": round(best["after"][0] / max(best["while"][0], 1e-9), 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
