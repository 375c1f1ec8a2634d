"""MinHash signatures, LSH banding and connected components: the maths of near-duplicate detection, no file I/O.

Shingles. A document is whitespace-normalised and cut into shingles: runs of `char_ngram` characters, or of
`word_ngram` lower-cased words. Hashing them costs no Python call per shingle: the tokens of a whole batch of
documents (code points, or one xxh3 hash per word) lie end to end in one uint64 array, with `n - 1` zeros after
each document, and the hash of the shingle starting at position p is

    mix(sum_k token[p + k] * m_k  mod 2**64)

with random odd multipliers m_k drawn from the seed and the splitmix64 finaliser as `mix`. numpy computes it for
every position of the batch in a handful of passes; the zeros keep shingles inside their document, and a
document shorter than one shingle becomes one shingle of its whole text.

Signatures: one-permutation hashing. Classic MinHash hashes every shingle `num_perm` times; here each shingle
hash is used once: its high 32 bits pick one of `num_perm` bins, its low 32 bits are the value, and each bin keeps
its minimum. Two documents agree in a bin with probability equal to the Jaccard similarity of their shingle sets.
A document with few shingles leaves bins empty: an empty bin copies the first non-empty bin along its own fixed
random probe sequence (optimal densification, Shrivastava 2017), the same sequence for every document, which
keeps that probability equal to the Jaccard similarity.

LSH: the signature is cut into `bands` bands of `rows` values; documents that agree on a whole band become
candidate pairs, and a candidate pair is kept only when the share of equal signature values (the Jaccard
estimate) reaches the threshold. Kept pairs are joined into clusters by a union-find over numpy arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from xxhash import xxh3_64_intdigest

from zero_chatgpt.data_process.text_script import cjk_share_of_code_points

ShingleKind = Literal["char", "word"]

EMPTY_BIN = np.uint32(0xFFFFFFFF)
# Tokens hashed per numpy pass: each uint64 temporary is then 8 MiB, so a batch of long documents neither
# spills out of the cache more than it must nor holds gigabytes at once.
_TOKENS_PER_CHUNK = 1 << 20
# Probe rounds for empty bins before falling back to the first filled bin: a document with a tenth of its bins
# filled resolves all of them within ~150 rounds; only documents of a handful of shingles reach the fallback.
_PROBE_ROUNDS_PER_BIN = 4
_SPLITMIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class MinHashParams:
    """Everything that determines a signature; small and picklable, so it travels inside worker jobs."""

    num_perm: int = 128
    seed: int = 0
    shingle: Literal["auto", "char", "word"] = "char"
    char_ngram: int = 5
    word_ngram: int = 3
    cjk_char_share: float = 0.3


# --------------------------------------------------------------------------------------------- shingles


def normalise(text: str) -> str:
    """Whitespace runs become one space and the ends are stripped, so layout changes are not differences."""
    return " ".join(text.split())


def shingle_kind(normalised: str, params: MinHashParams) -> ShingleKind:
    """Char or word shingles for one normalised document; `auto` picks chars for mostly-CJK text."""
    if params.shingle != "auto":
        return params.shingle
    if normalised.isascii():  # the common case, decided without looking at code points
        return "word"
    code_points = np.frombuffer(normalised.replace(" ", "").encode("utf-32-le"), dtype="<u4")
    return "char" if cjk_share_of_code_points(code_points) >= params.cjk_char_share else "word"


def shingles_with_kind(text: str, params: MinHashParams) -> tuple[list[str], ShingleKind]:
    """The shingles of one document as strings, and which kind was used: the readable reference of what
    `shingle_hashes` hashes (tests and exact Jaccard use it; the signature path never builds these strings).

    Char shingles: runs of `char_ngram` characters of the normalised text. Word shingles: runs of `word_ngram`
    lower-cased words joined by one space. A document shorter than one shingle is one shingle of its whole text.
    """
    normalised = normalise(text)
    kind = shingle_kind(normalised, params)
    if kind == "char":
        n = params.char_ngram
        if len(normalised) <= n:
            return [normalised], kind
        return [normalised[i : i + n] for i in range(len(normalised) - n + 1)], kind
    words, n = normalised.lower().split(" "), params.word_ngram
    if len(words) <= n:
        return [" ".join(words)], kind
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)], kind


def shingles(text: str, params: MinHashParams) -> list[str]:
    """The shingles of one document (see `shingles_with_kind`); duplicates may repeat, sets ignore them."""
    return shingles_with_kind(text, params)[0]


def shingle_multipliers(params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """The odd multipliers m_k of char and of word shingles, shapes (char_ngram,) and (word_ngram,) uint64."""
    rng = np.random.default_rng([params.seed, 0x5EED])
    char_m = rng.integers(0, 1 << 63, size=params.char_ngram, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    word_m = rng.integers(0, 1 << 63, size=params.word_ngram, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return char_m, word_m


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every input bit reaches every output bit (uint64 arrays)."""
    values ^= values >> np.uint64(30)
    values *= _SPLITMIX_1
    values ^= values >> np.uint64(27)
    values *= _SPLITMIX_2
    values ^= values >> np.uint64(31)
    return values


def _window_hashes(tokens: np.ndarray, lengths: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """Hashes of every shingle of documents laid end to end.

    tokens: uint64, each document's `lengths[i]` tokens followed by `n - 1` zeros (n = len(multipliers)).
    Returns uint64 of shape (sum of max(length - n + 1, 1),): each document's shingles in order.
    """
    n = multipliers.shape[0]
    positions = tokens.shape[0] - n + 1
    hashes = tokens[:positions] * multipliers[0]
    for k in range(1, n):
        hashes += tokens[k : k + positions] * multipliers[k]  # uint64 wraps: the "mod 2**64"
    _mix(hashes)
    # Shingles start at the first max(length - n + 1, 1) positions of each document's segment.
    segment_starts = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1] + (n - 1), out=segment_starts[1:])
    windows = np.maximum(lengths - n + 1, 1)
    starts_and_stops = np.zeros(positions + 1, dtype=np.int8)
    np.add.at(starts_and_stops, segment_starts, 1)
    np.add.at(starts_and_stops, segment_starts + windows, -1)
    return hashes[np.cumsum(starts_and_stops[:positions], dtype=np.int8).astype(bool)]


def _char_tokens(normalised: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Code points of the documents, each followed by n - 1 zeros: (tokens uint64, lengths int64)."""
    padding = "\0" * (n - 1)
    # An empty document is one zero token, so its single shingle stays inside its own segment.
    normalised = [text or "\0" for text in normalised]
    joined = padding.join(normalised) + padding
    tokens = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    return tokens, np.fromiter(map(len, normalised), dtype=np.int64, count=len(normalised))


def _word_tokens(normalised: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """One xxh3 hash per lower-cased word, each document followed by n - 1 zeros: (tokens, lengths)."""
    words_per_doc = [text.lower().encode("utf-8").split(b" ") for text in normalised]
    lengths = np.fromiter(map(len, words_per_doc), dtype=np.int64, count=len(words_per_doc))
    tokens = np.zeros(int(lengths.sum()) + (n - 1) * len(words_per_doc), dtype=np.uint64)
    segment_starts = np.zeros(len(words_per_doc), dtype=np.int64)
    np.cumsum(lengths[:-1] + (n - 1), out=segment_starts[1:])
    word_positions = np.arange(int(lengths.sum())) + np.repeat(segment_starts - np.cumsum(lengths) + lengths, lengths)
    all_words = [word for words in words_per_doc for word in words]
    tokens[word_positions] = np.fromiter(map(xxh3_64_intdigest, all_words), dtype=np.uint64, count=len(all_words))
    return tokens, lengths


@dataclass
class ShingleHashes:
    """The shingle hashes of a batch of n documents, laid end to end."""

    hashes: np.ndarray  # (num_shingles,) uint64
    offsets: np.ndarray  # (n + 1,) int64: document i's hashes are hashes[offsets[i]:offsets[i + 1]]
    char_shingled: np.ndarray  # (n,) bool: char n-grams were used (else word n-grams)


def shingle_hashes(texts: Sequence[str], params: MinHashParams) -> ShingleHashes:
    """The 64-bit hash of every shingle of every document of a batch (see the module docstring)."""
    normalised = [normalise(text) for text in texts]
    char_shingled = np.fromiter((shingle_kind(t, params) == "char" for t in normalised), dtype=bool, count=len(texts))
    char_m, word_m = shingle_multipliers(params)
    counts = np.zeros(len(texts), dtype=np.int64)
    parts = []
    for is_char, multipliers, tokenise in ((True, char_m, _char_tokens), (False, word_m, _word_tokens)):
        members = np.flatnonzero(char_shingled == is_char)
        if members.size:
            tokens, lengths = tokenise([normalised[i] for i in members], multipliers.shape[0])
            parts.append((members, _window_hashes(tokens, lengths, multipliers)))
            counts[members] = np.maximum(lengths - multipliers.shape[0] + 1, 1)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if len(parts) == 1:
        return ShingleHashes(parts[0][1], offsets, char_shingled)
    hashes = np.empty(int(offsets[-1]), dtype=np.uint64)
    for members, part in parts:  # a mixed batch: scatter each kind's hashes back into document order
        member_counts = counts[members]
        member_offsets = np.cumsum(member_counts) - member_counts
        hashes[np.arange(part.shape[0]) + np.repeat(offsets[members] - member_offsets, member_counts)] = part
    return ShingleHashes(hashes, offsets, char_shingled)


# ------------------------------------------------------------------------------------------- signatures


@functools.lru_cache(maxsize=4)
def densification_probes(num_perm: int, seed: int) -> np.ndarray:
    """The fixed probe sequence of every bin, shape (num_perm, rounds) int64 of bin indices (read-only)."""
    rng = np.random.default_rng([seed, 0xD3E5])
    probes = rng.integers(0, num_perm, size=(num_perm, _PROBE_ROUNDS_PER_BIN * num_perm), dtype=np.int64)
    probes.flags.writeable = False
    return probes


def densify(signatures: np.ndarray, probes: np.ndarray) -> None:
    """Fill the empty bins of (num_docs, num_perm) uint32 signatures in place (see the module docstring).

    Each document needs at least one filled bin. Bins still empty after every probe round take the value of
    the document's first filled bin, so the result never depends on anything but the document itself.
    """
    filled = signatures != EMPTY_BIN
    empty_doc, empty_bin = np.nonzero(~filled)
    for round_ in range(probes.shape[1]):
        if empty_doc.size == 0:
            return
        source = probes[empty_bin, round_]
        hit = filled[empty_doc, source]
        signatures[empty_doc[hit], empty_bin[hit]] = signatures[empty_doc[hit], source[hit]]
        empty_doc, empty_bin = empty_doc[~hit], empty_bin[~hit]
    first_filled = np.argmax(filled, axis=1)
    signatures[empty_doc, empty_bin] = signatures[empty_doc, first_filled[empty_doc]]


def one_permutation_signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Signatures of documents from their shingle hashes: uint32 of shape (num_docs, num_perm).

    hashes: uint64, all documents' shingle hashes end to end; offsets: (num_docs + 1,) int64, every document
    with at least one hash. Bin = high 32 bits scaled to [0, num_perm), value = low 32 bits, minimum per bin.
    """
    num_docs = offsets.shape[0] - 1
    counts = np.diff(offsets)
    if num_docs and (counts <= 0).any():
        raise ValueError(f"document {int(np.argmax(counts <= 0))} of the batch has no shingle hashes")
    doc = np.repeat(np.arange(num_docs, dtype=np.int64), counts)
    bins = ((hashes >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)
    slot = doc * num_perm + bins.astype(np.int64)
    signatures = np.full(num_docs * num_perm, EMPTY_BIN, dtype=np.uint32)
    np.minimum.at(signatures, slot, hashes.astype(np.uint32))  # astype keeps the low 32 bits
    signatures = signatures.reshape(num_docs, num_perm)
    densify(signatures, densification_probes(num_perm, seed))
    return signatures


def _chunks_of_tokens(texts: Sequence[str], limit: int) -> Iterable[slice]:
    """Consecutive slices of `texts` holding about `limit` characters each (a longer document goes alone)."""
    start, size = 0, 0
    for index, text in enumerate(texts):
        if size and size + len(text) > limit:
            yield slice(start, index)
            start, size = index, 0
        size += len(text)
    if start < len(texts):
        yield slice(start, len(texts))


def signatures_for_texts(texts: Sequence[str], params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of a batch of documents.

    Returns (signatures uint32 of shape (num_docs, num_perm), char_shingled bool of shape (num_docs,)).
    """
    signatures = np.empty((len(texts), params.num_perm), dtype=np.uint32)
    char_shingled = np.empty(len(texts), dtype=bool)
    for chunk in _chunks_of_tokens(texts, _TOKENS_PER_CHUNK):
        batch = shingle_hashes(texts[chunk], params)
        signatures[chunk] = one_permutation_signatures(batch.hashes, batch.offsets, params.num_perm, params.seed)
        char_shingled[chunk] = batch.char_shingled
    return signatures, char_shingled


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


def optimal_bands_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.1) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false-positive plus false-negative
    areas of the S-curve around `threshold` (the criterion of datasketch's MinHashLSH).

    False negatives weigh nine times more than false positives: every candidate pair is checked against the
    threshold afterwards, so a false positive costs one signature comparison, while a missed pair is lost. At
    threshold 0.8 and 128 values this gives 14 x 9 (pairs at Jaccard 0.9 become candidates 99.9% of the time)
    where equal weights give 9 x 13 (92.9%).
    """
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


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per band and document, shape (bands, num_docs).

    Equal bands give equal keys; unequal bands collide only by hash accident, and such a collision only adds a
    candidate pair that the Jaccard check then rejects.
    """
    keys = np.full((bands, signatures.shape[0]), 0xCBF29CE484222325, dtype=np.uint64)
    for band in range(bands):
        key = keys[band]
        for column in range(band * rows, (band + 1) * rows):
            key ^= signatures[:, column]
            key *= np.uint64(0x100000001B3)
            key ^= key >> np.uint64(29)
    return keys


def _pairs_in_buckets(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray, max_bucket: int) -> np.ndarray:
    """All pairs within each bucket of `order[start:start + size]`; buckets larger than `max_bucket` pair each
    member with the bucket's first member only, so one huge bucket cannot produce a quadratic number of pairs."""
    found = []
    for size in np.unique(sizes):
        size = int(size)
        bucket_starts = starts[sizes == size]
        if size <= max_bucket:
            left, right = np.triu_indices(size, k=1)
            members = order[bucket_starts[:, None] + np.arange(size)[None, :]]  # (num_buckets, size)
            found.append(np.stack([members[:, left].ravel(), members[:, right].ravel()], axis=1))
        else:
            for start in bucket_starts.tolist():
                members = order[start : start + size]
                found.append(np.stack([np.full(size - 1, members[0]), members[1:]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def bucket_pairs(keys: np.ndarray, max_bucket: int = 64) -> np.ndarray:
    """Pairs of documents with equal keys in one band: int64 of shape (num_pairs, 2), unordered, may repeat."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    sizes = np.diff(np.append(starts, keys.shape[0]))
    shared = sizes > 1
    if not shared.any():
        return np.empty((0, 2), dtype=np.int64)
    return _pairs_in_buckets(order, starts[shared], sizes[shared], max_bucket)


def unique_pairs(pairs: Iterable[np.ndarray], num_docs: int) -> np.ndarray:
    """Pairs as int64 of shape (num_pairs, 2) with i < j, sorted and without repeats."""
    pairs = [part for part in pairs if part.shape[0]]
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    ordered = np.sort(np.concatenate(pairs).astype(np.int64), axis=1)
    encoded = np.unique(ordered[:, 0] * num_docs + ordered[:, 1])
    return np.stack([encoded // num_docs, encoded % num_docs], axis=1)


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int, max_bucket: int = 64) -> np.ndarray:
    """Pairs of documents that share at least one band: int64 of shape (num_pairs, 2), i < j, sorted, unique."""
    keys = band_keys(signatures, bands, rows)
    return unique_pairs((bucket_pairs(band, max_bucket) for band in keys), signatures.shape[0])


def estimated_jaccard(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Share of equal values of two stacks of signatures, each (num_pairs, num_perm): shape (num_pairs,)."""
    return np.count_nonzero(first == second, axis=1) / first.shape[1]


def near_duplicate_pairs(signatures: np.ndarray, threshold: float, bands: int, rows: int) -> tuple[np.ndarray, int]:
    """Candidate pairs whose estimated Jaccard reaches `threshold`: ((num_pairs, 2) int64, num_candidates)."""
    candidates = candidate_pairs(signatures, bands, rows)
    keep = np.zeros(candidates.shape[0], dtype=bool)
    for start in range(0, candidates.shape[0], 65536):
        part = candidates[start : start + 65536]
        keep[start : start + 65536] = estimated_jaccard(signatures[part[:, 0]], signatures[part[:, 1]]) >= threshold
    return candidates[keep], int(candidates.shape[0])


# ------------------------------------------------------------------------------------------- components


def pair_components(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the graph whose edges are `pairs` ((num_pairs, 2) int).

    Returns (nodes, root): the sorted distinct nodes of the pairs, and for each the smallest node of its
    component, both int64 of shape (num_nodes,). Union-find over arrays: every round hooks the larger root of
    each edge under the smaller, then pointer-jumps until each node points at a root; the labelling does not
    depend on the order of the pairs.
    """
    nodes, local = np.unique(np.asarray(pairs, dtype=np.int64), return_inverse=True)
    local = local.reshape(-1, 2)
    parent = np.arange(nodes.shape[0], dtype=np.int64)
    while True:
        first, second = parent[local[:, 0]], parent[local[:, 1]]
        differ = first != second
        if not differ.any():
            break
        # Roots only decrease, and a root is always the smallest node of its tree.
        np.minimum.at(parent, np.maximum(first, second)[differ], np.minimum(first, second)[differ])
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent
    return nodes, nodes[parent]
