"""The `dedup` stage: exact duplicates by content hash, then near-duplicates by MinHash LSH.

Four small steps, each over plain arrays:
1. signatures: every input shard is cut into row ranges; a worker (`compute_signatures`, run through
   `parallel_map`) reads its range and returns ids, lengths, content hashes and MinHash signatures.
   Content hashes and signatures come from the same read, so the text is read once.
2. exact: documents with equal content hashes form an exact group; only one representative per group goes on.
3. near: LSH banding over the representatives' signatures gives candidate pairs; pairs whose estimated Jaccard
   reaches the threshold are joined with union-find into clusters.
4. filter: in each cluster the longest text is kept (ties: the smallest id). Kept rows are written in input
   order; `clusters.parquet` records, for every input id, its cluster, whether it was kept and why not.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from zero_chatgpt.config import DedupConfig
from zero_chatgpt.data_process.minhash import (
    MinHashParams,
    near_duplicate_pairs,
    resolve_bands_rows,
    signatures_for_texts,
)
from zero_chatgpt.parallel import ParallelMap, serial_map

logger = logging.getLogger(__name__)

COLUMNS = ("id", "text", "source")
CLUSTERS_FILE = "clusters.parquet"
REASON_KEPT = "unique"  # the one document kept from its cluster (alone or not)
REASON_EXACT = "exact_dup"  # same text as another document of its cluster
REASON_NEAR = "near_dup"  # Jaccard-similar to another document of its cluster
_OUTPUT_SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
_CLUSTERS_SCHEMA = pa.schema(
    [("id", pa.string()), ("cluster_id", pa.int64()), ("kept", pa.bool_()), ("reason", pa.string())]
)


# ------------------------------------------------------------------------------------ step 1: signatures


@dataclass(frozen=True)
class SignatureJob:
    """Rows [row_start, row_stop) of one parquet shard and how to sign them; small, so it pickles cheaply."""

    path: str
    row_start: int
    row_stop: int
    params: MinHashParams


@dataclass
class SignatureResult:
    """What a worker returns for its rows (n of them)."""

    ids: list[str]
    text_lengths: np.ndarray  # (n,) int64, characters
    content_hashes: np.ndarray  # (n, 2) uint64: a 128-bit BLAKE2b digest of the UTF-8 text
    char_shingled: np.ndarray  # (n,) bool: char n-grams were used (else word n-grams)
    signatures: np.ndarray  # (n, num_perm) uint32


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


def signature_jobs(shards: list[Path], params: MinHashParams, docs_per_job: int) -> list[SignatureJob]:
    """Row ranges of at most `docs_per_job` rows over every shard, in input order."""
    jobs = []
    for shard in shards:
        num_rows = pq.ParquetFile(shard).metadata.num_rows
        for start in range(0, num_rows, docs_per_job):
            jobs.append(SignatureJob(str(shard), start, min(num_rows, start + docs_per_job), params))
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


def compute_signatures(job: SignatureJob) -> SignatureResult:
    """Worker: read one row range and sign it (module-level, so process pools can pickle it)."""
    table = read_rows(job.path, job.row_start, job.row_stop, ["id", "text"])
    for name in ("id", "text"):
        if table.column(name).null_count:
            raise _first_null_error(job.path, job.row_start, table.column(name), name)
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    digests = b"".join(map(content_hash, texts))
    signatures, char_shingled = signatures_for_texts(texts, job.params)
    return SignatureResult(
        ids=ids,
        text_lengths=np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)),
        content_hashes=np.frombuffer(digests, dtype=np.uint64).reshape(len(texts), 2).copy(),
        char_shingled=char_shingled,
        signatures=signatures,
    )


def _merge_results(jobs: list[SignatureJob], results: list[SignatureResult], num_perm: int) -> SignatureResult:
    """One result for the whole corpus, in input order; duplicate ids are an error naming both rows."""
    ids = [doc_id for result in results for doc_id in result.ids]
    if len(set(ids)) != len(ids):
        where: dict[str, str] = {}
        for job, result in zip(jobs, results):
            for offset, doc_id in enumerate(result.ids):
                here = f"{job.path} row {job.row_start + offset}"
                if doc_id in where:
                    raise ValueError(f"duplicate document id {doc_id!r}: {where[doc_id]} and {here}")
                where[doc_id] = here

    def stacked(name: str, empty: np.ndarray) -> np.ndarray:
        parts = [getattr(result, name) for result in results]
        return np.concatenate(parts) if parts else empty

    return SignatureResult(
        ids=ids,
        text_lengths=stacked("text_lengths", np.empty(0, np.int64)),
        content_hashes=stacked("content_hashes", np.empty((0, 2), np.uint64)),
        char_shingled=stacked("char_shingled", np.empty(0, bool)),
        signatures=stacked("signatures", np.empty((0, num_perm), np.uint32)),
    )


# ----------------------------------------------------------------------------- steps 2-3: exact, near


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; `roots()` labels every element by its set's root."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        root_first, root_second = self.find(first), self.find(second)
        if root_first != root_second:
            # Attach the larger root under the smaller: the result does not depend on pair order.
            low, high = sorted((root_first, root_second))
            self.parent[high] = low

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


@dataclass
class Clustering:
    """The outcome per input document (n of them, input order) plus pair counts."""

    cluster_id: np.ndarray  # (n,) int64, clusters numbered by the input position of their kept document
    kept: np.ndarray  # (n,) bool
    reason: list[str]
    candidate_pairs: int
    near_pairs: int


def keep_priority(ids: list[str], text_lengths: np.ndarray) -> np.ndarray:
    """Rank of each document under the keep rule, shape (n,) int64: 0 = longest text, ties by smallest id."""
    id_order = np.argsort(np.array(ids, dtype=object), kind="stable")
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[id_order] = np.arange(len(ids))
    order = np.lexsort((id_rank, -text_lengths))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def _best_per_group(groups: np.ndarray, rank: np.ndarray, num_groups: int) -> np.ndarray:
    """Index of the best-ranked document of each group, shape (num_groups,)."""
    best_rank = np.full(num_groups, len(rank), dtype=np.int64)
    np.minimum.at(best_rank, groups, rank)
    return np.argsort(rank)[best_rank]


def cluster_documents(corpus: SignatureResult, threshold: float, bands: int, rows: int) -> Clustering:
    """Exact groups by content hash, then LSH + union-find over one representative per exact group."""
    num_docs = len(corpus.ids)
    if num_docs == 0:
        return Clustering(np.empty(0, np.int64), np.empty(0, bool), [], 0, 0)
    rank = keep_priority(corpus.ids, corpus.text_lengths)
    _, exact_group = np.unique(corpus.content_hashes, axis=0, return_inverse=True)
    exact_group = exact_group.ravel()
    exact_best = _best_per_group(exact_group, rank, int(exact_group.max()) + 1)
    representatives = np.sort(exact_best)  # input order
    logger.info("dedup: %d docs, %d distinct texts", num_docs, representatives.shape[0])

    pairs, num_candidates = near_duplicate_pairs(corpus.signatures[representatives], threshold, bands, rows)
    sets = UnionFind(representatives.shape[0])
    for first, second in tqdm(pairs.tolist(), desc="dedup: union-find", unit="pair", disable=len(pairs) < 100_000):
        sets.union(first, second)
    _, representative_cluster = np.unique(sets.roots(), return_inverse=True)

    local_index = np.full(num_docs, -1, dtype=np.int64)
    local_index[representatives] = np.arange(representatives.shape[0])
    doc_cluster = representative_cluster.ravel()[local_index[exact_best[exact_group]]]
    num_clusters = int(doc_cluster.max()) + 1
    kept_doc = _best_per_group(doc_cluster, rank, num_clusters)

    # Number clusters by where their kept document sits in the input, so ids read in input order.
    cluster_number = np.empty(num_clusters, dtype=np.int64)
    cluster_number[np.argsort(kept_doc, kind="stable")] = np.arange(num_clusters)
    kept = np.zeros(num_docs, dtype=bool)
    kept[kept_doc] = True
    is_representative = np.zeros(num_docs, dtype=bool)
    is_representative[representatives] = True
    reason = [
        REASON_KEPT if k else (REASON_NEAR if r else REASON_EXACT)
        for k, r in zip(kept.tolist(), is_representative.tolist())
    ]
    return Clustering(cluster_number[doc_cluster], kept, reason, num_candidates, int(pairs.shape[0]))


# ---------------------------------------------------------------------------------------- step 4: filter


def write_kept(shards: list[Path], kept: np.ndarray, out_dir: Path) -> list[str]:
    """Write the kept rows of every input shard, in input order, as part_00000.parquet, ...; returns file names.

    One output shard per input shard that keeps any row: input shards are already bounded in size by `clean`.
    """
    written, offset = [], 0
    for shard in tqdm(shards, desc="dedup: write", unit="shard", disable=len(shards) < 4):
        table = pq.read_table(shard, columns=list(COLUMNS)).cast(_OUTPUT_SCHEMA)
        mask = kept[offset : offset + table.num_rows]
        offset += table.num_rows
        if not mask.any():
            continue
        name = f"part_{len(written):05d}.parquet"
        pq.write_table(table.filter(pa.array(mask)), out_dir / name)
        written.append(name)
    if offset != kept.shape[0]:
        raise RuntimeError(f"input shards changed while deduplicating: read {offset} rows, signed {kept.shape[0]}")
    return written


def dedup_corpus(
    cfg: DedupConfig, clean_dir: Path, out_dir: Path, seed: int, parallel_map: ParallelMap = serial_map
) -> dict[str, Any]:
    """Deduplicate the clean shards in `clean_dir` into `out_dir`; returns the metrics (and parameters used)."""
    clean_dir, out_dir = Path(clean_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = params_from_config(cfg, seed)
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows)
    shards = input_shards(clean_dir)
    jobs = signature_jobs(shards, params, cfg.docs_per_shard)
    logger.info(
        "dedup: signing %d shards in %d jobs (num_perm=%d, bands=%d x rows=%d)",
        len(shards),
        len(jobs),
        cfg.num_perm,
        bands,
        rows,
    )
    corpus = _merge_results(jobs, parallel_map(compute_signatures, jobs), cfg.num_perm)
    clustering = cluster_documents(corpus, cfg.threshold, bands, rows)

    files = write_kept(shards, clustering.kept, out_dir)
    clusters = pa.table(
        {"id": corpus.ids, "cluster_id": clustering.cluster_id, "kept": clustering.kept, "reason": clustering.reason},
        schema=_CLUSTERS_SCHEMA,
    )
    pq.write_table(clusters, out_dir / CLUSTERS_FILE)

    reasons = np.array(clustering.reason, dtype=object)
    cluster_sizes = np.bincount(clustering.cluster_id) if len(corpus.ids) else np.empty(0, np.int64)
    metrics = {
        "docs_in": len(corpus.ids),
        "docs_out": int(clustering.kept.sum()),
        "duplicate_clusters": int((cluster_sizes > 1).sum()),
        "exact_duplicates": int((reasons == REASON_EXACT).sum()),
        "near_duplicates": int((reasons == REASON_NEAR).sum()),
        "candidate_pairs": clustering.candidate_pairs,
        "near_duplicate_pairs": clustering.near_pairs,
        "docs_char_shingled": int(corpus.char_shingled.sum()),
        "num_perm": cfg.num_perm,
        "threshold": cfg.threshold,
        "bands": bands,
        "rows": rows,
        "shingle": cfg.shingle,
        "char_ngram": cfg.char_ngram,
        "word_ngram": cfg.word_ngram,
        "cjk_char_share": cfg.cjk_char_share,
        "seed": seed,
        "hash": "xxh32 per shingle, permutations (a*h+b) mod 2^32 with odd a",
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
