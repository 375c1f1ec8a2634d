"""Benchmark: the data half (clean -> dedup -> train_tokenizer -> shard) at corpus scale, through the real CLI.

For each `--docs` size it writes one JSONL file of that many documents (Chinese and English, built from real
text: the shared pretraining samples when present, else the demo corpus), with planted exact and near copies
and a few rows clean must reject. Then, for each `--version` of the code, it runs `zero-chatgpt run --until
<stage>` once per data stage (each run reuses the stages before it, so each stage's peak RSS is its own and not
what an earlier stage left in the process), with no PREFECT_API_URL (a temporary server, as a user's first
run), sampling the run's process tree every 0.2 s.

Per stage it prints docs per CPU-second (main process, its workers and the Prefect server together), the CPU
seconds of the main process alone (the part more cores do not shorten), and peak RSS of the main process, of
one worker and of the whole tree. `startup` is the first run's start (Prefect server, source checks) and
`shutdown` its end. Between consecutive sizes: how docs per CPU-second and peak RSS change. From the two largest
sizes: a linear fit per stage, extrapolated to Zero-Chatgpt's 5.63M documents on 2 and on 64 cores (time = main
CPU + other CPU / cores; memory = main + cores x one worker + the server): an estimate for documents as long as
ours. A stage whose memory is capped by config (train_tokenizer's sample) only extrapolates sensibly from sizes
that both reach the cap. Last, the versions side by side; the last line is one JSON object.

    python bench/data_scale.py --docs 10000 100000
    python bench/data_scale.py --docs 10000 100000 --version before=/tmp/old/src --version after=/tmp/new/src

Each IMPORT_DIR must hold an importable `zero_chatgpt` package of that version (put first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_STAGES = ("clean", "dedup", "train_tokenizer", "shard")
STAGES = ("startup", *DATA_STAGES, "shutdown")
# Not stages: the run's start (Prefect server, source checks) and its end; their cost does not grow with the corpus.
FIXED_COST_STAGES = ("startup", "shutdown")
ZERO_CHATGPT_DOCS = 5_630_000
SAMPLE_SECONDS = 0.2
# Document lengths in characters: log-normal around these medians, like encyclopedia pages of mixed length.
MEDIAN_CHARS = {"zh": 700, "en": 1200}
ZH_SHARE = 0.7
EXACT_COPY_SHARE = 0.02
NEAR_COPY_SHARE = 0.05
REJECT_SHARE = 0.01  # too short, or not JSON at all
NEAR_COPY_EDITS = 0.01  # share of characters replaced in a near copy (Jaccard of 5-grams stays ~0.9)
RECENT_DOCS = 2000  # copies are made of the last this many documents, so the generator holds no corpus


# --------------------------------------------------------------------------------------------- corpus


def text_pools(data_dir: Path) -> tuple[dict[str, list[str]], str]:
    """Lines of real text per language to build documents from, and where they came from."""
    files = {"zh": data_dir / "zh_pretrain.jsonl", "en": data_dir / "en_pretrain.jsonl"}
    if all(path.is_file() for path in files.values()):
        pools = {
            lang: [
                line.strip()
                for row in path.open(encoding="utf-8")
                for line in json.loads(row)["text"].split("\n")
                if len(line.strip()) >= 4
            ]
            for lang, path in files.items()
        }
        return pools, "shared pretraining samples (" + ", ".join(p.name for p in files.values()) + ")"
    from zero_chatgpt.config import DemoCorpusConfig
    from zero_chatgpt.data_process.demo_corpus import demo_documents

    pools: dict[str, list[str]] = {"zh": [], "en": []}
    for doc in demo_documents(DemoCorpusConfig(), seed=0):
        if doc["planted"] is None:
            pools[doc["lang"]].extend(line.strip() for line in doc["text"].split("\n") if line.strip())
    return pools, "the embedded demo corpus"


def new_document(rng: random.Random, pools: dict[str, list[str]]) -> str:
    """Random lines of one language until a log-normal target length: two documents rarely share much."""
    lang = "zh" if rng.random() < ZH_SHARE else "en"
    target = min(20_000, int(rng.lognormvariate(math.log(MEDIAN_CHARS[lang]), 0.6)))
    lines, chars = [], 0
    while chars < target:
        line = rng.choice(pools[lang])
        lines.append(line)
        chars += len(line) + 1
    return "\n".join(lines)


def near_copy(rng: random.Random, text: str, alphabet: str) -> str:
    """`text` with about `NEAR_COPY_EDITS` of its characters replaced."""
    chars = list(text)
    for _ in range(max(1, int(len(chars) * NEAR_COPY_EDITS))):
        chars[rng.randrange(len(chars))] = rng.choice(alphabet)
    return "".join(chars)


def write_corpus(path: Path, num_docs: int, pools: dict[str, list[str]], seed: int) -> dict[str, int]:
    """Write `num_docs` JSONL rows; returns how many of each kind were planted."""
    rng = random.Random(seed)
    alphabet = "".join(sorted({c for line in pools["zh"][:2000] + pools["en"][:2000] for c in line}))
    recent: list[str] = []
    counts = {"new": 0, "exact_copy": 0, "near_copy": 0, "reject": 0}
    with path.open("w", encoding="utf-8") as out:
        for _ in range(num_docs):
            draw = rng.random()
            if recent and draw < EXACT_COPY_SHARE:
                kind, text = "exact_copy", rng.choice(recent)
            elif recent and draw < EXACT_COPY_SHARE + NEAR_COPY_SHARE:
                kind, text = "near_copy", near_copy(rng, rng.choice(recent), alphabet)
            elif draw < EXACT_COPY_SHARE + NEAR_COPY_SHARE + REJECT_SHARE:
                counts["reject"] += 1
                out.write("{not json\n" if rng.random() < 0.5 else json.dumps({"text": "too short"}) + "\n")
                continue
            else:
                kind, text = "new", new_document(rng, pools)
                recent.append(text)
                if len(recent) > RECENT_DOCS:
                    recent.pop(rng.randrange(len(recent)))
            counts[kind] += 1
            out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return counts


def write_preset(path: Path, corpus: Path, workers: int) -> None:
    """The tiny preset reading `corpus` instead of the demo corpus."""
    path.write_text(
        "base: tiny\n"
        f"resources: {{task_runner: processes, workers: {workers}}}\n"
        f"data: {{sources: [{{kind: jsonl, path: {json.dumps(str(corpus))}}}]}}\n",
        encoding="utf-8",
    )


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class StageFigures:
    """What one stage cost: CPU seconds (main process alone, and the whole tree) and peak RSS in MB."""

    seconds: float = 0.0
    cpu_main: float = 0.0
    cpu_tree: float = 0.0
    rss_main_mb: float = 0.0
    rss_worker_mb: float = 0.0
    rss_server_mb: float = 0.0
    rss_tree_mb: float = 0.0
    docs_in: int = 0


@dataclass
class TreeSample:
    """CPU seconds so far and RSS now of a process tree."""

    cpu_main: float = 0.0
    cpu_tree: float = 0.0
    rss_main: int = 0
    rss_worker: int = 0
    rss_server: int = 0
    rss_tree: int = 0
    pids: set[int] = field(default_factory=set)


def sample_tree(main: psutil.Process) -> TreeSample:
    """CPU of the tree: every live process's own time plus what its reaped children used."""
    sample = TreeSample()
    try:
        processes = [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return sample
    for process in processes:
        try:
            times, rss = process.cpu_times(), process.memory_info().rss
            is_server = process is not main and "uvicorn" in " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        own = times.user + times.system
        sample.cpu_tree += own + times.children_user + times.children_system
        sample.rss_tree += rss
        sample.pids.add(process.pid)
        if process is main:
            sample.cpu_main, sample.rss_main = own, rss
        elif is_server:
            sample.rss_server = max(sample.rss_server, rss)
        else:
            sample.rss_worker = max(sample.rss_worker, rss)
    return sample


def run_phase(root: Path, stage: str, since: float) -> str:
    """Where a run up to `stage` started at `since` is: `startup` (Prefect server, source checks, cached stages
    before it), `stage` once its build dir appears, `shutdown` once this run's `latest.json` lists it."""
    latest = root / "latest.json"
    try:
        finished = json.loads(latest.read_text(encoding="utf-8")) if latest.stat().st_mtime >= since else {}
    except (OSError, ValueError):
        finished = {}
    if stage in finished:
        return "shutdown"
    return stage if any((root / stage).glob(".tmp-*")) else "startup"


def run_data_half(preset: Path, root: Path, env: dict[str, str], log_path: Path) -> dict[str, StageFigures]:
    """One CLI run per stage (`--until clean`, then `--until dedup` reusing clean, ...), so each stage's peak RSS
    is its own, not what an earlier stage left in the process. `startup` and `shutdown` are the first run's."""
    figures: dict[str, StageFigures] = {}
    for stage in DATA_STAGES:
        phases = run_until(stage, preset, root, env, log_path.with_suffix(f".{stage}.log"))
        figures[stage] = phases[stage]
        if stage == DATA_STAGES[0]:
            figures["startup"], figures["shutdown"] = phases["startup"], phases["shutdown"]
    return {stage: figures[stage] for stage in STAGES}


def run_until(stage: str, preset: Path, root: Path, env: dict[str, str], log_path: Path) -> dict[str, StageFigures]:
    """Run the CLI up to `stage`, booking each sample's CPU and memory to the phase of the run at the time."""
    command = [sys.executable, "-m", "zero_chatgpt.cli", "run", "--preset", str(preset), "--root", str(root)]
    phases = {phase: StageFigures() for phase in ("startup", stage, "shutdown")}
    children_before = _children_cpu()
    current, last, mark = "startup", TreeSample(), (0.0, 0.0, time.monotonic())
    started = time.time()
    with log_path.open("w") as log:
        child = subprocess.Popen([*command, "--until", stage], env=env, stdout=log, stderr=subprocess.STDOUT)
        main = psutil.Process(child.pid)
        while child.poll() is None:
            sample = sample_tree(main)
            if sample.pids:
                last = sample
            phase = run_phase(root, stage, started)
            if phase != current:
                # A stage over between two samples still gets the time since the last one.
                mark = _book(phases[stage if phase == "shutdown" else current], last, mark)
                current = phase
            entry = phases[current]
            entry.rss_main_mb = max(entry.rss_main_mb, last.rss_main / 2**20)
            entry.rss_worker_mb = max(entry.rss_worker_mb, last.rss_worker / 2**20)
            entry.rss_server_mb = max(entry.rss_server_mb, last.rss_server / 2**20)
            entry.rss_tree_mb = max(entry.rss_tree_mb, last.rss_tree / 2**20)
            time.sleep(SAMPLE_SECONDS)
    if child.returncode != 0:
        raise RuntimeError(f"the run failed (exit {child.returncode}); see {log_path}")
    _book(phases[current], last, mark)
    # The exact total of the finished tree: what the samples could not see happened at the end.
    unseen = _children_cpu() - children_before - sum(entry.cpu_tree for entry in phases.values())
    phases[current].cpu_tree += max(0.0, unseen)
    return phases


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _book(entry: StageFigures, last: TreeSample, mark: tuple[float, float, float]) -> tuple[float, float, float]:
    """Give `entry` the CPU and time since `mark`; returns the new mark."""
    now = time.monotonic()
    entry.cpu_main += last.cpu_main - mark[0]
    entry.cpu_tree += last.cpu_tree - mark[1]
    entry.seconds += now - mark[2]
    return last.cpu_main, last.cpu_tree, now


def stage_inputs(root: Path, num_docs: int, figures: dict[str, StageFigures]) -> dict[str, float]:
    """Documents each stage read (from the manifests) and the clean/dedup/shard figures worth printing."""
    latest = json.loads((root / "latest.json").read_text(encoding="utf-8"))
    metrics = {
        stage: json.loads((Path(entry["path"]) / "manifest.json").read_text(encoding="utf-8"))["metrics"]
        for stage, entry in latest.items()
    }
    inputs = {
        "startup": num_docs,
        "clean": num_docs,
        "dedup": metrics["clean"]["docs_out"],
        "train_tokenizer": metrics["dedup"]["docs_out"],
        "shard": metrics["dedup"]["docs_out"],
        "shutdown": num_docs,
    }
    for stage, docs in inputs.items():
        figures[stage].docs_in = docs
    return {
        "clean_docs_out": metrics["clean"]["docs_out"],
        "clean_shards": metrics["clean"]["shards"],
        "dedup_docs_out": metrics["dedup"]["docs_out"],
        "train_tokens": metrics["shard"]["train_tokens"],
        "val_tokens": metrics["shard"]["val_tokens"],
        "tokenizer_sample_chars": metrics["train_tokenizer"]["sample_chars"],
    }


# ------------------------------------------------------------------------------------------ reporting


def print_size(title: str, figures: dict[str, StageFigures]) -> None:
    print(f"\n{title}")
    print(
        f"{'stage':<16}{'wall s':>8}{'cpu s':>9}{'main cpu':>9}{'docs/cpu-s':>12}"
        f"{'RSS main':>10}{'worker':>8}{'server':>8}{'tree':>8}  (MB)"
    )
    for stage, entry in figures.items():
        rate = entry.docs_in / entry.cpu_tree if entry.cpu_tree > 0 else float("nan")
        print(
            f"{stage:<16}{entry.seconds:>8.1f}{entry.cpu_tree:>9.1f}{entry.cpu_main:>9.1f}{rate:>12,.0f}"
            f"{entry.rss_main_mb:>10.0f}{entry.rss_worker_mb:>8.0f}{entry.rss_server_mb:>8.0f}{entry.rss_tree_mb:>8.0f}"
        )
    total = sum(entry.cpu_tree for entry in figures.values())
    docs = figures["clean"].docs_in
    print(f"{'all':<16}{sum(e.seconds for e in figures.values()):>8.1f}{total:>9.1f}{'':>9}{docs / total:>12,.0f}")


def slopes(small: tuple[int, dict[str, StageFigures]], large: tuple[int, dict[str, StageFigures]]) -> dict:
    """Per stage, from the smaller to the larger size: docs per CPU-second and peak RSS, before and after."""
    (n_small, f_small), (n_large, f_large) = small, large
    rows = {}
    for stage in STAGES:
        a, b = f_small[stage], f_large[stage]
        rows[stage] = {
            "docs_per_cpu_s": [_rate(a), _rate(b)],
            "rss_main_mb": [round(a.rss_main_mb), round(b.rss_main_mb)],
            "rss_tree_mb": [round(a.rss_tree_mb), round(b.rss_tree_mb)],
            "rss_main_kb_per_doc": round((b.rss_main_mb - a.rss_main_mb) * 1024 / (n_large - n_small), 3),
        }
    print(f"\nfrom {n_small:,} to {n_large:,} documents")
    print(f"{'stage':<16}{'docs/cpu-s':>22}{'RSS main MB':>16}{'RSS tree MB':>16}{'main KB/doc':>13}")
    for stage, row in rows.items():
        rate, main, tree = row["docs_per_cpu_s"], row["rss_main_mb"], row["rss_tree_mb"]
        print(
            f"{stage:<16}{rate[0]:>10,.0f} ->{rate[1]:>8,.0f}{main[0]:>7} ->{main[1]:>6}{tree[0]:>7} ->{tree[1]:>6}"
            f"{row['rss_main_kb_per_doc']:>13.3f}"
        )
    return rows


def _rate(entry: StageFigures) -> float:
    return round(entry.docs_in / entry.cpu_tree, 1) if entry.cpu_tree > 0 else float("nan")


def extrapolate(small: tuple[int, dict[str, StageFigures]], large: tuple[int, dict[str, StageFigures]]) -> dict:
    """A line through both sizes per stage, evaluated at Zero-Chatgpt's corpus size, on 2 and on 64 cores."""
    (n_small, f_small), (n_large, f_large) = small, large

    def at_target(low: float, high: float) -> float:
        slope = (high - low) / (n_large - n_small)
        return max(high, high + slope * (ZERO_CHATGPT_DOCS - n_large))

    out: dict[str, dict] = {}
    for cores in (2, 64):
        hours, peak_gb = 0.0, 0.0
        for stage in STAGES:
            a, b = f_small[stage], f_large[stage]
            if stage in FIXED_COST_STAGES:
                a = b  # a constant: a line through its two (noisy) figures would extrapolate noise
            main_cpu = at_target(a.cpu_main, b.cpu_main)
            other_cpu = at_target(a.cpu_tree - a.cpu_main, b.cpu_tree - b.cpu_main)
            hours += (main_cpu + other_cpu / cores) / 3600
            main_mb = at_target(a.rss_main_mb, b.rss_main_mb)
            worker_mb = at_target(a.rss_worker_mb, b.rss_worker_mb)
            tree_mb = main_mb + cores * worker_mb + b.rss_server_mb
            peak_gb = max(peak_gb, tree_mb / 1024)
            out.setdefault(stage, {})[f"{cores}_cores"] = {
                "hours": round((main_cpu + other_cpu / cores) / 3600, 3),
                "main_gb": round(main_mb / 1024, 2),
                "tree_gb": round(tree_mb / 1024, 2),
            }
        out.setdefault("all", {})[f"{cores}_cores"] = {"hours": round(hours, 2), "peak_tree_gb": round(peak_gb, 2)}
    print(f"\nextrapolated to {ZERO_CHATGPT_DOCS:,} documents (lines through {n_small:,} and {n_large:,})")
    print(f"{'stage':<16}{'2 cores: h':>12}{'main GB':>9}{'tree GB':>9}{'64 cores: h':>13}{'main GB':>9}{'tree GB':>9}")
    for stage in STAGES:
        two, many = out[stage]["2_cores"], out[stage]["64_cores"]
        print(
            f"{stage:<16}{two['hours']:>12.2f}{two['main_gb']:>9.2f}{two['tree_gb']:>9.2f}"
            f"{many['hours']:>13.2f}{many['main_gb']:>9.2f}{many['tree_gb']:>9.2f}"
        )
    two, many = out["all"]["2_cores"], out["all"]["64_cores"]
    print(
        f"{'all (peak)':<16}{two['hours']:>12.2f}{'':>9}{two['peak_tree_gb']:>9.2f}{many['hours']:>13.2f}{'':>9}"
        f"{many['peak_tree_gb']:>9.2f}"
    )
    return out


def side_by_side(results: dict[str, list[tuple[int, dict[str, StageFigures]]]]) -> None:
    """One line per size and stage: each version's docs per CPU-second, main CPU and peak RSS, next to each other."""
    names = list(results)
    header = "".join(f"{'| ' + name:>40}" for name in names)
    print(f"\nside by side{header}")
    columns = "".join(f"{'docs/cpu-s':>12}{'main cpu':>9}{'RSS main':>9}{'tree MB':>10}" for _ in names)
    print(f"{'docs':>9} {'stage':<16}{columns}")
    for index, (num_docs, _) in enumerate(results[names[0]]):
        for stage in STAGES:
            cells = ""
            for name in names:
                entry = results[name][index][1][stage]
                cells += (
                    f"{_rate(entry):>12,.0f}{entry.cpu_main:>9.1f}{entry.rss_main_mb:>9.0f}{entry.rss_tree_mb:>10.0f}"
                )
            print(f"{num_docs:>9,} {stage:<16}{cells}")
        totals = ""
        for name in names:
            figures = results[name][index][1]
            cpu = sum(entry.cpu_tree for entry in figures.values())
            main_cpu = sum(entry.cpu_main for entry in figures.values())
            peak_main = max(entry.rss_main_mb for entry in figures.values())
            peak_tree = max(entry.rss_tree_mb for entry in figures.values())
            totals += f"{num_docs / cpu:>12,.0f}{main_cpu:>9.1f}{peak_main:>9.0f}{peak_tree:>10.0f}"
        print(f"{num_docs:>9,} {'all (peaks)':<16}{totals}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes")
    parser.add_argument("--workers", type=int, default=2, help="resources.workers of the run")
    parser.add_argument(
        "--version",
        dest="versions",
        action="append",
        default=[],
        metavar="NAME=IMPORT_DIR",
        help="run the code importable from IMPORT_DIR (put first on PYTHONPATH) as NAME; repeat to compare "
        "versions on the same corpora, one after another per size (default: the installed code)",
    )
    parser.add_argument("--text", type=Path, default=SHARED_DATA, help="dir with {zh,en}_pretrain.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep corpora, roots and logs in this directory")
    args = parser.parse_args(argv)
    versions = dict(version.split("=", 1) for version in args.versions) or {"installed": ""}

    pools, origin = text_pools(args.text)
    print(f"text from {origin}: {len(pools['zh']):,} zh and {len(pools['en']):,} en lines")
    work = args.keep or Path(tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[tuple[int, dict[str, StageFigures]]]] = {name: [] for name in versions}
    report: dict = {"text": origin, "workers": args.workers, "versions": versions, "sizes": {}}
    for num_docs in sorted(args.docs):
        corpus, preset = work / f"corpus-{num_docs}.jsonl", work / f"preset-{num_docs}.yaml"
        planted = write_corpus(corpus, num_docs, pools, args.seed)
        write_preset(preset, corpus, args.workers)
        print(f"\ncorpus of {num_docs:,} documents: {corpus.stat().st_size / 2**20:.0f} MB, planted {planted}")
        report["sizes"][num_docs] = {"planted": planted}
        for name, import_dir in versions.items():
            env = {**os.environ, "PREFECT_HOME": str(work / f"prefect-home-{name}"), "OMP_NUM_THREADS": "1"}
            env.pop("PREFECT_API_URL", None)  # a user's first run: the CLI starts its own temporary server
            if import_dir:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [import_dir, env.get("PYTHONPATH")]))
            root = work / f"root-{name}-{num_docs}"
            figures = run_data_half(preset, root, env, work / f"run-{name}-{num_docs}.log")
            outputs = stage_inputs(root, num_docs, figures)
            print_size(f"{name}, {num_docs:,} documents", figures)
            print(f"  outputs {outputs}")
            results[name].append((num_docs, figures))
            report["sizes"][num_docs][name] = {
                "outputs": outputs,
                "stages": {stage: asdict(entry) for stage, entry in figures.items()},
            }
    for name, sizes in results.items():
        for small, large in zip(sizes, sizes[1:]):
            print(f"\n[{name}]", end="")
            report.setdefault("slopes", {}).setdefault(name, {})[f"{small[0]}->{large[0]}"] = slopes(small, large)
        if len(sizes) >= 2:
            print(f"\n[{name}]", end="")
            report.setdefault("extrapolated", {})[name] = extrapolate(sizes[-2], sizes[-1])
    side_by_side(results)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
