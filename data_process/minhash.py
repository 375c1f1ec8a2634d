"""MinHash signatures and LSH banding: the maths of near-duplicate detection, without any file I/O.

A document becomes a set of shingles (word n-grams, or character n-grams for CJK text, which has no spaces
between words). Every shingle is hashed once to 32 bits with xxh32; the `num_perm` permutations
`h -> a_k * h + b_k (mod 2**32)` (odd `a_k`, so each is a bijection, as datasketch's "affine32" scheme) are then
applied to all shingles of a whole batch of documents at once with numpy, and the minimum per document and
permutation is its signature. Two documents agree in one signature position with probability equal to the
Jaccard similarity of their shingle sets.

LSH: the signature is cut into `bands` bands of `rows` values; documents that agree on a whole band become
candidate pairs, and a candidate pair is kept only when the share of equal signature values (the Jaccard
estimate) reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from xxhash import xxh32_intdigest

from zero_chatgpt.data_process.text_script import cjk_share_of_code_points

ShingleKind = Literal["char", "word"]

# One permutation block holds num_perm x block uint32 values. Measured here (AMD EPYC, 2 MiB L2): 8 MiB
# blocks run twice as fast as 1 MiB ones, as numpy's per-row loop overhead then matters less than the cache.
_PERMUTATION_BLOCK_BYTES = 8 << 20
_EMPTY_SLOT = np.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class MinHashParams:
    """Everything that determines a signature; small and picklable, so it travels inside worker jobs."""

    num_perm: int = 128
    seed: int = 0
    shingle: Literal["auto", "char", "word"] = "auto"
    char_ngram: int = 5
    word_ngram: int = 3
    cjk_char_share: float = 0.3


# --------------------------------------------------------------------------------------------- shingles


def _cjk_share_of_utf32(raw: bytes) -> float:
    """Share of CJK characters among the non-space characters of whitespace-normalised UTF-32-LE text."""
    code_points = np.frombuffer(raw, dtype="<u4")
    return cjk_share_of_code_points(code_points[code_points != 32])


def shingles_with_kind(text: str, params: MinHashParams) -> tuple[list[bytes], ShingleKind]:
    """The shingles of one document as bytes, and which kind was used.

    Word shingles: lower-cased whitespace-separated words joined by one space (UTF-8). Char shingles: runs of
    `char_ngram` characters of the whitespace-normalised text (UTF-32-LE, so a slice never cuts a character).
    A document shorter than one shingle is a single shingle of its whole (normalised) text, so every document
    has at least one shingle and a signature that means something.
    """
    normalised = " ".join(text.split())
    raw = None
    kind: ShingleKind
    if params.shingle != "auto":
        kind = params.shingle
    elif normalised.isascii():  # the common case, decided without looking at code points
        kind = "word"
    else:
        raw = normalised.encode("utf-32-le")
        kind = "char" if _cjk_share_of_utf32(raw) >= params.cjk_char_share else "word"
    if kind == "char":
        raw = raw if raw is not None else normalised.encode("utf-32-le")
        n, length = params.char_ngram, len(normalised)
        if length <= n:
            return [raw], kind
        width = 4 * n
        # A list comprehension over byte slices is the fastest pure-Python shingler measured here.
        return [raw[i : i + width] for i in range(0, 4 * (length - n + 1), 4)], kind
    words = normalised.lower().encode("utf-8").split(b" ")
    n = params.word_ngram
    if len(words) <= n:
        return [b" ".join(words)], kind
    return list(map(b" ".join, zip(*(words[k:] for k in range(n))))), kind


def shingles(text: str, params: MinHashParams) -> list[bytes]:
    """The shingles of one document (see `shingles_with_kind`); duplicates may repeat, sets ignore them."""
    return shingles_with_kind(text, params)[0]


def shingle_hashes(text: str, params: MinHashParams) -> tuple[np.ndarray, ShingleKind]:
    """One xxh32 hash per shingle, shape (num_shingles,) uint32, and the shingle kind used."""
    pieces, kind = shingles_with_kind(text, params)
    return np.fromiter(map(xxh32_intdigest, pieces), dtype=np.uint32, count=len(pieces)), kind


# ------------------------------------------------------------------------------------------- signatures


def permutation_coefficients(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The `a` (odd) and `b` coefficients of the permutations, each of shape (num_perm,) uint32."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def minhash_from_hashes(
    hashes: Sequence[np.ndarray], a: np.ndarray, b: np.ndarray, block: int | None = None
) -> np.ndarray:
    """Signatures of documents given their shingle hashes.

    hashes: one uint32 array of shape (num_shingles_i,) per document, each non-empty.
    a, b: permutation coefficients, shape (num_perm,).
    Returns uint32 of shape (num_docs, num_perm): min over shingles of (a * h + b) mod 2**32.

    All shingles of the batch are laid end to end and processed in blocks of `block` shingles: one
    (num_perm, block) product, then `minimum.reduceat` over each document's slice of the block. Documents that
    span blocks are merged with a running minimum, so no per-document Python work remains.
    """
    num_docs, num_perm = len(hashes), a.shape[0]
    signatures = np.full((num_perm, num_docs), _EMPTY_SLOT, dtype=np.uint32)
    if num_docs == 0:
        return signatures.T.copy()
    lengths = np.fromiter((h.shape[0] for h in hashes), dtype=np.int64, count=num_docs)
    if (lengths == 0).any():
        raise ValueError(f"document {int(np.argmax(lengths == 0))} of the batch has no shingle hashes")
    offsets = np.zeros(num_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(hashes).astype(np.uint32, copy=False)
    block = block or max(64, _PERMUTATION_BLOCK_BYTES // (4 * num_perm))
    buffer = np.empty((num_perm, block), dtype=np.uint32)
    a_column, b_column = a[:, None], b[:, None]
    for start in range(0, flat.shape[0], block):
        stop = min(flat.shape[0], start + block)
        permuted = buffer[:, : stop - start]
        # uint32 arithmetic wraps around: that wrap is the "mod 2**32" of the permutation.
        np.multiply(a_column, flat[None, start:stop], out=permuted)
        permuted += b_column
        first_doc = int(np.searchsorted(offsets, start, side="right")) - 1
        end_doc = int(np.searchsorted(offsets, stop, side="left"))
        segment_starts = np.maximum(offsets[first_doc:end_doc], start) - start
        block_minimum = np.minimum.reduceat(permuted, segment_starts, axis=1)
        target = signatures[:, first_doc:end_doc]
        np.minimum(target, block_minimum, out=target)
    return signatures.T.copy()


def signatures_for_texts(texts: Sequence[str], params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of a batch of documents.

    Returns (signatures uint32 of shape (num_docs, num_perm), char_shingled bool of shape (num_docs,)).
    """
    a, b = permutation_coefficients(params.num_perm, params.seed)
    hashes, char_shingled = [], np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        doc_hashes, kind = shingle_hashes(text, params)
        hashes.append(doc_hashes)
        char_shingled[i] = kind == "char"
    return minhash_from_hashes(hashes, a, b), char_shingled


# ------------------------------------------------------------------------------------------------- LSH


def _s_curve_areas(
    threshold: float, bands: np.ndarray, rows: np.ndarray, grid: int = 401
) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and false-negative areas under the LSH S-curve 1 - (1 - s**rows)**bands."""
    below = np.linspace(0.0, threshold, grid)
    above = np.linspace(threshold, 1.0, grid)
    hit_below = 1.0 - (1.0 - below[None, :] ** rows[:, None]) ** bands[:, None]
    miss_above = (1.0 - above[None, :] ** rows[:, None]) ** bands[:, None]
    return np.trapezoid(hit_below, below, axis=1), np.trapezoid(miss_above, above, axis=1)


def optimal_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false-positive plus false-negative
    areas of the S-curve around `threshold` (the criterion datasketch's MinHashLSH uses)."""
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], dtype=np.float64)
    rows = np.array([p[1] for p in pairs], dtype=np.float64)
    false_positive, false_negative = _s_curve_areas(threshold, bands, rows)
    error = false_positive_weight * false_positive + (1.0 - false_positive_weight) * false_negative
    best = int(np.argmin(error))
    return pairs[best]


def resolve_bands_rows(
    threshold: float, num_perm: int, bands: int | None = None, rows: int | None = None
) -> tuple[int, int]:
    """Bands and rows from the config: derived from the threshold when unset, the missing one filled in."""
    if bands is None and rows is None:
        return optimal_bands_rows(threshold, num_perm)
    if bands is None:
        bands = num_perm // rows
    if rows is None:
        rows = num_perm // bands
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(
            f"dedup.bands ({bands}) x dedup.rows ({rows}) must be at least 1 each and use at most "
            f"dedup.num_perm ({num_perm}) signature values"
        )
    return bands, rows


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """A uint64 key per document for one band, shape (num_docs,).

    Equal bands give equal keys; unequal bands collide only by hash accident, and such a collision only adds a
    candidate pair that the Jaccard check then rejects.
    """
    columns = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.full(signatures.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    for column in columns.T:
        key ^= column
        key *= np.uint64(0x100000001B3)
        key ^= key >> np.uint64(29)
    return key


def _pairs_in_buckets(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, max_bucket: int) -> np.ndarray:
    """All pairs within each bucket of `order[start:start + size]`; buckets larger than `max_bucket` pair each
    member with the bucket's first member only, so one huge bucket cannot produce a quadratic number of pairs."""
    found = []
    for size in np.unique(sizes):
        size = int(size)
        bucket_starts = starts[sizes == size]
        members = order[bucket_starts[:, None] + np.arange(size)[None, :]]  # (num_buckets, size)
        if size <= max_bucket:
            left, right = np.triu_indices(size, k=1)
        else:
            left, right = np.zeros(size - 1, dtype=np.int64), np.arange(1, size)
        found.append(np.stack([members[:, left].ravel(), members[:, right].ravel()], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int, max_bucket: int = 64) -> np.ndarray:
    """Pairs of documents that share at least one band: int64 of shape (num_pairs, 2), i < j, sorted, unique."""
    num_docs = signatures.shape[0]
    found = []
    for band in range(bands):
        keys = band_keys(signatures, band, rows)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts = np.concatenate([[0], boundaries]).astype(np.int64)
        sizes = np.diff(np.concatenate([starts, [num_docs]]))
        shared = sizes > 1
        if shared.any():
            found.append(_pairs_in_buckets(order, starts[shared], sizes[shared], max_bucket))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found).astype(np.int64), axis=1)
    encoded = np.unique(pairs[:, 0] * num_docs + pairs[:, 1])
    return np.stack([encoded // num_docs, encoded % num_docs], axis=1)


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Share of equal signature values of each pair, shape (num_pairs,) float64."""
    estimates = np.empty(pairs.shape[0], dtype=np.float64)
    for start in range(0, pairs.shape[0], chunk):
        part = pairs[start : start + chunk]
        estimates[start : start + chunk] = (signatures[part[:, 0]] == signatures[part[:, 1]]).mean(axis=1)
    return estimates


def near_duplicate_pairs(signatures: np.ndarray, threshold: float, bands: int, rows: int) -> tuple[np.ndarray, int]:
    """Candidate pairs whose estimated Jaccard reaches `threshold`: ((num_pairs, 2) int64, num_candidates)."""
    candidates = candidate_pairs(signatures, bands, rows)
    keep = estimated_jaccard(signatures, candidates) >= threshold
    return candidates[keep], int(candidates.shape[0])
