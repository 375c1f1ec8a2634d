"""What every stage task shares: its spec, its Prefect cache key, and the call into the artifact contract.

A stage task receives the whole resolved config as a plain dict, the upstream records and the root; it
fingerprints only the config keys its spec names (so changing `pretrain` never reruns `clean`), each data
source in them joined by its `source_version` (what about its content the config does not say: a file source's
files with their content hashes, remembered in `<root>/.cache/source-hashes.json` by size and mtime). Prefect's
cache key is that fingerprint; the flow asks Prefect to refresh it when the stage is forced or the artifact dir no
longer passes `artifact_reusable`, so the manifest on disk stays the source of truth.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from zero_chatgpt.artifacts import artifact_dir, build_artifact, fingerprint, is_complete, upstream_key
from zero_chatgpt.config import BaseModelConfig, PipelineConfig, Section, SourceBase
from zero_chatgpt.console import metrics_text
from zero_chatgpt.data_process.sources import source_version
from zero_chatgpt.file_hash import FileHashCache
from zero_chatgpt.metric_streams import MetricStreams, streaming_metrics
from zero_chatgpt.model.base_model import resolve_configured_base_model
from zero_chatgpt.progress import ProgressReport, listening_to_progress


@dataclass(frozen=True)
class StageSpec:
    """A stage's identity: name, code version (bump it when outputs change), the config keys it reads
    (dotted paths into the resolved config) and the upstream stages it consumes."""

    name: str
    version: str
    config_keys: tuple[str, ...]
    upstream: tuple[str, ...] = ()

    def config_section(self, config: dict[str, Any], root: str | None = None) -> dict[str, Any]:
        """The part of the resolved config this stage depends on, keyed by dotted path; file sources carry their
        files' content hashes (cached under `root` when given, else in this process)."""
        hashes = source_hashes(root)
        section = {}
        for dotted in self.config_keys:
            value: Any = config
            annotation: Any = PipelineConfig
            for part in dotted.split("."):
                value = value[part]
                fields = getattr(_section_class(annotation), "model_fields", {})
                annotation = fields[part].annotation if part in fields else None
            section[dotted] = with_source_versions(value, annotation, hashes)
        with _HASH_CACHE_LOCK:
            hashes.save()
        return section

    def fingerprint(self, config: dict[str, Any], upstream: dict[str, dict[str, str]], root: str | None = None) -> str:
        """The stage fingerprint for this config and these upstream artifacts."""
        return self.fingerprint_of(self.config_section(config, root), upstream, int(config["run"]["seed"]))

    def fingerprint_of(self, section: dict[str, Any], upstream: dict[str, dict[str, str]], seed: int) -> str:
        """The stage fingerprint of an already resolved `config_section` (as `build_artifact` computes it)."""
        upstream_fps = {name: upstream_key(record) for name, record in upstream.items()}
        return fingerprint(self.name, self.version, section, upstream_fps, seed)


_HASH_CACHES: dict[str, FileHashCache] = {}
_HASH_CACHE_LOCK = threading.Lock()


def source_hashes(root: str | None) -> FileHashCache:
    """The content-hash cache of source files for runs under `root` (`<root>/.cache/source-hashes.json`, so a
    big corpus is read once, not on every run); without a root, one that lives in this process only."""
    key = str(Path(root).resolve()) if root is not None else ""
    with _HASH_CACHE_LOCK:
        if key not in _HASH_CACHES:
            _HASH_CACHES[key] = FileHashCache(Path(key) / ".cache" / "source-hashes.json" if key else None)
        return _HASH_CACHES[key]


def with_source_versions(value: Any, annotation: Any, hash_cache: FileHashCache | None = None) -> Any:
    """`value` (plain config data typed by `annotation`) with every data source in it carrying `"version":
    source_version(source)`, so the fingerprint (and the manifest) follow the content a source stands for."""
    model = _section_class(annotation)
    if isinstance(value, list):
        return [with_source_versions(item, annotation, hash_cache) for item in value]
    if not isinstance(value, dict) or model is None:
        return value
    if issubclass(model, SourceBase):
        return {**value, "version": source_version(model.model_validate(value), hash_cache)}
    if issubclass(model, BaseModelConfig) and value.get("path"):
        resolved = resolve_configured_base_model(model.model_validate(value), hash_cache)
        return {**value, "version": resolved.fingerprint}
    return {
        key: with_source_versions(
            item, model.model_fields[key].annotation if key in model.model_fields else None, hash_cache
        )
        for key, item in value.items()
    }


def _section_class(annotation: Any) -> type[Section] | None:
    """The config section class inside an annotation such as `list[QaSource]` or `ModelConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in get_args(annotation):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def _cache_key_for(spec: StageSpec) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        fp = spec.fingerprint(parameters["config"], parameters["upstream"], parameters["root"])
        # The root is in the key because a cached record holds absolute paths: a copied root must not
        # hand back paths into the original.
        root_digest = hashlib.sha256(str(Path(parameters["root"]).resolve()).encode()).hexdigest()[:8]
        return f"{spec.name}-{fp}-{root_digest}"

    return cache_key


def artifact_reusable(spec: StageSpec, fp: str, config: dict[str, Any], root: str | Path) -> bool:
    """Whether the stage's artifact with fingerprint `fp` is finished and passes the run's `verify` check: the
    source of truth a cached Prefect record must agree with before the flow lets Prefect reuse it."""
    verify = config.get("run", {}).get("verify", "sizes")
    return is_complete(artifact_dir(root, spec.name, fp), fp, verify)


def stage_task(spec: StageSpec, **task_options: Any) -> Callable:
    """Decorate a thin stage function as a Prefect task keyed by the stage fingerprint."""
    options = {
        "name": spec.name,
        "cache_key_fn": _cache_key_for(spec),
        "persist_result": True,
        # A stage record is a small dict of strings: stored as JSON, a cached record is data, never code to unpickle.
        "result_serializer": "json",
        "task_run_name": spec.name,
        **task_options,
    }

    def decorate(fn: Callable) -> Any:
        stage = task(**options)(fn)
        stage.stage_spec = spec  # the flow reads it to decide whether the cached record may be reused
        return stage

    return decorate


def resume_dir(spec: StageSpec, config: dict[str, Any], upstream: dict[str, dict[str, str]], root: str) -> Path:
    """Where a training stage keeps resume checkpoints: beside its artifact, so they outlive a killed run
    (the temporary build dir does not), and keyed by fingerprint, so a changed config never resumes them."""
    final = artifact_dir(root, spec.name, spec.fingerprint(config, upstream, root))
    return final.with_name(f".resume-{final.name}")


def run_stage(
    spec: StageSpec,
    config: dict[str, Any],
    upstream: dict[str, dict[str, str]],
    root: str,
    force: bool,
    body: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """Build (or reuse) the stage's artifact; returns the small record `{stage, path, fingerprint, status}`."""
    missing = set(spec.upstream) - set(upstream)
    if missing:
        raise ValueError(f"stage {spec.name} needs upstream artifacts {sorted(missing)}")
    logger = stage_logger()
    threads = config.get("resources", {}).get("torch_threads")
    if threads:
        import torch  # only stages that train or generate care, and they have torch loaded already

        torch.set_num_threads(int(threads))
    # Resolved once: it hashes every source file and the base model (from the hash cache when unchanged).
    section, seed = spec.config_section(config, root), int(config["run"]["seed"])
    streams = MetricStreams.for_stage(config, root, spec.name, spec.fingerprint_of(section, upstream, seed))
    with listening_to_progress(_ProgressArtifact(spec.name)), streaming_metrics(streams):
        result = build_artifact(
            stage=spec.name,
            version=spec.version,
            config=section,
            upstream=upstream,
            seed=seed,
            root=root,
            body=body,
            force=force,
            verify=config.get("run", {}).get("verify", "sizes"),
        )
    if result.status == "cached":
        logger.info("%s: reusing artifact %s", spec.name, result.path)
    else:
        logger.info("%s: built %s in %.1fs; %s", spec.name, result.path, result.seconds, metrics_text(result.metrics))
    return {**result.record(), "status": result.status}


def progress_key(stage: str) -> str:
    """The key of a stage's progress artifact (Prefect keys take lowercase letters, digits and dashes)."""
    return f"progress-{stage.replace('_', '-')}"


class _ProgressArtifact:
    """A progress listener that shows a stage's loops as one keyed Prefect progress artifact: the percent of the
    current loop, and its step, figures, rate and ETA in the description (`ProgressReport.describe`).

    Created on the first report; then updated at most every `min_seconds` (each update is an API call), but at
    once when a new loop starts (the judge after the reward model, say) or a loop finishes.
    """

    def __init__(self, stage: str, min_seconds: float = 5.0) -> None:
        self.stage, self.min_seconds = stage, min_seconds
        self.artifact_id = None
        self.phase: str | None = None
        self.shown_at = 0.0
        self.broken = False

    def __call__(self, report: ProgressReport) -> None:
        now = time.monotonic()
        due = (
            self.artifact_id is None
            or report.phase != self.phase
            or report.fraction >= 1.0
            or now - self.shown_at >= self.min_seconds
        )
        if self.broken or not due:
            return
        percent, description = 100.0 * report.fraction, f"{self.stage}: {report.describe()}"
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=percent, key=progress_key(self.stage), description=description
                )
            else:
                update_progress_artifact(self.artifact_id, progress=percent, description=description)
        except Exception as err:  # progress is a nicety: say once that it stopped, never fail the stage for it
            stage_logger().warning("%s: progress artifact not updated, giving up on it: %s", self.stage, err)
            self.broken = True
            return
        self.phase, self.shown_at = report.phase, now


def model_loading(config: PipelineConfig) -> dict[str, Any]:
    """How stages that load a model load it: the base model's `dtype` and `trust_remote_code` (keyword arguments
    of every stage function that loads one)."""
    return {"dtype": config.base_model.dtype, "trust_remote_code": config.base_model.trust_remote_code}


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a task (lines show in the UI), else a plain logger."""
    try:
        return get_run_logger()
    except Exception:  # outside a Prefect run (a script calling the task's .fn): plain logging
        return logging.getLogger("zero_chatgpt.tasks")
