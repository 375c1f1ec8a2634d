"""The `zero-chatgpt` flow: it only wires stages, in the order of the ChatGPT route.

Each stage is a cached Prefect task (see `tasks/`); this flow resolves the config once (so a bad key fails
before any work), runs the stages up to `until`, and writes `<root>/latest.json` as each stage finishes.
The parameters are typed (`flow_parameters`), so Prefect refuses a misspelled preset, stage or config key when
a run is created. Importing this module loads no torch: the stage tasks import their libraries when they run.
"""

# No `from __future__ import annotations` here: a served run gets the flow function pickled by value, with only the
# globals its code uses, so its parameter types must be objects in its annotations, not names to look up.
import hashlib
import inspect
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_run_logger

from zero_chatgpt.artifacts import artifact_dir, content_digest, read_manifest, write_json_atomic
from zero_chatgpt.config import STAGES, ConfigError, PipelineConfig, config_to_yaml, load_config, route_stages
from zero_chatgpt.console import print_stage_row, print_table_header
from zero_chatgpt.data_process.sources import check_configured_sources
from zero_chatgpt.flow_parameters import PipelineConfigOverrides, PresetName, StageName, overrides_dict, run_name
from zero_chatgpt.flow_runs import watched_flow_run
from zero_chatgpt.model.base_model import resolve_configured_base_model
from zero_chatgpt.run_table import PrefectTableArtifact, StageTable, failures_recorded
from zero_chatgpt.tasks.base_model import base_model_task
from zero_chatgpt.tasks.build_prefs import build_prefs_task
from zero_chatgpt.tasks.clean import clean_task
from zero_chatgpt.tasks.dedup import dedup_task
from zero_chatgpt.tasks.evaluate import evaluate_task
from zero_chatgpt.tasks.ppo import ppo_task
from zero_chatgpt.tasks.pretrain import pretrain_task
from zero_chatgpt.tasks.report import publish_report_task, report_task
from zero_chatgpt.tasks.sft import sft_task
from zero_chatgpt.tasks.shard import shard_task
from zero_chatgpt.tasks.stage import artifact_reusable, source_hashes
from zero_chatgpt.tasks.train_rm import train_rm_task
from zero_chatgpt.tasks.train_tokenizer import train_tokenizer_task

# Stages this flow runs, in order (the config tree names them, one section each).
PIPELINE_STAGES = STAGES


class PipelineRun:
    """Runs stage tasks in order, skipping those after `until`, and keeps latest.json and the Prefect stage
    table (`run_table`) current."""

    def __init__(
        self,
        config: dict[str, Any],
        root: Path,
        until: str | None,
        force: set[str],
        route: tuple[str, ...] = PIPELINE_STAGES,
    ) -> None:
        self.config = config
        self.root = root
        self.force = force
        self.planned = route[: route.index(until) + 1] if until else route
        self.latest: dict[str, dict[str, Any]] = {}
        self.storage = _result_storage(root)
        self.table = StageTable(self.planned, PrefectTableArtifact())

    def stage(self, stage_task: Any, **upstream: dict[str, str] | None) -> dict[str, str] | None:
        """Run one stage task (cached by fingerprint); returns its record, or None past `until`.

        An upstream given as None is a stage this route does not run (no tokenizer training when a base model
        is aligned, say): it is left out, not passed on.
        """
        name = stage_task.name
        if name not in self.planned:
            return None
        upstream = {key: record for key, record in upstream.items() if record is not None}
        self.table.start(name)
        started = time.perf_counter()
        force = name in self.force
        spec = stage_task.stage_spec
        fingerprint = spec.fingerprint(self.config, upstream, str(self.root))
        refresh = force or not artifact_reusable(spec, fingerprint, self.config, self.root)
        # Named like the artifact folder it builds (`<stage>/<fingerprint[:12]>`), so the UI's task run leads there.
        state = stage_task.with_options(
            result_storage=self.storage, refresh_cache=refresh, task_run_name=f"{name} {fingerprint[:12]}"
        )(config=self.config, upstream=upstream, root=str(self.root), force=force, return_state=True)
        record = state.result()  # raises the stage's own error when it failed
        seconds = time.perf_counter() - started
        status = "cached" if state.name == "Cached" else record.get("status", "ran")
        metrics = (read_manifest(record["path"]) or {}).get("metrics", {})
        self.latest[name] = {
            "path": record["path"],
            "status": status,
            "seconds": round(seconds, 3),
            "fingerprint": record["fingerprint"],
        }
        write_json_atomic(self.root / "latest.json", self.latest)
        self.table.finish(name, status, record["path"])
        print_stage_row(name, status, seconds, metrics)
        get_run_logger().info("stage %s %s in %.1fs -> %s", name, status, seconds, record["path"])
        return record

    def publish_report(self, report: dict[str, str]) -> None:
        """The report card and metric table as artifacts of this Prefect run."""
        publish_report_task.with_options(task_run_name="publish_report")(report["path"], self.latest)


class StageWouldRun(Exception):
    """Raised by `CachedRouteWalk` at the first stage that has no reusable artifact."""


class CachedRouteWalk:
    """The route walked without Prefect: each stage's fingerprint from its upstream records, and its artifact
    checked as a run would check it (`artifact_reusable`). Raises `StageWouldRun` at the first stage a run would have
    to build; when none does, `latest` holds every stage as cached. See `cached_route`."""

    def __init__(self, config: dict[str, Any], root: Path, until: str | None, force: set[str], route: tuple[str, ...]):
        self.config, self.root, self.force = config, root, force
        self.planned = route[: route.index(until) + 1] if until else route
        self.latest: dict[str, dict[str, Any]] = {}

    def stage(self, stage_task: Any, **upstream: dict[str, str] | None) -> dict[str, str] | None:
        name = stage_task.name
        if name not in self.planned:
            return None
        if name in self.force:
            raise StageWouldRun(name)
        upstream = {key: record for key, record in upstream.items() if record is not None}
        fp = stage_task.stage_spec.fingerprint(self.config, upstream, str(self.root))
        if not artifact_reusable(stage_task.stage_spec, fp, self.config, self.root):
            raise StageWouldRun(name)
        path = artifact_dir(self.root, name, fp)
        self.latest[name] = {"path": str(path), "status": "cached", "seconds": 0.0, "fingerprint": fp}
        return {"stage": name, "path": str(path), "fingerprint": fp, "content": content_digest(read_manifest(path))}

    def publish_report(self, report: dict[str, str]) -> None:
        """Nothing to publish: the run that built the report published it."""


def cached_route(
    typed_config: PipelineConfig, root: str | Path, until: str | None = None, force: list[str] | tuple = ()
) -> dict[str, dict[str, Any]] | None:
    """The `latest.json` entries of a run whose every stage (up to `until`) would be reused from `root`, else None.

    Answers in seconds, without a Prefect server, what a full run would answer after starting one: a rerun that
    has nothing to do (inspecting a finished root, `--until` a stage already built) need not pay for Prefect.
    Source files and a base model are fingerprinted as in a run, so an edited input is never taken as cached.
    """
    route = route_stages(typed_config)
    if any(name not in route for name in [*([until] if until else []), *force]):
        return None  # the flow names the mistake
    walk = CachedRouteWalk(typed_config.model_dump(mode="json"), Path(root).resolve(), until, set(force), route)
    try:
        _run_route(walk, typed_config)
    except StageWouldRun:
        return None
    return walk.latest


def _result_storage(root: Path) -> LocalFileSystem:
    """Prefect results and cache records live under the root, so a root is one self-contained cache."""
    storage = LocalFileSystem(basepath=str(root / ".prefect-results"))
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    # Prefect only accepts result storage saved server-side; one block per root, overwritten each run.
    storage.save(name=f"zero-chatgpt-results-{digest}", overwrite=True)
    return storage


def _flow_run_name() -> str:
    """`tiny→ppo force=sft`: the run's preset, last stage and forced stages, read from its parameters."""
    from prefect.runtime import flow_run

    given = inspect.signature(zero_chatgpt.fn).bind(**flow_run.parameters)
    given.apply_defaults()
    return run_name(**{name: value for name, value in given.arguments.items() if name != "root"})


@flow(
    name="zero-chatgpt",
    description="Raw text to an aligned chat model, one cached stage at a time.",
    flow_run_name=_flow_run_name,
)
def zero_chatgpt(
    preset: PresetName = "tiny",
    preset_file: str | None = None,
    overrides: PipelineConfigOverrides = PipelineConfigOverrides(),  # noqa: B008 (a schema default, never mutated)
    root: str = "runs",
    until: StageName = STAGES[-1],
    force: list[StageName] = [],  # noqa: B006 (a schema default, never mutated)
) -> dict[str, dict[str, Any]]:
    """Run the pipeline for a preset (plus overrides) into `root`, up to `until`, rebuilding the `force` stages.

    Stages whose config and inputs are unchanged are reused from `root`; the resolved config is published as
    the run's `zero-chatgpt-config` artifact.

    Args:
        preset: A preset shipped in `configs/` (tiny: a CPU run of minutes on the built-in demo corpus).
        preset_file: A YAML config file on the machine that runs the flow, used instead of `preset` (it may say
            `base: tiny` and set only what differs).
        overrides: Config values that replace the preset's, by section (e.g. pretrain, optim, max_steps); lists
            are replaced whole. Unknown keys are refused when the run is created.
        root: The artifact directory on the machine that runs the flow; stages cached there are reused.
        until: The last stage to run (report: the whole route).
        force: Stages rebuilt even when their artifact exists (the stages after them rerun only if their
            inputs change).
    """
    typed_config = load_config(preset_file or preset, overrides_dict(overrides))
    # Published before the checks below, so a run that fails them still shows what it was asked to do.
    create_markdown_artifact(
        key="zero-chatgpt-config",
        markdown=f"```yaml\n{config_to_yaml(typed_config)}```\n",
        description="the resolved config of this run (preset and overrides merged)",
    )
    # Every data source is opened and sampled now, so a wrong field or an unreadable file fails in seconds.
    check_configured_sources(typed_config)
    if typed_config.base_model.path:  # a missing model dir or an offline hub id fails now, naming it
        # With the root's hash cache: the stages' fingerprints then reuse these hashes instead of reading
        # a multi-GB checkpoint a second time.
        resolve_configured_base_model(typed_config.base_model, source_hashes(str(Path(root).resolve())))
    config = typed_config.model_dump(mode="json")
    route = route_stages(typed_config)
    off_route = [name for name in [*([until] if until else []), *(force or [])] if name not in route]
    if off_route:
        raise ConfigError(f"stage(s) {off_route} are not on this run's route: {list(route)}")
    run = PipelineRun(config, Path(root).resolve(), until, set(force or []), route)
    # A failed stage is shown failed in the stage table, with where its traceback is, before the error goes on.
    with watched_flow_run(run.root), failures_recorded(run.table, run.root / "logs"):
        print_table_header()
        _run_route(run, typed_config)
    return run.latest


def _run_route(run: "PipelineRun | CachedRouteWalk", typed_config: PipelineConfig) -> None:
    """The stages of this config's route, in order (see `config.route_stages`)."""
    # Three routes to the model SFT starts from: pretraining from scratch, a base model as it is, or a base
    # model pretrained further on the corpus (tokenised with its own tokenizer).
    base = run.stage(base_model_task) if typed_config.base_model.path else None
    clean = dedup = tokenizer = shards = pretrained = None
    if base is None or typed_config.base_model.continue_pretraining:
        clean = run.stage(clean_task)
        dedup = run.stage(dedup_task, clean=clean)
        tokenizer = run.stage(train_tokenizer_task, dedup=dedup) if base is None else base
        shards = run.stage(shard_task, dedup=dedup, train_tokenizer=tokenizer)
        pretrained = run.stage(pretrain_task, shard=shards, train_tokenizer=tokenizer, base_model=base)
    start = pretrained or base
    tuned = run.stage(sft_task, pretrain=start)
    prefs = run.stage(build_prefs_task, sft=tuned)
    reward = run.stage(train_rm_task, sft=tuned, build_prefs=prefs, base_model=base)
    policy = run.stage(ppo_task, sft=tuned, train_rm=reward, shard=shards)
    evaluation = run.stage(evaluate_task, pretrain=start, sft=tuned, train_rm=reward, ppo=policy)
    report = run.stage(
        report_task,
        base_model=base,
        clean=clean,
        dedup=dedup,
        train_tokenizer=tokenizer if base is None else None,
        shard=shards,
        pretrain=pretrained,
        sft=tuned,
        build_prefs=prefs,
        train_rm=reward,
        ppo=policy,
        evaluate=evaluation,
    )
    if report is not None:
        run.publish_report(report)
