"""The dedup stage: signature maths, planted-duplicate quality against exact Jaccard, and the stage contract."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from xxhash import xxh3_64_intdigest

from zero_chatgpt.config import DedupConfig
from zero_chatgpt.data_process import minhash
from zero_chatgpt.data_process.dedup import (
    CLUSTERS_FILE,
    SIGNATURES_DIR,
    compute_signatures,
    dedup_corpus,
    near_duplicate_clusters,
    params_from_config,
    read_rows,
    signature_jobs,
)
from zero_chatgpt.data_process.minhash import (
    MinHashParams,
    densification_probes,
    pair_components,
    resolve_bands_rows,
    shingle_multipliers,
    shingles,
    shingles_with_kind,
    signatures_for_texts,
)
from zero_chatgpt.parallel import process_pool_map, serial_map

SEED = 1234

# --------------------------------------------------------------------------------------- corpus builder

_EN_VOCAB = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 6)) for i in range(3000)]
_ZH_CHARS = [chr(code) for code in range(0x4E00, 0x4E00 + 2500)]


def _en_doc(rng: random.Random, words: int) -> list[str]:
    return rng.choices(_EN_VOCAB, k=words)


def _zh_doc(rng: random.Random, chars: int) -> list[str]:
    return rng.choices(_ZH_CHARS, k=chars)


def _substitute(rng: random.Random, tokens: list[str], count: int, pool: list[str]) -> list[str]:
    """Replace `count` tokens at distinct random positions by other tokens of the same length."""
    changed = list(tokens)
    for position in rng.sample(range(len(tokens)), count):
        original = tokens[position]
        changed[position] = rng.choice([t for t in pool if len(t) == len(original) and t != original])
    return changed


def build_corpus(seed: int = 7) -> list[dict[str, str]]:
    """EN and ZH documents: unrelated ones, planted near-duplicates (J well above 0.7), partial overlaps
    (J well below 0.7, the negatives that test precision) and exact copies."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []

    def add(text: str, source: str) -> None:
        rows.append({"id": f"{source}-{len(rows):03d}", "text": text, "source": source})

    # (char 5-gram Jaccard: light edits about 0.9 to the base and 0.85 between variants; heavy edits about 0.6)
    for language, make, join, pool, size, light_edits, heavy_edits in (
        ("en", _en_doc, " ".join, _EN_VOCAB, 160, 2, 30),
        ("zh", _zh_doc, "".join, _ZH_CHARS, 240, 2, 12),
    ):
        for _ in range(12):  # unrelated documents
            add(join(make(rng, size)), language)
        for _ in range(10):  # a base and two near-duplicate variants each
            base = make(rng, size)
            add(join(base), language)
            for _ in range(2):
                add(join(_substitute(rng, base, light_edits, pool)), language)
        for _ in range(4):  # partial overlap: the first half shared, the rest new
            base = make(rng, size)
            add(join(base), language)
            add(join(base[: size // 2] + make(rng, size - size // 2)), language)
        for _ in range(3):  # heavier edits: around J 0.5, must not count as duplicates
            base = make(rng, size)
            add(join(base), language)
            add(join(_substitute(rng, base, heavy_edits, pool)), language)
        for _ in range(2):  # exact copies
            text = join(make(rng, size))
            add(text, language)
            add(text, language)
    rng.shuffle(rows)
    return rows


def write_shards(rows: list[dict[str, str]], directory: Path, shards: int = 3, row_group_size: int = 16) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(rows) // shards)
    for index in range(shards):
        part = rows[index * per_shard : (index + 1) * per_shard]
        table = pa.table({name: [row[name] for row in part] for name in ("id", "text", "source")})
        pq.write_table(table, directory / f"part_{index:05d}.parquet", row_group_size=row_group_size)
    return directory


def jaccard(first: set[bytes], second: set[bytes]) -> float:
    return len(first & second) / len(first | second)


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, str]]:
    return build_corpus()


@pytest.fixture(scope="module")
def deduped(corpus, tmp_path_factory) -> tuple[dict, Path, Path]:
    clean_dir = write_shards(corpus, tmp_path_factory.mktemp("clean"))
    out_dir = tmp_path_factory.mktemp("dedup")
    metrics = dedup_corpus(DedupConfig(), clean_dir, out_dir, seed=SEED)
    return metrics, clean_dir, out_dir


# ---------------------------------------------------------------------------------------- signature maths


def _mix(value: int) -> int:
    value ^= value >> 30
    value = (value * 0xBF58476D1CE4E5B9) % (1 << 64)
    value ^= value >> 27
    value = (value * 0x94D049BB133111EB) % (1 << 64)
    return value ^ (value >> 31)


def reference_signature(text: str, params: MinHashParams) -> list[int]:
    """The signature of one document in plain Python, from the readable shingles and the documented maths."""
    pieces, kind = shingles_with_kind(text, params)
    char_m, word_m = shingle_multipliers(params)
    multipliers = [int(m) for m in (char_m if kind == "char" else word_m)]
    bins: dict[int, int] = {}
    for piece in pieces:
        tokens = (
            [ord(c) for c in piece] if kind == "char" else [xxh3_64_intdigest(w.encode()) for w in piece.split(" ")]
        )
        value = _mix(sum(t * m for t, m in zip(tokens, multipliers)) % (1 << 64))
        slot = ((value >> 32) * params.num_perm) >> 32
        bins[slot] = min(bins.get(slot, 1 << 32), value & 0xFFFFFFFF)
    probes = densification_probes(params.num_perm, params.seed).tolist()
    signature = []
    for slot in range(params.num_perm):
        source = next((probe for probe in probes[slot] if probe in bins), min(bins))
        signature.append(bins[slot] if slot in bins else bins[source])
    return signature


def test_signature_equals_plain_python_reference():
    texts = [
        "the quick brown fox jumps over the lazy dog",
        "一二三四五六七八九十百千万",
        "short",
        "",
        "Mixed 中文 and English  words\n here",
        " ".join(_en_doc(random.Random(3), 200)),
    ]
    for params in (
        MinHashParams(num_perm=32, seed=3, shingle="char"),
        MinHashParams(num_perm=48, seed=4, shingle="auto", char_ngram=3, word_ngram=2),
        MinHashParams(num_perm=16, seed=5, shingle="word"),
    ):
        signatures, _ = signatures_for_texts(texts, params)
        for text, signature in zip(texts, signatures):
            assert signature.tolist() == reference_signature(text, params), (text[:20], params)


def test_chunked_signatures_equal_one_batch(monkeypatch):
    """Documents signed in many small numpy chunks get the signatures of one big chunk; auto mixes both kinds."""
    params = MinHashParams(num_perm=64, seed=1, shingle="auto")
    rng = random.Random(0)
    texts = [" ".join(_en_doc(rng, rng.randint(1, 40))) for _ in range(30)]
    texts += ["".join(_zh_doc(rng, rng.randint(1, 60))) for _ in range(30)]
    rng.shuffle(texts)
    whole, kinds = signatures_for_texts(texts, params)
    monkeypatch.setattr(minhash, "_TOKENS_PER_CHUNK", 50)
    chunked, chunked_kinds = signatures_for_texts(texts, params)
    assert np.array_equal(whole, chunked) and np.array_equal(kinds, chunked_kinds)
    assert 0 < kinds.sum() < len(texts)
    assert not (whole == minhash.EMPTY_BIN).all(axis=1).any()


def test_auto_shingles_pick_chars_for_cjk_and_words_otherwise():
    params = MinHashParams(char_ngram=2, word_ngram=2, shingle="auto")
    pieces, kind = shingles_with_kind("今天 天气很好", params)
    assert kind == "char" and pieces[0] == "今天" and len(pieces) == 6  # the space stays
    pieces, kind = shingles_with_kind("Hello  big\nWorld", params)
    assert kind == "word" and pieces == ["hello big", "big world"]
    assert shingles_with_kind("Hello world", MinHashParams(shingle="char"))[1] == "char"
    assert shingles_with_kind("你好世界", MinHashParams(shingle="word"))[1] == "word"


def test_short_documents_estimate_jaccard_after_densification():
    """Documents of a few dozen shingles leave most bins empty; densified signatures still track Jaccard."""
    params = MinHashParams(num_perm=128, seed=2)
    rng = random.Random(4)
    errors = []
    for _ in range(40):
        base = _zh_doc(rng, 60)
        variant = _substitute(rng, base, rng.randint(1, 4), _ZH_CHARS)
        exact = jaccard(set(shingles("".join(base), params)), set(shingles("".join(variant), params)))
        signatures, _ = signatures_for_texts(["".join(base), "".join(variant)], params)
        errors.append(float((signatures[0] == signatures[1]).mean()) - exact)
    assert abs(np.mean(errors)) < 0.03, "unbiased on average"
    assert np.max(np.abs(errors)) < 0.2


def test_estimated_jaccard_tracks_exact_jaccard():
    params = MinHashParams(num_perm=256, seed=5, shingle="word")
    rng = random.Random(1)
    base = _en_doc(rng, 300)
    variant = base[:200] + _en_doc(rng, 100)
    exact = jaccard(set(shingles(" ".join(base), params)), set(shingles(" ".join(variant), params)))
    signatures, _ = signatures_for_texts([" ".join(base), " ".join(variant)], params)
    estimate = float((signatures[0] == signatures[1]).mean())
    assert 0.3 < exact < 0.7
    assert abs(estimate - exact) < 0.1


def test_bands_rows_derived_or_completed():
    # The S-curve optimum with misses weighted 9:1 over extra candidates (candidates are checked afterwards).
    assert resolve_bands_rows(0.7, 128) == (20, 6)
    assert resolve_bands_rows(0.8, 128) == (14, 9)
    assert minhash.optimal_bands_rows(0.7, 128, false_positive_weight=0.5) == (14, 9)  # datasketch's equal weights
    assert resolve_bands_rows(0.7, 128, bands=16) == (16, 8)
    assert resolve_bands_rows(0.7, 128, rows=5) == (25, 5)
    with pytest.raises(ValueError, match="dedup.bands"):
        resolve_bands_rows(0.7, 128, bands=20, rows=20)


def test_read_rows_spans_row_groups(tmp_path):
    table = pa.table({"id": [str(i) for i in range(50)], "text": ["x"] * 50, "source": ["s"] * 50})
    pq.write_table(table, tmp_path / "part_00000.parquet", row_group_size=8)
    rows = read_rows(tmp_path / "part_00000.parquet", 13, 29, ["id"])
    assert rows.column("id").to_pylist() == [str(i) for i in range(13, 29)]


# -------------------------------------------------------------------------------------- stage behaviour


def test_near_duplicate_pairs_match_exact_jaccard(deduped, corpus):
    """Precision and recall of duplicate pairs against exact Jaccard of the same shingles at the threshold."""
    metrics, _, out_dir = deduped
    cfg = DedupConfig()
    params = params_from_config(cfg, SEED)
    shingle_sets = {row["id"]: set(shingles(row["text"], params)) for row in corpus}
    truth = {
        frozenset((x, y))
        for x, y in itertools.combinations(sorted(shingle_sets), 2)
        if jaccard(shingle_sets[x], shingle_sets[y]) >= cfg.threshold
    }
    clusters = pq.read_table(out_dir / CLUSTERS_FILE).to_pylist()
    members: dict[int, list[str]] = {}
    for row in clusters:
        members.setdefault(row["cluster_id"], []).append(row["id"])
    found = {frozenset(pair) for ids in members.values() for pair in itertools.combinations(ids, 2)}
    near_misses = sum(
        0.5 <= jaccard(shingle_sets[x], shingle_sets[y]) < cfg.threshold
        for x, y in itertools.combinations(sorted(shingle_sets), 2)
    )
    assert len(truth) >= 60 and near_misses >= 4, "the corpus must plant positives and close negatives"
    true_found = len(found & truth)
    assert true_found / len(truth) >= 0.95, f"recall {true_found}/{len(truth)}"
    assert true_found / len(found) >= 0.95, f"precision {true_found}/{len(found)}"
    assert metrics["near_duplicates"] >= 20
    assert metrics["docs_char_shingled"] == len(corpus)  # char n-grams for every language by default


def test_exact_duplicates_removed(deduped, corpus):
    metrics, _, out_dir = deduped
    kept_texts = pq.read_table(sorted(out_dir.glob("part_*.parquet"))).column("text").to_pylist()
    assert len(kept_texts) == len(set(kept_texts)) == metrics["docs_out"]
    clusters = {row["id"]: row for row in pq.read_table(out_dir / CLUSTERS_FILE).to_pylist()}
    by_text: dict[str, list[str]] = {}
    for row in corpus:
        by_text.setdefault(row["text"], []).append(row["id"])
    copies = [sorted(ids) for ids in by_text.values() if len(ids) > 1]
    assert len(copies) == 4 and metrics["exact_duplicates"] == 4
    for ids in copies:
        # Equal texts tie on length, so the smallest id stays.
        assert clusters[ids[0]]["kept"] and clusters[ids[1]]["reason"] == "exact_dup"
        assert clusters[ids[0]]["cluster_id"] == clusters[ids[1]]["cluster_id"]


def test_clusters_cover_each_id_once_and_keep_the_longest(deduped, corpus):
    metrics, _, out_dir = deduped
    clusters = pq.read_table(out_dir / CLUSTERS_FILE).to_pylist()
    assert sorted(row["id"] for row in clusters) == sorted(row["id"] for row in corpus)
    assert len({row["id"] for row in clusters}) == len(clusters) == metrics["docs_in"]
    length = {row["id"]: len(row["text"]) for row in corpus}
    members: dict[int, list[dict]] = {}
    for row in clusters:
        members.setdefault(row["cluster_id"], []).append(row)
    for rows in members.values():
        kept = [row["id"] for row in rows if row["kept"]]
        expected = min((row["id"] for row in rows), key=lambda doc_id: (-length[doc_id], doc_id))
        assert kept == [expected]
        assert all(row["reason"] in ("exact_dup", "near_dup") for row in rows if not row["kept"])
    assert metrics["duplicate_clusters"] == sum(len(rows) > 1 for rows in members.values())
    # Output: kept rows, in input order, with the input columns.
    input_order = [row["id"] for row in pq.read_table(sorted(deduped[1].glob("part_*.parquet"))).to_pylist()]
    kept_ids = {row["id"] for row in clusters if row["kept"]}
    output = pq.read_table(sorted(out_dir.glob("part_*.parquet")))
    assert output.column_names == ["id", "text", "source"]
    assert output.column("id").to_pylist() == [doc_id for doc_id in input_order if doc_id in kept_ids]
    assert metrics["docs_out"] + metrics["exact_duplicates"] + metrics["near_duplicates"] == metrics["docs_in"]


def test_metrics_record_parameters(deduped):
    metrics = deduped[0]
    assert {k: metrics[k] for k in ("num_perm", "threshold", "bands", "rows", "shingle")} == {
        "num_perm": 128,
        "threshold": 0.7,
        "bands": 20,
        "rows": 6,
        "shingle": "char",
    }


def test_same_input_gives_identical_output(deduped, tmp_path):
    metrics, clean_dir, out_dir = deduped
    again = dedup_corpus(DedupConfig(), clean_dir, tmp_path, seed=SEED)
    assert again == metrics
    names = sorted(p.name for p in out_dir.glob("*.parquet"))
    assert names == sorted(p.name for p in tmp_path.glob("*.parquet"))
    for name in names:
        assert pq.read_table(out_dir / name).equals(pq.read_table(tmp_path / name))


def test_process_pool_signatures_equal_serial(deduped, tmp_path):
    clean_dir = deduped[1]
    shards, params = sorted(clean_dir.glob("part_*.parquet")), params_from_config(DedupConfig(), SEED)
    outcomes = {}
    for name, run in (("serial", serial_map), ("pooled", process_pool_map(2))):
        (tmp_path / name).mkdir()
        jobs = signature_jobs(shards, params, 100, 14, 9, tmp_path / name)
        assert len(jobs) == 3
        summaries = run(compute_signatures, jobs)
        outcomes[name] = [
            (summary, np.load(job.signatures_file), np.load(job.band_keys_file))
            for summary, job in zip(summaries, jobs)
        ]
    for (one, one_sig, one_keys), (other, other_sig, other_keys) in zip(outcomes["serial"], outcomes["pooled"]):
        assert np.array_equal(one.id_hashes, other.id_hashes)
        assert np.array_equal(one.content_hashes, other.content_hashes)
        assert np.array_equal(one_sig, other_sig) and np.array_equal(one_keys, other_keys)
        assert one_sig.dtype == np.uint32 and one_keys.shape == (14, one_sig.shape[0])


def test_jobs_take_whole_row_groups(tmp_path):
    """A job never decodes a row group another job also reads: row ranges end on row-group boundaries."""
    table = pa.table({"id": [str(i) for i in range(100)], "text": ["x"] * 100, "source": ["s"] * 100})
    pq.write_table(table, tmp_path / "part_00000.parquet", row_group_size=30)  # groups of 30, 30, 30, 10
    jobs = signature_jobs([tmp_path / "part_00000.parquet"], MinHashParams(), 65, 14, 9, tmp_path)
    assert [(job.row_start, job.row_stop) for job in jobs] == [(0, 60), (60, 100)]
    jobs = signature_jobs([tmp_path / "part_00000.parquet"], MinHashParams(), 20, 14, 9, tmp_path)
    assert [(job.row_start, job.row_stop) for job in jobs] == [(0, 30), (30, 60), (60, 90), (90, 100)]


def test_scratch_signatures_are_removed(deduped):
    out_dir = deduped[2]
    assert not (out_dir / SIGNATURES_DIR).exists()
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([CLUSTERS_FILE, *deduped[0]["output_files"]])


# ------------------------------------------------------------------------------------------- bad input


def _one_shard(directory: Path, columns: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), directory / "part_00000.parquet")
    return directory


def test_missing_column_names_file_and_column(tmp_path):
    clean_dir = _one_shard(tmp_path / "clean", {"id": ["a"], "text": ["hello"]})
    with pytest.raises(ValueError, match=r"part_00000\.parquet: missing column `source`"):
        dedup_corpus(DedupConfig(), clean_dir, tmp_path / "out", seed=0)


def test_null_text_names_row(tmp_path):
    clean_dir = _one_shard(
        tmp_path / "clean", {"id": ["a", "b"], "text": pa.array(["hello", None], pa.string()), "source": ["s", "s"]}
    )
    with pytest.raises(ValueError, match=r"row 1: `text` is null"):
        dedup_corpus(DedupConfig(), clean_dir, tmp_path / "out", seed=0)


def test_duplicate_ids_are_an_error(tmp_path):
    clean_dir = _one_shard(tmp_path / "clean", {"id": ["a", "a"], "text": ["one", "two"], "source": ["s", "s"]})
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        dedup_corpus(DedupConfig(), clean_dir, tmp_path / "out", seed=0)


def test_no_shards_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no part_"):
        dedup_corpus(DedupConfig(), tmp_path, tmp_path / "out", seed=0)


def test_row_ranges_across_jobs_give_the_same_clusters(corpus, deduped, tmp_path):
    """One shard signed in several row-range jobs clusters exactly like three shards signed whole."""
    clean_dir = write_shards(corpus, tmp_path / "clean", shards=1, row_group_size=7)
    metrics = dedup_corpus(DedupConfig(docs_per_shard=100), clean_dir, tmp_path / "out", seed=SEED)
    assert metrics["docs_in"] > 100  # so the shard is cut into two jobs
    expected = pq.read_table(deduped[2] / CLUSTERS_FILE).sort_by("id")
    assert pq.read_table(tmp_path / "out" / CLUSTERS_FILE).sort_by("id").equals(expected)


def test_bands_cut_into_key_slices_on_worker_processes_give_the_same_clusters(deduped, tmp_path, monkeypatch):
    """A band split by key into many small jobs (so a job's memory stays flat on any corpus), run on a process
    pool, finds the same pairs as one job per band."""
    import zero_chatgpt.data_process.dedup as dedup_module

    monkeypatch.setattr(dedup_module, "_DOCS_PER_BAND_JOB", 37)
    with process_pool_map(2) as parallel_map:
        metrics = dedup_corpus(DedupConfig(), deduped[1], tmp_path / "out", seed=SEED, parallel_map=parallel_map)
    assert metrics["candidate_pairs"] == deduped[0]["candidate_pairs"] > 0
    for name in (CLUSTERS_FILE, "part_00000.parquet"):
        assert (tmp_path / "out" / name).read_bytes() == (deduped[2] / name).read_bytes(), name


# ------------------------------------------------------------------------------------ library entry point


def test_entry_point_finds_the_stage_clusters(corpus, deduped):
    """`near_duplicate_clusters` over (id, text) gives the duplicate clusters the stage wrote."""
    clusters = near_duplicate_clusters(((row["id"], row["text"]) for row in corpus), DedupConfig(), seed=SEED)
    position = {row["id"]: index for index, row in enumerate(corpus)}
    assert all(len(cluster) > 1 for cluster in clusters)
    assert all([position[i] for i in cluster] == sorted(position[i] for i in cluster) for cluster in clusters)
    assert [position[cluster[0]] for cluster in clusters] == sorted(position[cluster[0]] for cluster in clusters)
    written: dict[int, list[str]] = {}
    for row in pq.read_table(deduped[2] / CLUSTERS_FILE).to_pylist():
        written.setdefault(row["cluster_id"], []).append(row["id"])
    expected = {frozenset(ids) for ids in written.values() if len(ids) > 1}
    assert {frozenset(cluster) for cluster in clusters} == expected
    assert len(expected) == deduped[0]["duplicate_clusters"]


def test_entry_point_is_deterministic_and_order_free(corpus):
    """Same input and seed: the same clusters; shuffled input: the same groups; another seed: the same groups on a
    corpus whose planted pairs sit far from the threshold, from different signatures."""
    docs = [(row["id"], row["text"]) for row in corpus]
    first = near_duplicate_clusters(docs, seed=SEED)
    assert near_duplicate_clusters(iter(docs), seed=SEED, batch_docs=7) == first
    shuffled = docs[:]
    random.Random(3).shuffle(shuffled)
    as_sets = {frozenset(cluster) for cluster in first}
    assert {frozenset(cluster) for cluster in near_duplicate_clusters(shuffled, seed=SEED)} == as_sets
    assert {frozenset(cluster) for cluster in near_duplicate_clusters(docs, seed=SEED + 1)} == as_sets
    params, other = MinHashParams(seed=SEED), MinHashParams(seed=SEED + 1)
    texts = [text for _, text in docs[:5]]
    assert np.array_equal(signatures_for_texts(texts, params)[0], signatures_for_texts(texts, params)[0])
    assert not np.array_equal(signatures_for_texts(texts, params)[0], signatures_for_texts(texts, other)[0])


def test_entry_point_edge_cases():
    assert near_duplicate_clusters([]) == []
    text = " ".join(_en_doc(random.Random(9), 80))
    assert near_duplicate_clusters([("a", text), ("b", "")]) == []
    assert near_duplicate_clusters([("a", text), ("b", text), ("c", ""), ("d", "")]) == [["a", "b"], ["c", "d"]]
    with pytest.raises(ValueError, match="duplicate document id 'a'"):
        near_duplicate_clusters([("a", "one"), ("b", "two"), ("a", "three")])


def test_pair_components_label_by_smallest_member():
    rng = random.Random(5)
    pairs = [(rng.randrange(200), rng.randrange(200)) for _ in range(150)]
    parent = list(range(200))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    nodes, root = pair_components(np.array(pairs))
    assert nodes.tolist() == sorted({node for pair in pairs for node in pair})
    assert root.tolist() == [min(m for m in nodes.tolist() if find(m) == find(n)) for n in nodes.tolist()]
    reversed_nodes, reversed_root = pair_components(np.array(pairs[::-1])[:, ::-1])
    assert np.array_equal(nodes, reversed_nodes) and np.array_equal(root, reversed_root)
