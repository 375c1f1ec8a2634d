"""The `dedup` stage: exact duplicates by content hash, then near-duplicates by MinHash LSH.

Four small steps; the flow process keeps a few numbers per document in numpy arrays, never a Python object per
document, and never the signatures:
1. signatures: every input shard is cut into runs of whole parquet row groups; a worker (`compute_signatures`,
   run through `parallel_map`) reads its rows once, writes their MinHash signatures and LSH band keys as `.npy`
   files into a scratch folder, and returns only text lengths, content hashes and id hashes.
2. exact: documents with equal content hashes form an exact group; its first document stands for it in LSH.
3. near: a `parallel_map` job per slice of a band (`band_candidates`: the band's keys that fall in one key
   range) writes the pairs of representatives with equal keys; candidate pairs whose estimated Jaccard
   (signature rows read back from disk) reaches the threshold are joined, with the exact groups, into clusters
   by a numpy union-find.
4. filter: in each cluster the longest text is kept (ties: the smallest id; ids are read back only for documents
   in clusters). Kept rows are written in input order; `clusters.parquet` records, for every input id, its
   cluster, whether it was kept and why not, one input shard at a time.

`near_duplicate_clusters` runs the same maths over an in-memory iterable of `(id, text)`, for library users.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm
from xxhash import xxh3_64_intdigest

from zero_chatgpt.config import DedupConfig
from zero_chatgpt.data_process.minhash import (
    MinHashParams,
    band_keys,
    bucket_pairs,
    estimated_jaccard,
    near_duplicate_pairs,
    pair_components,
    resolve_bands_rows,
    signatures_for_texts,
    unique_pairs,
)
from zero_chatgpt.parallel import ParallelMap, serial_map

logger = logging.getLogger(__name__)

COLUMNS = ("id", "text", "source")
CLUSTERS_FILE = "clusters.parquet"
REASON_KEPT = "unique"  # the one document kept from its cluster (alone or not)
REASON_EXACT = "exact_dup"  # same text as another document of its cluster
REASON_NEAR = "near_dup"  # Jaccard-similar to another document of its cluster
REASONS = (REASON_KEPT, REASON_EXACT, REASON_NEAR)  # reason codes 0, 1, 2 in the numpy arrays
# Scratch folder inside the output dir for the workers' signature files; removed before the stage returns. It
# lives under the artifact root, which every worker already reads the clean shards from.
SIGNATURES_DIR = "_signatures"
# Documents per band job: its keys, positions and sort cost ~40 bytes each (~10 MB), whatever the corpus size.
_DOCS_PER_BAND_JOB = 250_000
_PAIRS_PER_CHECK = 8192  # candidate pairs whose signature rows are read back at once (2 x 4 MiB at 128 perms)
_ROWS_PER_BATCH = 5000  # rows per batch when copying kept rows; each batch becomes one output row group
_OUTPUT_SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
_CLUSTERS_SCHEMA = pa.schema(
    [("id", pa.string()), ("cluster_id", pa.int64()), ("kept", pa.bool_()), ("reason", pa.string())]
)


# ------------------------------------------------------------------------------------ step 1: signatures


@dataclass(frozen=True)
class SignatureJob:
    """Rows [row_start, row_stop) of one parquet shard, whole row groups, how to sign them and where the
    signatures go; small, so it pickles cheaply."""

    path: str
    row_start: int
    row_stop: int
    params: MinHashParams
    bands: int
    rows: int
    output_prefix: str

    @property
    def signatures_file(self) -> str:
        """(n, num_perm) uint32 signatures of the job's rows."""
        return self.output_prefix + ".signatures.npy"

    @property
    def band_keys_file(self) -> str:
        """(bands, n) uint64 LSH keys of the job's rows, one contiguous row per band."""
        return self.output_prefix + ".band_keys.npy"


@dataclass
class SignatureSummary:
    """What a worker returns for its n rows: a few numbers per document (the signatures stay on disk)."""

    text_lengths: np.ndarray  # (n,) int64, characters
    content_hashes: np.ndarray  # (n, 2) uint64: a 128-bit BLAKE2b digest of the UTF-8 text
    id_hashes: np.ndarray  # (n,) uint64: xxh3 of the id, to find repeated ids without holding every id
    docs_char_shingled: int


def params_from_config(cfg: DedupConfig, seed: int) -> MinHashParams:
    """The signature parameters of a config section and run seed."""
    return MinHashParams(
        num_perm=cfg.num_perm,
        seed=seed,
        shingle=cfg.shingle,
        char_ngram=cfg.char_ngram,
        word_ngram=cfg.word_ngram,
        cjk_char_share=cfg.cjk_char_share,
    )


def input_shards(clean_dir: Path) -> list[Path]:
    """The `part_*.parquet` shards of a clean artifact, in name order, each checked for string id/text/source."""
    shards = sorted(Path(clean_dir).glob("part_*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{clean_dir}: no part_*.parquet shards to deduplicate")
    for shard in shards:
        schema = pq.read_schema(shard)
        for name in COLUMNS:
            if name not in schema.names:
                raise ValueError(f"{shard}: missing column `{name}` (columns: {', '.join(schema.names)})")
            if not (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type)):
                raise ValueError(f"{shard}: column `{name}` must hold strings, found {schema.field(name).type}")
    return shards


def signature_jobs(
    shards: list[Path], params: MinHashParams, docs_per_job: int, bands: int, rows: int, scratch_dir: Path
) -> list[SignatureJob]:
    """Runs of whole row groups of at most `docs_per_job` rows over every shard, in input order.

    A row group is never split between jobs: parquet decodes a column a row group at a time, so a job that
    wanted a quarter of a group would decode all of it. A group larger than `docs_per_job` is one job.
    """
    jobs: list[SignatureJob] = []

    def add(path: Path, start: int, stop: int) -> None:
        prefix = str(Path(scratch_dir) / f"job_{len(jobs):06d}")
        jobs.append(SignatureJob(str(path), start, stop, params, bands, rows, prefix))

    for shard in shards:
        metadata = pq.ParquetFile(shard).metadata
        job_start = group_start = 0
        for index in range(metadata.num_row_groups):
            group_stop = group_start + metadata.row_group(index).num_rows
            if group_start > job_start and group_stop - job_start > docs_per_job:
                add(shard, job_start, group_start)
                job_start = group_start
            group_start = group_stop
        if group_start > job_start:
            add(shard, job_start, group_start)
    return jobs


def read_rows(path: str | Path, row_start: int, row_stop: int, columns: list[str]) -> pa.Table:
    """Rows [row_start, row_stop) of a parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(path)
    groups, first_row, group_start = [], None, 0
    for index in range(parquet.metadata.num_row_groups):
        group_stop = group_start + parquet.metadata.row_group(index).num_rows
        if group_stop > row_start and group_start < row_stop:
            groups.append(index)
            first_row = group_start if first_row is None else first_row
        group_start = group_stop
    if not groups:
        return parquet.schema_arrow.empty_table().select(columns)
    table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(row_start - first_row, row_stop - row_start)


def _first_null_error(path: str, row_start: int, column: pa.ChunkedArray, name: str) -> ValueError:
    row = row_start + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
    return ValueError(f"{path}: row {row}: `{name}` is null")


def content_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of the UTF-8 text: the key of exact duplicates."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _save_atomically(path: str, array: np.ndarray) -> None:
    """A retried job rewrites its files; a reader never sees half of one."""
    partial = path + ".partial.npy"
    np.save(partial, array)
    os.replace(partial, path)


def compute_signatures(job: SignatureJob) -> SignatureSummary:
    """Worker: read one run of row groups, write its signatures and band keys, return the small per-document
    numbers (module-level, so process pools can pickle it)."""
    table = read_rows(job.path, job.row_start, job.row_stop, ["id", "text"])
    for name in ("id", "text"):
        if table.column(name).null_count:
            raise _first_null_error(job.path, job.row_start, table.column(name), name)
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    del table
    signatures, char_shingled = signatures_for_texts(texts, job.params)
    _save_atomically(job.signatures_file, signatures)
    _save_atomically(job.band_keys_file, band_keys(signatures, job.bands, job.rows))
    digests = b"".join(map(content_hash, texts))
    return SignatureSummary(
        text_lengths=np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)),
        content_hashes=np.frombuffer(digests, dtype=np.uint64).reshape(len(texts), 2).copy(),
        id_hashes=np.fromiter((xxh3_64_intdigest(i.encode("utf-8")) for i in ids), dtype=np.uint64, count=len(ids)),
        docs_char_shingled=int(char_shingled.sum()),
    )


class SignatureStore:
    """The signatures and band keys that the workers wrote, by document (its input position)."""

    def __init__(self, jobs: list[SignatureJob], num_perm: int) -> None:
        self.jobs, self.num_perm = jobs, num_perm
        self.starts = np.zeros(len(jobs) + 1, dtype=np.int64)
        np.cumsum([job.row_stop - job.row_start for job in jobs], out=self.starts[1:])

    @property
    def num_docs(self) -> int:
        return int(self.starts[-1])

    def signature_rows(self, docs: np.ndarray) -> np.ndarray:
        """Signatures of the given documents, shape (len(docs), num_perm) uint32, in the order given."""
        rows = np.empty((docs.shape[0], self.num_perm), dtype=np.uint32)
        job_of = np.searchsorted(self.starts, docs, side="right") - 1
        order = np.argsort(job_of, kind="stable")
        boundaries = np.flatnonzero(np.diff(job_of[order])) + 1
        for where in np.split(order, boundaries):
            if where.size:
                job = int(job_of[where[0]])
                signatures = np.load(self.jobs[job].signatures_file, mmap_mode="r")
                rows[where] = signatures[docs[where] - self.starts[job]]
        return rows


@dataclass(frozen=True)
class BandJob:
    """One slice of one LSH band: the documents whose band key falls in `partition` (key modulo `partitions`),
    among the representatives (one per exact group); where every signature job's band keys are, and where the
    slice's candidate pairs go. Equal keys share a slice, so the slices of a band find exactly its pairs."""

    band: int
    partition: int
    partitions: int
    band_keys_files: tuple[str, ...]  # the signature jobs' files, in input order
    job_starts: tuple[int, ...]  # the input position of each signature job's first row
    representatives_file: str  # sorted input positions
    pairs_file: str


def band_candidates(job: BandJob) -> int:
    """Worker: pairs of representatives with equal keys in one slice of one band, written as (k, 2) int64 input
    positions; returns k. It holds the slice's keys (16 bytes per document of the slice), read one signature
    job's file at a time, so its memory stays flat however big the corpus (`_DOCS_PER_BAND_JOB`)."""
    keys, positions = [], []
    representatives = np.load(job.representatives_file, mmap_mode="r")
    for path, start in zip(job.band_keys_files, job.job_starts):
        band = np.load(path, mmap_mode="r")[job.band]
        low, high = np.searchsorted(representatives, [start, start + band.shape[0]])
        here = np.array(representatives[low:high])
        here_keys = band[here - start]
        in_slice = here_keys % np.uint64(job.partitions) == np.uint64(job.partition)
        keys.append(here_keys[in_slice])
        positions.append(here[in_slice])
        del band
    del representatives  # closes the map: its pages no longer count to this process
    slice_positions = np.concatenate(positions) if positions else np.empty(0, np.int64)
    pairs = slice_positions[bucket_pairs(np.concatenate(keys))] if keys else np.empty((0, 2), np.int64)
    _save_atomically(job.pairs_file, pairs)
    return int(pairs.shape[0])


# ------------------------------------------------------------------------------------ the corpus layout


class ShardLayout:
    """Where each document (by input position) lives: which shard and which row of it."""

    def __init__(self, shards: list[Path]) -> None:
        self.shards = shards
        self.starts = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum([pq.ParquetFile(shard).metadata.num_rows for shard in shards], out=self.starts[1:])

    def where(self, doc: int) -> str:
        shard = int(np.searchsorted(self.starts, doc, side="right")) - 1
        return f"{self.shards[shard]} row {doc - int(self.starts[shard])}"

    def read_ids(self, docs: np.ndarray) -> list[str]:
        """The ids of the given documents (sorted input positions), reading only the id column of their shards."""
        ids: list[str] = []
        shard_of = np.searchsorted(self.starts, docs, side="right") - 1
        for shard in np.unique(shard_of).tolist():
            local = docs[shard_of == shard] - self.starts[shard]
            column = pq.ParquetFile(self.shards[shard]).read(columns=["id"]).column("id")
            ids.extend(column.take(pa.array(local)).to_pylist())
            del column
            pa.default_memory_pool().release_unused()
        return ids


def check_unique_ids(id_hashes: np.ndarray, layout: ShardLayout) -> None:
    """Raise naming both rows when an id repeats. Equal id hashes are checked against the ids themselves, so
    only the few documents whose hashes collide have their ids read."""
    order = np.argsort(id_hashes, kind="stable")
    same = id_hashes[order[1:]] == id_hashes[order[:-1]]
    if not same.any():
        return
    suspects = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))
    first_seen: dict[str, int] = {}
    for doc, doc_id in zip(suspects.tolist(), layout.read_ids(suspects)):
        if doc_id in first_seen:
            raise ValueError(
                f"duplicate document id {doc_id!r}: {layout.where(first_seen[doc_id])} and {layout.where(doc)}"
            )
        first_seen[doc_id] = doc


# ----------------------------------------------------------------------------- steps 2-3: exact, near


def exact_groups(content_hashes: np.ndarray) -> np.ndarray:
    """For each document, the first document (input order) with the same content hash: shape (n,) int64."""
    num_docs = content_hashes.shape[0]
    order = np.lexsort((content_hashes[:, 1], content_hashes[:, 0]))  # stable: equal texts stay in input order
    starts_group = np.zeros(num_docs, dtype=bool)
    starts_group[:1] = True
    for column in range(content_hashes.shape[1]):  # a column at a time: 8 bytes per document, not 16
        sorted_column = content_hashes[order, column]
        starts_group[1:] |= sorted_column[1:] != sorted_column[:-1]
        del sorted_column
    first = np.empty(num_docs, dtype=np.int64)
    first[order] = order[starts_group][np.cumsum(starts_group) - 1]
    return first


def band_candidate_pairs(
    store: SignatureStore, representatives: np.ndarray, bands: int, scratch: Path, parallel_map: ParallelMap
) -> np.ndarray:
    """Candidate pairs from every band (`band_candidates` jobs, a band cut into slices by key), unique, i < j."""
    representatives_file = str(Path(scratch) / "representatives.npy")
    _save_atomically(representatives_file, representatives)
    partitions = max(1, -(-representatives.shape[0] // _DOCS_PER_BAND_JOB))
    key_files = tuple(job.band_keys_file for job in store.jobs)
    starts = tuple(store.starts[:-1].tolist())
    jobs = [
        BandJob(
            band,
            partition,
            partitions,
            key_files,
            starts,
            representatives_file,
            str(Path(scratch) / f"band_{band:04d}_{partition:04d}.pairs.npy"),
        )
        for band in range(bands)
        for partition in range(partitions)
    ]
    # A corpus signed in one job is small: its bands cost less here than handing them to workers.
    (parallel_map if len(store.jobs) > 1 else serial_map)(band_candidates, jobs)
    return unique_pairs((np.load(job.pairs_file) for job in jobs), store.num_docs)


def verified_pairs(store: SignatureStore, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs whose estimated Jaccard reaches `threshold`, reading signature rows chunk by chunk."""
    keep = np.zeros(candidates.shape[0], dtype=bool)
    for start in range(0, candidates.shape[0], _PAIRS_PER_CHECK):
        part = candidates[start : start + _PAIRS_PER_CHECK]
        similarity = estimated_jaccard(store.signature_rows(part[:, 0]), store.signature_rows(part[:, 1]))
        keep[start : start + _PAIRS_PER_CHECK] = similarity >= threshold
    return candidates[keep]


@dataclass
class Clustering:
    """The outcome per input document (n of them, input order) plus pair counts."""

    cluster_id: np.ndarray  # (n,) int64, clusters numbered by the input position of their kept document
    kept: np.ndarray  # (n,) bool
    reason_code: np.ndarray  # (n,) uint8, an index into REASONS
    candidate_pairs: int
    near_pairs: int
    duplicate_clusters: int

    def count(self, reason: str) -> int:
        return int(np.count_nonzero(self.reason_code == REASONS.index(reason)))


def _keep_choice(
    nodes: np.ndarray, root: np.ndarray, exact_first: np.ndarray, lengths: np.ndarray, ids: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Among the members of duplicate clusters (`nodes`, with their component `root`): which one each cluster
    keeps (longest text, ties by smallest id), and which members are the best of their exact group.
    Returns (kept_member, exact_best), both bool of shape (len(nodes),)."""
    member_lengths = lengths[nodes].tolist()
    by_cluster = sorted(range(len(ids)), key=lambda i: (root[i], -member_lengths[i], ids[i]))
    kept_member = np.zeros(len(ids), dtype=bool)
    previous = None
    for i in by_cluster:
        kept_member[i] = root[i] != previous
        previous = root[i]
    # Equal texts have equal lengths, so the best of an exact group is its smallest id.
    member_group = exact_first[nodes].tolist()
    exact_best = np.zeros(len(ids), dtype=bool)
    previous = None
    for i in sorted(range(len(ids)), key=lambda i: (member_group[i], ids[i])):
        exact_best[i] = member_group[i] != previous
        previous = member_group[i]
    return kept_member, exact_best


def cluster_documents(
    store: SignatureStore,
    layout: ShardLayout,
    lengths: np.ndarray,
    content_hashes: np.ndarray,
    threshold: float,
    bands: int,
    scratch: Path,
    parallel_map: ParallelMap = serial_map,
) -> Clustering:
    """Exact groups by content hash, then LSH over one representative per exact group (`parallel_map` jobs
    per band slice, files in `scratch`), then union-find."""
    num_docs = store.num_docs
    if num_docs == 0:
        return Clustering(np.empty(0, np.int64), np.empty(0, bool), np.empty(0, np.uint8), 0, 0, 0)
    exact_first = exact_groups(content_hashes)
    representatives = np.flatnonzero(exact_first == np.arange(num_docs))
    logger.info("dedup: %d docs, %d distinct texts", num_docs, representatives.shape[0])

    candidates = band_candidate_pairs(store, representatives, bands, scratch, parallel_map)
    near = verified_pairs(store, candidates, threshold)
    copies = np.flatnonzero(exact_first != np.arange(num_docs))
    edges = np.concatenate([near, np.stack([exact_first[copies], copies], axis=1)])
    nodes, root = pair_components(edges)

    kept = np.ones(num_docs, dtype=bool)
    reason_code = np.zeros(num_docs, dtype=np.uint8)
    kept_member, exact_best = _keep_choice(nodes, root, exact_first, lengths, layout.read_ids(nodes))
    kept[nodes] = kept_member
    reason_code[nodes[~kept_member & ~exact_best]] = REASONS.index(REASON_EXACT)
    reason_code[nodes[~kept_member & exact_best]] = REASONS.index(REASON_NEAR)

    # Number clusters by where their kept document sits in the input: the kept documents' ranks.
    cluster_id = np.cumsum(kept, dtype=np.int64) - 1
    component_roots, component_kept = root[kept_member], nodes[kept_member]  # one of each per cluster
    by_root = np.argsort(component_roots)
    cluster_id[nodes] = cluster_id[component_kept[by_root][np.searchsorted(component_roots[by_root], root)]]
    return Clustering(
        cluster_id, kept, reason_code, int(candidates.shape[0]), int(near.shape[0]), int(np.unique(root).shape[0])
    )


# ---------------------------------------------------------------------------------------- step 4: filter


def write_kept(shards: list[Path], kept: np.ndarray, out_dir: Path) -> list[str]:
    """Write the kept rows of every input shard, in input order, as part_00000.parquet, ...; returns file names.

    One output shard per input shard that keeps any row (input shards are already bounded in size by `clean`),
    streamed in batches of `_ROWS_PER_BATCH` rows, each a row group of the output.
    """
    written, offset = [], 0
    for shard in tqdm(shards, desc="dedup: write", unit="shard", disable=len(shards) < 4):
        name, writer = f"part_{len(written):05d}.parquet", None
        # One thread: with threads Arrow decodes several row groups ahead (~70 MB more per shard here).
        batches = pq.ParquetFile(shard).iter_batches(_ROWS_PER_BATCH, columns=list(COLUMNS), use_threads=False)
        for batch in batches:
            mask = kept[offset : offset + batch.num_rows]
            offset += batch.num_rows
            if mask.any():
                writer = writer or pq.ParquetWriter(out_dir / name, _OUTPUT_SCHEMA)
                writer.write_table(pa.Table.from_batches([batch.filter(pa.array(mask))]).cast(_OUTPUT_SCHEMA))
        if writer is not None:
            writer.close()
            written.append(name)
        # Arrow's allocator keeps freed buffers for reuse; hand them back so one shard's peak does not stay.
        pa.default_memory_pool().release_unused()
    if offset != kept.shape[0]:
        raise RuntimeError(f"input shards changed while deduplicating: read {offset} rows, signed {kept.shape[0]}")
    return written


def write_clusters(layout: ShardLayout, clustering: Clustering, path: Path) -> None:
    """`clusters.parquet`: id, cluster_id, kept, reason for every input document, one input shard at a time."""
    reasons = pa.array(REASONS, pa.string())
    with pq.ParquetWriter(path, _CLUSTERS_SCHEMA) as writer:
        for shard, start, stop in zip(layout.shards, layout.starts[:-1].tolist(), layout.starts[1:].tolist()):
            codes = pa.array(clustering.reason_code[start:stop].astype(np.int8))
            columns = {
                "id": pq.ParquetFile(shard).read(columns=["id"]).column("id").cast(pa.string()),
                "cluster_id": clustering.cluster_id[start:stop],
                "kept": clustering.kept[start:stop],
                "reason": pa.DictionaryArray.from_arrays(codes, reasons).cast(pa.string()),
            }
            writer.write_table(pa.table(columns, schema=_CLUSTERS_SCHEMA))


_NO_DOCS = {
    "id_hashes": np.empty(0, np.uint64),
    "text_lengths": np.empty(0, np.int64),
    "content_hashes": np.empty((0, 2), np.uint64),
}


def _gathered(summaries: list[SignatureSummary], name: str, starts: np.ndarray) -> np.ndarray:
    """One field of every job's summary as one array, each summary's copy dropped as soon as it is copied (a
    concatenation would hold the field twice)."""
    if not summaries:
        return _NO_DOCS[name]
    first = getattr(summaries[0], name)
    out = np.empty((int(starts[-1]), *first.shape[1:]), dtype=first.dtype)
    for index, summary in enumerate(summaries):
        out[starts[index] : starts[index + 1]] = getattr(summary, name)
        setattr(summary, name, None)
    return out


def dedup_corpus(
    cfg: DedupConfig, clean_dir: Path, out_dir: Path, seed: int, parallel_map: ParallelMap = serial_map
) -> dict[str, Any]:
    """Deduplicate the clean shards in `clean_dir` into `out_dir`; returns the metrics (and parameters used)."""
    clean_dir, out_dir = Path(clean_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = params_from_config(cfg, seed)
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)
    shards = input_shards(clean_dir)
    layout = ShardLayout(shards)
    scratch = out_dir / SIGNATURES_DIR
    scratch.mkdir(exist_ok=True)
    try:
        jobs = signature_jobs(shards, params, cfg.docs_per_shard, bands, rows, scratch)
        logger.info(
            "dedup: signing %d shards in %d jobs (num_perm=%d, bands=%d x rows=%d)",
            len(shards),
            len(jobs),
            cfg.num_perm,
            bands,
            rows,
        )
        summaries = parallel_map(compute_signatures, jobs)
        store = SignatureStore(jobs, cfg.num_perm)
        docs_char_shingled = sum(s.docs_char_shingled for s in summaries)
        check_unique_ids(_gathered(summaries, "id_hashes", store.starts), layout)
        lengths = _gathered(summaries, "text_lengths", store.starts)
        content_hashes = _gathered(summaries, "content_hashes", store.starts)
        del summaries
        clustering = cluster_documents(
            store, layout, lengths, content_hashes, cfg.threshold, bands, scratch, parallel_map
        )
        del lengths, content_hashes  # 24 bytes per document the writing below has no use for
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    files = write_kept(shards, clustering.kept, out_dir)
    write_clusters(layout, clustering, out_dir / CLUSTERS_FILE)
    metrics = {
        "docs_in": int(clustering.kept.shape[0]),
        "docs_out": int(clustering.kept.sum()),
        "duplicate_clusters": clustering.duplicate_clusters,
        "exact_duplicates": clustering.count(REASON_EXACT),
        "near_duplicates": clustering.count(REASON_NEAR),
        "candidate_pairs": clustering.candidate_pairs,
        "near_duplicate_pairs": clustering.near_pairs,
        "docs_char_shingled": docs_char_shingled,
        "num_perm": cfg.num_perm,
        "threshold": cfg.threshold,
        "bands": bands,
        "rows": rows,
        "shingle": cfg.shingle,
        "char_ngram": cfg.char_ngram,
        "word_ngram": cfg.word_ngram,
        "cjk_char_share": cfg.cjk_char_share,
        "seed": seed,
        "hash": "one-permutation MinHash: 64-bit multilinear shingle hash + splitmix64, optimal densification",
        "output_files": files,
    }
    logger.info(
        "dedup: %d -> %d docs (%d exact, %d near duplicates in %d clusters)",
        metrics["docs_in"],
        metrics["docs_out"],
        metrics["exact_duplicates"],
        metrics["near_duplicates"],
        metrics["duplicate_clusters"],
    )
    return metrics


# ------------------------------------------------------------------------------------- library entry point


def near_duplicate_clusters(
    docs: Iterable[tuple[str, str]], config: DedupConfig | None = None, seed: int = 0, batch_docs: int = 4096
) -> list[list[str]]:
    """Group near-duplicate documents: the ids of every cluster of two or more documents.

    docs: `(id, text)` pairs, ids unique. config: the `dedup` section (threshold, num_perm, shingles, bands);
    its defaults when None. Exact copies are near-duplicates of similarity 1, so they cluster too. Members are
    listed in input order, clusters by their first member; the result depends only on the inputs and `seed`.

        >>> text = "Near-duplicate detection keeps one copy of each document that was crawled twice."
        >>> near_duplicate_clusters([("a", text), ("b", text + " Share this page."), ("c", "Another text.")])
        [['a', 'b']]

    Everything stays in memory: the ids, and `num_perm` uint32 values per document (512 bytes at 128).
    """
    cfg = config or DedupConfig()
    params = params_from_config(cfg, seed)
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)
    ids: list[str] = []
    batch: list[str] = []
    parts: list[np.ndarray] = []
    for doc_id, text in docs:
        ids.append(doc_id)
        batch.append(text)
        if len(batch) == batch_docs:
            parts.append(signatures_for_texts(batch, params)[0])
            batch = []
    if batch:
        parts.append(signatures_for_texts(batch, params)[0])
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = next(doc_id for doc_id in ids if doc_id in seen or seen.add(doc_id))
        raise ValueError(f"duplicate document id {repeated!r}")
    if not ids:
        return []
    pairs, _ = near_duplicate_pairs(np.concatenate(parts), cfg.threshold, bands, rows)
    nodes, root = pair_components(pairs)
    order = np.lexsort((nodes, root))
    boundaries = np.flatnonzero(np.diff(root[order])) + 1
    return [[ids[i] for i in nodes[members].tolist()] for members in np.split(order, boundaries) if members.size]
