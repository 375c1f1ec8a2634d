"""The flow end to end: cached reruns, config changes invalidate only downstream, deleted artifacts rebuild."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from zero_chatgpt.artifacts import read_manifest
from zero_chatgpt.cli import main
from zero_chatgpt.config import load_config, route_stages

# The stages the tiny preset runs: from scratch, so no base_model stage.
PIPELINE_STAGES = route_stages(load_config("tiny"))

pytestmark = pytest.mark.usefixtures("prefect_api")

# Training stages are shortened here: these tests are about caching, not about model quality.
FAST = [
    "pretrain.optim.max_steps=12",
    "pretrain.optim.eval_every=6",
    "pretrain.optim.checkpoint_every=6",
    "sft.optim.max_steps=6",
    "sft.optim.eval_every=3",
    "build_prefs.max_prompts=24",
    "build_prefs.max_new_tokens=12",
    "train_rm.optim.max_steps=4",
    "train_rm.optim.eval_every=2",
    "ppo.optim.max_steps=2",
    "ppo.rollout_batch_size=8",
    "ppo.max_new_tokens=8",
    "ppo.num_eval_prompts=8",
    "evaluate.max_prompts=8",
    "evaluate.max_questions=8",
    "evaluate.max_new_tokens=8",
    "train_rm.judge_optim.max_steps=4",
    "evaluate.num_samples=1",
]


def run_cli(root: Path, *extra: str) -> tuple[dict, float]:
    started = time.perf_counter()
    assert main(["run", "--preset", "tiny", "--root", str(root), *extra]) == 0
    seconds = time.perf_counter() - started
    return json.loads((root / "latest.json").read_text(encoding="utf-8")), seconds


def clean_docs_out(latest: dict) -> int:
    return json.loads((Path(latest["clean"]["path"]) / "manifest.json").read_text(encoding="utf-8"))["metrics"][
        "docs_out"
    ]


def statuses(latest: dict) -> dict[str, str]:
    return {stage: entry["status"] for stage, entry in latest.items()}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory, prefect_api):
    """One real run of the tiny preset; tests copy it instead of paying for it again."""
    root = tmp_path_factory.mktemp("tiny-run")
    latest, seconds = run_cli(root, *[f"--set={s}" for s in FAST])
    return root, latest, seconds


def copy_root(tiny_root, tmp_path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(tiny_root[0], root)
    return root


def test_first_run_builds_every_stage(tiny_root):
    root, latest, _ = tiny_root
    assert list(latest) == list(PIPELINE_STAGES)
    assert set(statuses(latest).values()) == {"ran"}
    # Prefect's cached stage records are JSON data, not pickles.
    records = [path for path in (root / ".prefect-results").rglob("*") if path.is_file()]
    assert len(records) >= len(PIPELINE_STAGES) - 1
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["metadata"]["serializer"]["type"] == "json", path
        assert json.loads(record["result"])["path"].startswith(str(root))
    for stage, entry in latest.items():
        manifest = read_manifest(entry["path"])
        assert manifest is not None and manifest["stage"] == stage
        assert Path(entry["path"]).parent == root / stage
        assert manifest["fingerprint"].startswith(Path(entry["path"]).name)


def test_second_run_is_fully_cached_and_runs_no_stage_body(tiny_root, monkeypatch):
    root, first, first_seconds = tiny_root

    def must_not_run(*args, **kwargs):
        raise AssertionError("a stage task body ran although its Prefect cache record was valid")

    # Every stage task reaches its body through run_stage, directly or via tasks.training.run_training_stage.
    for stage in PIPELINE_STAGES:
        module = importlib.import_module(f"tasks.{stage}")
        assert hasattr(module, "run_stage") or hasattr(module, "run_training_stage"), stage
        if hasattr(module, "run_stage"):
            monkeypatch.setattr(module, "run_stage", must_not_run)
    monkeypatch.setattr(importlib.import_module("zero_chatgpt.tasks.training"), "run_stage", must_not_run)
    manifests_before = {s: (Path(e["path"]) / "manifest.json").stat().st_mtime_ns for s, e in first.items()}
    latest, seconds = run_cli(root, *[f"--set={s}" for s in FAST])
    assert set(statuses(latest).values()) == {"cached"}
    assert {s: e["path"] for s, e in latest.items()} == {s: e["path"] for s, e in first.items()}
    manifests_after = {s: (Path(e["path"]) / "manifest.json").stat().st_mtime_ns for s, e in latest.items()}
    assert manifests_after == manifests_before, "a cached run must not rewrite any artifact"
    assert seconds < first_seconds / 2, (seconds, first_seconds)


def test_a_run_with_nothing_to_build_is_answered_without_prefect(tiny_root, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import zero_chatgpt.flows.pipeline as pipeline

    root = copy_root(tiny_root, tmp_path)
    config = load_config("tiny", set_options=FAST)
    latest = pipeline.cached_route(config, root)
    assert list(latest) == list(PIPELINE_STAGES) and set(statuses(latest).values()) == {"cached"}
    assert {s: e["fingerprint"] for s, e in latest.items()} == {s: e["fingerprint"] for s, e in tiny_root[1].items()}
    assert list(pipeline.cached_route(config, root, until="dedup")) == ["clean", "dedup"]
    assert pipeline.cached_route(config, root, force=["sft"]) is None
    assert pipeline.cached_route(load_config("tiny", set_options=[*FAST, "ppo.optim.max_steps=3"]), root) is None

    def flow_must_not_start(**parameters):
        raise AssertionError("the flow started although every stage was cached")

    (root / "latest.json").unlink()
    monkeypatch.setattr(pipeline, "zero_chatgpt", flow_must_not_start)
    with temporary_settings(updates={PREFECT_API_URL: None}):  # no server configured: the CLI's fast path
        assert main(["run", "--preset", "tiny", "--root", str(root), *[f"--set={s}" for s in FAST]]) == 0
    assert json.loads((root / "latest.json").read_text(encoding="utf-8")) == latest

    shutil.rmtree(latest["ppo"]["path"])
    assert pipeline.cached_route(config, root) is None


def test_changing_a_clean_rule_reruns_clean_and_everything_after(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path)
    latest, _ = run_cli(root, *[f"--set={s}" for s in FAST], "--set", "clean.min_length=120")
    assert clean_docs_out(latest) < clean_docs_out(tiny_root[1])  # the rule drops more documents
    assert set(statuses(latest).values()) == {"ran"}
    assert latest["clean"]["path"] != tiny_root[1]["clean"]["path"]


def test_a_config_change_that_leaves_the_output_alike_reruns_only_until_the_output_matches(tiny_root, tmp_path):
    """Downstream fingerprints follow upstream content: a clean rule that drops nothing more reruns clean, and
    dedup (whose config section changed nothing but whose input manifest did), then finds equal output."""
    root = copy_root(tiny_root, tmp_path)
    latest, _ = run_cli(root, *[f"--set={s}" for s in FAST], "--set", "clean.min_length=90")
    assert clean_docs_out(latest) == clean_docs_out(tiny_root[1])
    stages = statuses(latest)
    assert stages["clean"] == "ran"
    assert all(stages[s] == "cached" for s in PIPELINE_STAGES[PIPELINE_STAGES.index("train_tokenizer") : -1]), stages


def test_changing_dedup_keeps_clean_cached(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path)
    latest, _ = run_cli(root, *[f"--set={s}" for s in FAST], "--set", "dedup.threshold=0.5")
    stages = statuses(latest)
    assert stages["clean"] == "cached" and stages["dedup"] == "ran"
    # Later stages follow dedup's output, not its config: they rerun exactly when its files differ.
    files = [read_manifest(run["dedup"]["path"])["files"] for run in (tiny_root[1], latest)]
    later = "cached" if files[0] == files[1] else "ran"
    assert all(stages[s] == later for s in PIPELINE_STAGES[2:]), stages


def test_deleting_one_artifact_rebuilds_exactly_that_stage(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path)
    victim = PIPELINE_STAGES[1]
    shutil.rmtree(root / victim)
    latest, _ = run_cli(root, *[f"--set={s}" for s in FAST])
    expected = {stage: ("ran" if stage == victim else "cached") for stage in PIPELINE_STAGES}
    assert statuses(latest) == expected


def test_until_and_force(tiny_root, tmp_path):
    root = copy_root(tiny_root, tmp_path)
    latest, _ = run_cli(root, *[f"--set={s}" for s in FAST], "--until", "dedup", "--force", "clean")
    assert statuses(latest) == {"clean": "ran", "dedup": "cached"}


def test_unknown_stage_and_bad_key_fail_before_any_work(tmp_path, capsys):
    assert main(["run", "--root", str(tmp_path), "--until", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["run", "--root", str(tmp_path), "--set", "clean.no_such_rule=1"]) == 2
    assert "clean.no_such_rule" in capsys.readouterr().err
    assert not (tmp_path / "clean").exists()


def test_broken_jsonl_rows_are_quarantined_and_no_good_row_is_lost(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    good = [
        f"Document number {i} talks about the river towns of the northern valley in some detail, and about "
        f"the markets, bridges and winter festivals that the people of those towns still keep."
        for i in range(12)
    ]
    lines = [json.dumps({"id": f"g{i}", "text": text}).encode() for i, text in enumerate(good[:6])]
    lines += [
        b'{"id": "broken", "text": "unterminated',
        b'{"id": "nofield"}',
        b"\xff\xfe\xfa not utf-8",
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "num", "text": 42}).encode(),
    ]
    lines += [json.dumps({"id": f"g{i}", "text": text}).encode() for i, text in enumerate(good[6:], start=6)]
    corpus.write_bytes(b"\n".join(lines) + b"\n")
    root = tmp_path / "root"
    source = {"kind": "jsonl", "path": str(corpus), "text_field": "text", "id_field": "id"}
    assert main(["run", "--root", str(root), "--until", "clean", "--set", f"data.sources=[{json.dumps(source)}]"]) == 0
    latest = json.loads((root / "latest.json").read_text())
    clean_dir = Path(latest["clean"]["path"])
    metrics = read_manifest(clean_dir)["metrics"]
    assert metrics["quarantined"] == 5 and metrics["docs_in"] == 17
    kept = pq.read_table(sorted(clean_dir.glob("part_*.parquet"))).to_pylist()
    assert sorted(row["id"] for row in kept) == sorted(f"g{i}" for i in range(12))
    rejected = pq.read_table(clean_dir / "rejected.parquet").to_pylist()
    assert sorted(row["line"] for row in rejected if row["rule"] == "quarantine") == [7, 8, 9, 10, 11]


def published_by_runs_of(root: Path, artifact_filter) -> dict[str, dict[str, object]]:
    """The artifacts matching `artifact_filter` that flow runs of `root` created: {flow run id: {key: artifact}}."""
    from prefect.client.orchestration import get_client

    by_run: dict[str, dict[str, object]] = {}
    with get_client(sync_client=True) as client:
        for artifact in client.read_artifacts(artifact_filter=artifact_filter):
            if client.read_flow_run(artifact.flow_run_id).parameters.get("root") == str(root):
                by_run.setdefault(str(artifact.flow_run_id), {})[artifact.key] = artifact
    return by_run


def table_rows(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_report_card_and_metric_table_are_published_to_prefect(tiny_root):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from zero_chatgpt.report import round_figure

    root, latest, _ = tiny_root
    report = json.loads((Path(latest["report"]["path"]) / "report.json").read_text(encoding="utf-8"))
    assert set(report["stages"]) == set(PIPELINE_STAGES) - {"report"}
    keys = ["zero-chatgpt-report-card", "zero-chatgpt-stage-metrics"]
    runs_of_this_root = published_by_runs_of(root, ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert runs_of_this_root, "no report artifacts belong to a flow run of this root"
    published = next(iter(runs_of_this_root.values()))
    assert set(published) == set(keys)
    card = published["zero-chatgpt-report-card"].data
    assert "report card" in card
    # Every curve travels inside the card (the UI cannot reach local files), and no figure shows 16 digits.
    assert card.count("](data:image/png;base64,") == len(report["plots"]) >= 4
    decimals = re.findall(r"\d+\.\d+", re.sub(r"\(data:image/png;base64,[^)]*\)", "", card))
    assert decimals and all(len(number.replace(".", "").lstrip("0")) <= 4 for number in decimals), decimals
    table = table_rows(published["zero-chatgpt-stage-metrics"])
    assert {row["stage"] for row in table} == set(PIPELINE_STAGES) - {"report"}
    assert all(round_figure(row[column]) == row[column] for row in table for column in ("seconds", "value"))


def test_training_and_sampling_stages_publish_keyed_progress_with_their_figures(tiny_root):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    root, latest, _ = tiny_root
    runs = published_by_runs_of(root, ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))
    (progress,) = [by_key for by_key in runs.values() if by_key]  # the cached rerun trains nothing
    long_stages = ("pretrain", "sft", "build_prefs", "train_rm", "ppo", "evaluate")
    assert {f"progress-{stage.replace('_', '-')}" for stage in long_stages} <= set(progress), set(progress)
    for stage in long_stages:
        artifact = progress[f"progress-{stage.replace('_', '-')}"]
        assert artifact.data == 100 and artifact.description.startswith(f"{stage}: "), artifact.description
        assert "ETA" in artifact.description and "/s" in artifact.description, artifact.description
    assert "loss" in progress["progress-pretrain"].description and "tokens/s" in progress["progress-sft"].description
    assert "reward" in progress["progress-ppo"].description
    assert " prompt " in progress["progress-evaluate"].description


def test_the_run_stage_table_lists_every_stage_of_the_route_with_its_artifact(tiny_root):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    root, latest, _ = tiny_root
    runs = published_by_runs_of(root, ArtifactFilter(key=ArtifactFilterKey(any_=["run-stages"])))
    assert runs, "no stage table belongs to a flow run of this root"
    for by_key in runs.values():  # the first run and, when it ran before this test, the cached rerun
        rows = table_rows(by_key["run-stages"])
        assert [row["stage"] for row in rows] == list(PIPELINE_STAGES)
        assert {row["status"] for row in rows} <= {"done", "cached"}, rows
        assert [row["artifact"] for row in rows] == [latest[stage]["path"] for stage in PIPELINE_STAGES]
        assert by_key["run-stages"].description.startswith(f"{len(rows)} of {len(rows)} stages finished")


def test_a_new_demo_generator_version_changes_the_fingerprint_of_every_stage_reading_a_demo_source(monkeypatch):
    """Cached artifacts built from the old demo text must rebuild when the generator's output changes."""
    import zero_chatgpt.data_process.demo_corpus as demo_corpus
    from zero_chatgpt.config import load_config
    from zero_chatgpt.tasks.build_prefs import BUILD_PREFS
    from zero_chatgpt.tasks.clean import CLEAN
    from zero_chatgpt.tasks.dedup import DEDUP
    from zero_chatgpt.tasks.evaluate import EVALUATE
    from zero_chatgpt.tasks.sft import SFT

    config = load_config("tiny").model_dump(mode="json")
    upstream = {"sft": {"fingerprint": "0" * 64}, "clean": {"fingerprint": "1" * 64}}
    specs = (CLEAN, SFT, BUILD_PREFS, EVALUATE, DEDUP)
    before = {spec.name: spec.fingerprint(config, upstream) for spec in specs}
    version = {"generator_version": demo_corpus.DEMO_CORPUS_VERSION}
    assert CLEAN.config_section(config)["data.sources"][0]["version"] == version
    assert EVALUATE.config_section(config)["evaluate"]["qa_sources"][0]["version"] == version
    monkeypatch.setattr(demo_corpus, "DEMO_CORPUS_VERSION", -1)
    after = {spec.name: spec.fingerprint(config, upstream) for spec in specs}
    assert all(after[spec.name] != before[spec.name] for spec in (CLEAN, SFT, EVALUATE))
    # They read no demo source (build_prefs gets the demo's rows through sft): only their upstream changes them.
    assert after["dedup"] == before["dedup"] and after["build_prefs"] == before["build_prefs"]


def _varied_documents(count: int, start: int = 0) -> list[bytes]:
    """JSONL lines of documents with different words (dedup keeps most of them)."""
    words = [
        "river",
        "salt",
        "wool",
        "bridge",
        "market",
        "winter",
        "harbour",
        "copper",
        "valley",
        "orchard",
        "lantern",
        "ferry",
        "granary",
        "quarry",
        "festival",
        "tower",
        "meadow",
        "mill",
        "canal",
        "forest",
    ]
    lines = []
    for i in range(start, start + count):
        picked = [words[(i * 7 + j * (i % 5 + 1)) % len(words)] + str((i * 31 + j) % 97) for j in range(30)]
        lines.append(json.dumps({"id": f"doc{i}", "text": f"Document {i} of the valley: " + " ".join(picked)}).encode())
    return lines


def test_appending_rows_to_a_jsonl_source_reruns_clean_and_every_stage_after(tmp_path):
    """Source content is in the fingerprint: appended rows rebuild clean, dedup and train_tokenizer; unchanged
    files keep everything cached; forcing clean on unchanged input leaves its downstream cached."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"\n".join(_varied_documents(40)) + b"\n")
    root = tmp_path / "root"
    source = {"kind": "jsonl", "path": str(corpus), "id_field": "id"}
    args = [
        "--until",
        "train_tokenizer",
        "--set",
        f"data.sources=[{json.dumps(source)}]",
        "--set",
        "clean.min_length=5",
        "--set",
        "train_tokenizer.vocab_size=400",
    ]
    first, _ = run_cli(root, *args)
    assert statuses(first) == {"clean": "ran", "dedup": "ran", "train_tokenizer": "ran"}
    assert read_manifest(first["clean"]["path"])["metrics"]["docs_out"] == 40
    again, _ = run_cli(root, *args)
    assert set(statuses(again).values()) == {"cached"}

    with corpus.open("ab") as handle:
        handle.write(b"\n".join(_varied_documents(20, start=40)) + b"\n")
    appended, _ = run_cli(root, *args)
    assert statuses(appended) == {"clean": "ran", "dedup": "ran", "train_tokenizer": "ran"}
    assert read_manifest(appended["clean"]["path"])["metrics"]["docs_out"] == 60
    dedup_docs = [read_manifest(run["dedup"]["path"])["metrics"]["docs_out"] for run in (first, appended)]
    assert dedup_docs[1] > dedup_docs[0], dedup_docs
    versions = read_manifest(appended["clean"]["path"])["config"]["data.sources"][0]["version"]["files"]
    assert [entry["file"] for entry in versions] == [str(corpus)] and versions[0]["bytes"] == corpus.stat().st_size
    assert (root / ".cache" / "source-hashes.json").is_file()

    forced, _ = run_cli(root, *args, "--force", "clean")
    assert statuses(forced) == {"clean": "ran", "dedup": "cached", "train_tokenizer": "cached"}


def test_a_wrong_sft_field_fails_before_any_stage_runs(tmp_path, capsys):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(100)))
    source = {"kind": "jsonl", "path": str(sft), "prompt_field": "question", "response_field": "output"}
    started = time.perf_counter()
    code = main(["run", "--root", str(tmp_path / "root"), "--set", f"data.sft_sources=[{json.dumps(source)}]"])
    seconds = time.perf_counter() - started
    error = capsys.readouterr().err
    assert code == 1 and seconds < 60, (code, seconds)
    assert f"jsonl source {str(sft)!r}" in error and "no 'question' field" in error
    assert "the rows have fields ['instruction', 'output']" in error
    assert not (tmp_path / "root" / "clean").exists()
