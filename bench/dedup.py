"""Dedup against its peers on one planted corpus: docs per CPU-second, peak RSS, precision and recall.

    PYTHONPATH=. python bench/dedup.py                    # all rows, a few minutes on 2 cores
    PYTHONPATH=. python bench/dedup.py --quick            # a smaller corpus, fewer repeats
    PYTHONPATH=. python bench/dedup.py --stage-docs 50000,200000   # the stage's flow-process memory per document

The corpus: English and Chinese documents from ../shared/data when present, else the embedded demo corpus.
Base documents that already resemble another base document (char 5-gram Jaccard >= 0.5) are dropped, so the
planted families are the only duplicates: a base and one or two copies with a few word (English) or character
(Chinese) edits, some with an exact copy too; other bases get a "half copy" (its first half, then another
document), a negative that tests precision.

Every method runs in its own child process and gets the documents as a list of (id, text); it returns clusters.
Its time is the best of `--repeats` runs in CPU seconds of the child (every thread, and any children), its
memory the child's peak RSS, also shown above the child's RSS before the first run ("+RSS"). Precision and
recall count the document pairs inside the clusters against the planted families (copies of one base link
through it, as clusters do). Same shingles for every row: char 5-grams of whitespace-normalised text (datatrove
also lower-cases and drops punctuation first), 128 permutations, threshold 0.8.

Rows: ours (`near_duplicate_clusters`, the stage's maths), ours with `auto` shingles (English as word 3-grams),
Rensa (RMinHash + RMinHashLSH), datasketch's batch API (MinHash.bulk + MinHashLSH) and datatrove's four minhash
steps. A peer that is not installed is skipped with a message: `pip install -e .[bench]` installs them.

`--stage-docs N1,N2` runs the whole stage (`dedup_corpus`, one process) on N1 and then N2 generated documents
(written first, as clean writes them) with one worker process, and prints the flow process's peak RSS, the
worker's, CPU seconds and the flow process's RSS slope in bytes per document.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from zero_chatgpt.config import DedupConfig
from zero_chatgpt.data_process.dedup import near_duplicate_clusters
from zero_chatgpt.data_process.minhash import MinHashParams, normalise, shingles

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
NUM_PERM, THRESHOLD, CHAR_NGRAM, SEED = 128, 0.8, 5, 1234
Clusters = list[list[str]]


# ----------------------------------------------------------------------------------------------- corpus


def base_documents(max_en: int, max_zh: int) -> tuple[list[tuple[str, str]], str]:
    """(language, text) of real documents long enough to carry a few edits, and where they came from."""
    en_path, zh_path = DATA_DIR / "en_pretrain.jsonl", DATA_DIR / "zh_pretrain.jsonl"
    if en_path.is_file() and zh_path.is_file():
        docs = []
        for language, path, wanted in (("en", en_path, max_en), ("zh", zh_path, max_zh)):
            with path.open(encoding="utf-8") as handle:
                texts = [json.loads(line)["text"] for line in handle]
            docs += [(language, text) for text in texts if len(normalise(text)) >= 120][:wanted]
        return docs, f"{DATA_DIR} (en_pretrain, zh_pretrain)"
    from zero_chatgpt.config import DemoCorpusConfig
    from zero_chatgpt.data_process.demo_corpus import demo_documents

    rows = [row for row in demo_documents(DemoCorpusConfig(), SEED) if row.get("planted") is None]
    docs = [(row["lang"], row["text"]) for row in rows if len(normalise(row["text"])) >= 120]
    return docs[: max_en + max_zh], "the embedded demo corpus"


def jaccard(first: str, second: str) -> float:
    params = MinHashParams(shingle="char", char_ngram=CHAR_NGRAM)
    a, b = set(shingles(first, params)), set(shingles(second, params))
    return len(a & b) / len(a | b)


def drop_resembling(docs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep one base of every group whose exact char 5-gram Jaccard reaches 0.5 (candidates from a permissive
    LSH run of ours, each confirmed exactly), so that unplanted duplicates cannot blur precision."""
    config = DedupConfig(threshold=0.4, shingle="char", num_perm=128, bands=32, rows=4)
    groups = near_duplicate_clusters(((str(i), text) for i, (_, text) in enumerate(docs)), config, seed=1)
    dropped = set()
    for group in groups:
        members = [int(i) for i in group]
        for i in members[1:]:
            if any(jaccard(docs[i][1], docs[j][1]) >= 0.5 for j in members if j != i and j not in dropped):
                dropped.add(i)
    return [doc for i, doc in enumerate(docs) if i not in dropped]


def edited_copy(language: str, text: str, rng: random.Random) -> str:
    """A near-copy: about one edit per 150 characters (substitute, delete or insert a word or a character)."""
    units = text.split(" ") if language == "en" else list(text)
    pool = [unit for unit in units if unit.strip()] or units
    for _ in range(max(1, len(text) // 150)):
        position = rng.randrange(len(units))
        action = rng.choice(("substitute", "delete", "insert"))
        if action == "substitute":
            units[position] = rng.choice(pool)
        elif action == "delete" and len(units) > 2:
            del units[position]
        else:
            units.insert(position, rng.choice(pool))
    return (" " if language == "en" else "").join(units)


def planted_corpus(quick: bool) -> dict:
    """Documents with planted families: {"docs": [(id, text)], "family": {id: family}, "language": {family: lang},
    "origin": str, "copy_jaccard": [...]}."""
    rng = random.Random(SEED)
    bases, origin = base_documents(*((300, 800) if quick else (586, 2000)))
    bases = drop_resembling(bases)
    docs, family, language, copy_jaccard = [], {}, {}, []

    def add(text: str, fam: int | None, lang: str) -> None:
        doc_id = f"{lang}-{len(docs):06d}"
        docs.append((doc_id, text))
        if fam is not None:
            family[doc_id] = fam
            language[fam] = lang

    others = {lang: [text for other_lang, text in bases if other_lang == lang] for lang in ("en", "zh")}
    for index, (lang, text) in enumerate(bases):
        roll = rng.random()
        if roll < 0.4:  # a family: the base, one or two edited copies, sometimes an exact copy
            add(text, index, lang)
            for _ in range(rng.choice((1, 1, 2))):
                copy = edited_copy(lang, text, rng)
                copy_jaccard.append(jaccard(text, copy))
                add(copy, index, lang)
            if rng.random() < 0.2:
                add(text, index, lang)
        elif roll < 0.55:  # a half copy: the first half of this base, then as much of another base
            add(text, None, lang)
            other = rng.choice([other for other in others[lang] if other != text])
            half = len(text) // 2
            add(text[:half] + other[: len(text) - half], None, lang)
        else:
            add(text, None, lang)
    order = list(range(len(docs)))
    rng.shuffle(order)
    return {
        "docs": [docs[i] for i in order],
        "family": family,
        "language": language,
        "origin": origin,
        "copy_jaccard": copy_jaccard,
    }


def pairs_of(clusters: Clusters) -> set[tuple[str, str]]:
    return {(a, b) for cluster in clusters for i, a in enumerate(sorted(cluster)) for b in sorted(cluster)[i + 1 :]}


def quality(clusters: Clusters, corpus: dict) -> dict[str, float]:
    """Pair precision over all found pairs, and pair recall per language of the planted families."""
    family, language = corpus["family"], corpus["language"]
    members: dict[int, list[str]] = {}
    for doc_id, fam in family.items():
        members.setdefault(fam, []).append(doc_id)
    truth = pairs_of(list(members.values()))
    found = pairs_of(clusters)
    true_found = {pair for pair in found if pair in truth}
    scores = {"precision": len(true_found) / len(found) if found else 1.0}
    for lang in ("zh", "en"):
        wanted = {pair for pair in truth if language[family[pair[0]]] == lang}
        scores[f"recall_{lang}"] = len(wanted & true_found) / len(wanted) if wanted else float("nan")
    return scores


# ---------------------------------------------------------------------------------------------- methods


def char_shingles(text: str) -> list[str]:
    """Char 5-grams of the normalised text, as peers that take token lists get them."""
    text = normalise(text)
    return [text] if len(text) <= CHAR_NGRAM else [text[i : i + CHAR_NGRAM] for i in range(len(text) - 4)]


def union_clusters(ids: list[str], pairs: list[tuple[int, int]]) -> Clusters:
    """Clusters of two or more from index pairs (a small union-find, the same for every peer)."""
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[str]] = {}
    for i, doc_id in enumerate(ids):
        groups.setdefault(find(i), []).append(doc_id)
    return [group for group in groups.values() if len(group) > 1]


def run_ours(docs: list[tuple[str, str]], shingle: str = "char") -> Clusters:
    config = DedupConfig(num_perm=NUM_PERM, threshold=THRESHOLD, shingle=shingle, char_ngram=CHAR_NGRAM)
    return near_duplicate_clusters(docs, config, seed=SEED)


def run_rensa(docs: list[tuple[str, str]]) -> Clusters:
    from rensa import RMinHash, RMinHashLSH

    ids = [doc_id for doc_id, _ in docs]
    minhashes = RMinHash.from_token_sets((char_shingles(text) for _, text in docs), NUM_PERM, SEED)
    index = RMinHashLSH(THRESHOLD, NUM_PERM, 16)  # 16 bands x 8 rows: bands must divide num_perm
    index.insert_many(minhashes)
    pairs = [
        (i, j)
        for i, candidates in enumerate(index.query_all(minhashes))
        for j in candidates
        if j > i and minhashes[i].jaccard(minhashes[j]) >= THRESHOLD
    ]
    return union_clusters(ids, pairs)


def run_datasketch(docs: list[tuple[str, str]]) -> Clusters:
    from datasketch import MinHash, MinHashLSH

    ids = [doc_id for doc_id, _ in docs]
    token_sets = ([piece.encode("utf-8") for piece in char_shingles(text)] for _, text in docs)
    minhashes = MinHash.bulk(token_sets, num_perm=NUM_PERM, seed=SEED)
    index = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    with index.insertion_session() as session:
        for i, minhash in enumerate(minhashes):
            session.insert(i, minhash)
    pairs = [
        (i, j)
        for i, minhash in enumerate(minhashes)
        for j in index.query(minhash)
        if j > i and minhash.jaccard(minhashes[j]) >= THRESHOLD
    ]
    return union_clusters(ids, pairs)


def run_datatrove(docs: list[tuple[str, str]]) -> Clusters:
    import struct

    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.utils.hashes import xxhash as datatrove_xxhash
    from datatrove.utils.word_tokenizers import WordTokenizer
    from xxhash import xxh64_intdigest

    # datatrove 0.10 hands xxhash a str, which xxhash >= 4 refuses: give it the UTF-8 bytes it hashed before.
    datatrove_xxhash.xxhash64 = lambda data: xxh64_intdigest(data.encode() if isinstance(data, str) else data)

    class Characters(WordTokenizer):
        """Every character a "word", so datatrove's 5-gram shingles are char 5-grams like the other rows'."""

        def word_tokenize(self, text: str) -> list[str]:
            return list(normalise(text))

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    # datatrove takes every band match as a duplicate (no Jaccard check): the banding of the other rows.
    config = MinhashConfig(n_grams=CHAR_NGRAM, num_buckets=9, hashes_per_bucket=13, seed=SEED)
    with tempfile.TemporaryDirectory() as work:
        documents = [Document(text=text, id=doc_id) for doc_id, text in docs]
        steps = [
            (MinhashDedupSignature(output_folder=f"{work}/sigs", config=config, language=Characters()), 1),
            (MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=config), 9),
            (
                MinhashDedupCluster(
                    input_folder=f"{work}/buckets",
                    output_folder=f"{work}/clusters",
                    config=config,
                    save_cluster_id=True,
                ),
                1,
            ),
        ]
        for index, (step, tasks) in enumerate(steps):
            pipeline = [documents, step] if index == 0 else [step]
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs{index}").run()
        raw = Path(f"{work}/clusters/000000.clusters").read_bytes()
    groups: dict[int, list[str]] = {}
    for doc, cluster in struct.iter_unpack("<II", raw):
        groups.setdefault(cluster, []).append(docs[doc][0])
    return [group for group in groups.values() if len(group) > 1]


METHODS: dict[str, tuple[Callable[[list[tuple[str, str]]], Clusters], str | None]] = {
    "ours (char 5-grams)": (run_ours, None),
    "ours (auto shingles)": (lambda docs: run_ours(docs, "auto"), None),
    "Rensa": (run_rensa, "rensa"),
    "datasketch batch": (run_datasketch, "datasketch"),
    "datatrove": (run_datatrove, "datatrove"),
}


# --------------------------------------------------------------------------------------- child process


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB (the kernel's high-water mark, VmHWM)."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM:"))


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def child_run(method: str, corpus_path: str, repeats: int) -> dict:
    with open(corpus_path, "rb") as handle:
        corpus = pickle.load(handle)
    run, _ = METHODS[method]
    rss_before = current_rss_mb()
    timings, clusters = [], []
    for _ in range(repeats):
        start = cpu_seconds()
        clusters = run(corpus["docs"])
        timings.append(cpu_seconds() - start)
    return {"cpu_s": min(timings), "rss_mb": rss_mb(), "rss_before_mb": rss_before, **quality(clusters, corpus)}


def in_child(args: list[str]) -> dict:
    """Run this script with `args` in a new process and return the JSON object it prints last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- stage run


def write_stage_corpus(num_docs: int, directory: Path) -> None:
    """`num_docs` documents as clean would write them (20,000-row shards): words and characters drawn from
    the base documents' own frequencies, a tenth of them near-copies of another."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(SEED)
    bases, _ = base_documents(586, 2000)
    words = np.array(" ".join(text for lang, text in bases if lang == "en").split())
    chars = np.array(list("".join(normalise(text).replace(" ", "") for lang, text in bases if lang == "zh")))
    for shard, start in enumerate(range(0, num_docs, 20_000)):
        texts = []
        for _ in range(start, min(num_docs, start + 20_000)):
            if texts and rng.random() < 0.1:
                copy = list(texts[int(rng.integers(len(texts)))])
                copy[int(rng.integers(len(copy)))] = "x"
                texts.append("".join(copy))
            elif rng.random() < 0.5:
                texts.append(" ".join(rng.choice(words, size=int(rng.integers(50, 400)))))
            else:
                texts.append("".join(rng.choice(chars, size=int(rng.integers(100, 1000)))))
        ids = [f"doc-{start + i}" for i in range(len(texts))]
        table = pa.table({"id": ids, "text": texts, "source": ["bench"] * len(texts)})
        pq.write_table(table, directory / f"part_{shard:05d}.parquet")


def one_worker_map(fn: Callable, items: list) -> list:
    """Signature jobs in one worker process, so the child's own peak RSS is the flow process's alone."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1) as pool:
        return list(pool.map(fn, items))


def child_stage(clean_dir: str) -> dict:
    from zero_chatgpt.data_process.dedup import dedup_corpus

    rss_before = current_rss_mb()
    start = cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        metrics = dedup_corpus(DedupConfig(), Path(clean_dir), Path(out), seed=SEED, parallel_map=one_worker_map)
    return {
        "docs": metrics["docs_in"],
        "docs_out": metrics["docs_out"],
        "cpu_s": cpu_seconds() - start,
        "rss_mb": rss_mb(),
        "rss_before_mb": rss_before,
        "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


# -------------------------------------------------------------------------------------------------- main


def installed(module: str | None) -> bool:
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def compare_peers(args: argparse.Namespace) -> None:
    corpus = planted_corpus(args.quick)
    lengths = [len(text) for _, text in corpus["docs"]]
    copies = np.array(corpus["copy_jaccard"])
    families = list(corpus["language"].values())
    print(
        f"corpus: {len(corpus['docs'])} docs from {corpus['origin']}; {sum(lengths) / 1e6:.1f}M chars, median "
        f"{int(np.median(lengths))}; {len(families)} planted families (zh {families.count('zh')}, en "
        f"{families.count('en')}); edited copies' char 5-gram Jaccard min {copies.min():.3f}, median "
        f"{np.median(copies):.3f}"
    )
    print(f"num_perm={NUM_PERM}, threshold={THRESHOLD}, char {CHAR_NGRAM}-grams; best of {args.repeats} runs\n")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.pickle"
        corpus_path.write_bytes(pickle.dumps(corpus))
        for method, (_, module) in METHODS.items():
            if args.only and method.split(" ")[0].lower() not in args.only:
                continue
            if not installed(module):
                print(f"{method}: skipped, `{module}` is not installed (pip install -e .[bench])")
                continue
            repeats = 1 if method in ("datasketch batch", "datatrove") else args.repeats
            try:
                results[method] = in_child(["--child", method, "--corpus", str(corpus_path), "--repeats", str(repeats)])
            except RuntimeError as err:
                print(f"{method}: skipped, it failed: {err}")
    docs = len(corpus["docs"])
    rensa = results.get("Rensa")
    header = f"{'method':<22}{'docs/CPU-s':>11}{'vs Rensa':>9}{'peak RSS MB':>12}{'+RSS MB':>9}"
    print(header + f"{'precision':>10}{'recall zh':>10}{'recall en':>10}")
    for method, result in results.items():
        speed = docs / result["cpu_s"]
        ratio = f"{speed / (docs / rensa['cpu_s']):.2f}x" if rensa else "-"
        print(
            f"{method:<22}{speed:>11.0f}{ratio:>9}{result['rss_mb']:>12.0f}"
            f"{result['rss_mb'] - result['rss_before_mb']:>9.0f}{result['precision']:>10.3f}"
            f"{result['recall_zh']:>10.3f}{result['recall_en']:>10.3f}"
        )
    sys.stdout.flush()
    print(json.dumps({"docs": docs, "results": results}))


def stage_memory(sizes: list[int]) -> None:
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as clean_dir:
            write_stage_corpus(size, Path(clean_dir))
            rows.append(in_child(["--child-stage", clean_dir]))
    print("the stage, one worker process; CPU s counts both processes; flow = the process that runs dedup_corpus")
    print(f"{'docs':>9}{'CPU s':>8}{'docs/CPU-s':>11}{'flow peak MB':>13}{'flow before MB':>15}{'worker peak MB':>15}")
    for row in rows:
        print(
            f"{row['docs']:>9}{row['cpu_s']:>8.1f}{row['docs'] / row['cpu_s']:>11.0f}{row['rss_mb']:>13.0f}"
            f"{row['rss_before_mb']:>15.0f}{row['worker_rss_mb']:>15.0f}"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        slope = (last["rss_mb"] - first["rss_mb"]) * 2**20 / (last["docs"] - first["docs"])
        print(f"flow peak RSS slope: {slope:.0f} bytes per document")
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller corpus and fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="runs per method (best counts)")
    parser.add_argument("--only", nargs="*", help="first words of the methods to run, lower case (ours, rensa...)")
    parser.add_argument("--stage-docs", help="comma-separated corpus sizes for the stage memory run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-stage", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_run(args.child, args.corpus, args.repeats)))
    elif args.child_stage:
        print(json.dumps(child_stage(args.child_stage)))
    elif args.stage_docs:
        stage_memory([int(size) for size in args.stage_docs.split(",")])
    else:
        args.repeats = args.repeats or (2 if args.quick else 3)
        compare_peers(args)


if __name__ == "__main__":
    main()
