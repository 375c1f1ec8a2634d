"""The stage contract: fingerprints, artifact dirs built atomically, and `manifest.json` written last.

An artifact is `<root>/<stage>/<fingerprint[:12]>/` holding a `manifest.json`; a dir without one is not an
artifact (a crash leaves only a `.tmp-*` sibling, which the next run removes). The manifest lists every file
with its size and content hash: a reused artifact is checked against it (sizes always, hashes on request) and
rebuilt, never loaded, when it does not match. One lock file per artifact makes concurrent runs on one root
build it once: the second waits and reuses. Nothing here imports Prefect: the same functions serve the Prefect
tasks, the tests and anyone scripting a stage by hand.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from zero_chatgpt.file_hash import hash_file

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"
Verify = Literal["sizes", "deep"]
logger = logging.getLogger(__name__)

# Packages whose versions go into every manifest (lineage: what produced this artifact).
_TRACKED_PACKAGES = (
    "zero-chatgpt",
    "torch",
    "transformers",
    "prefect",
    "datasketch",
    "sentencepiece",
    "tokenizers",
    "pyarrow",
    "numpy",
    "deepspeed",
)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal configs hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(stage: str, version: str, config: dict[str, Any], upstream: dict[str, str], seed: int) -> str:
    """sha256 over stage name, stage version, resolved config section, upstream fingerprints and seed."""
    payload = canonical_json(
        {"stage": stage, "version": version, "config": config, "upstream": dict(sorted(upstream.items())), "seed": seed}
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def artifact_dir(root: str | Path, stage: str, fp: str) -> Path:
    """Where the artifact with this fingerprint lives."""
    return Path(root) / stage / fp[:12]


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of an artifact dir, or None when the dir is not a finished artifact."""
    manifest = Path(path) / MANIFEST
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def is_complete(path: str | Path, fp: str | None = None, verify: Verify = "sizes") -> bool:
    """True when the dir holds a manifest (with this fingerprint, if one is given) whose files all match."""
    manifest = read_manifest(path)
    if manifest is None or (fp is not None and manifest.get("fingerprint") != fp):
        return False
    return not artifact_problems(path, manifest, verify)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own digest: an edited figure or file entry no longer matches."""
    return hashlib.sha256(
        canonical_json({k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}).encode()
    ).hexdigest()


def list_files(path: str | Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"size", "hash"}}` of every file under `path` except the manifest."""
    path = Path(path)
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative != MANIFEST:
            files[relative] = {"size": file.stat().st_size, "hash": hash_file(file)}
    return files


def artifact_problems(path: str | Path, manifest: dict[str, Any], verify: Verify = "sizes") -> list[str]:
    """What about the dir does not match its manifest: missing files, other sizes, other content (`deep`)."""
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        return ["the manifest lists no files (written by an older version)"]
    if manifest.get(MANIFEST_DIGEST) != manifest_digest(manifest):
        return ["manifest.json was edited after it was written (its digest does not match)"]
    problems = []
    for relative, expected in listed.items():
        file = Path(path) / relative
        if not file.is_file():
            problems.append(f"{relative} is missing")
        elif file.stat().st_size != expected.get("size"):
            problems.append(f"{relative} has {file.stat().st_size} bytes, the manifest says {expected.get('size')}")
        elif verify == "deep" and hash_file(file) != expected.get("hash"):
            problems.append(f"{relative} has other content than when it was written")
    return problems


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class StageResult:
    """What one stage run produced: where, under which fingerprint, and whether it ran or was reused."""

    stage: str
    path: str
    fingerprint: str
    status: str  # "ran" or "cached"
    seconds: float
    metrics: dict[str, Any]
    content: str = ""  # digest of the artifact's files (see `content_digest`)

    def record(self) -> dict[str, str]:
        """The small record that crosses task boundaries."""
        return {"stage": self.stage, "path": self.path, "fingerprint": self.fingerprint, "content": self.content}


def content_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's file list (names, sizes, hashes): equal for artifacts with equal files."""
    return hashlib.sha256(canonical_json(manifest.get("files", {})).encode()).hexdigest()


def upstream_key(record: dict[str, str]) -> str:
    """What a downstream fingerprint takes from an upstream artifact: its content digest, so a rebuilt upstream
    with other output reruns what reads it and one with the same output does not (the fingerprint for
    records from before content digests existed)."""
    return record.get("content") or record["fingerprint"]


def build_artifact(
    stage: str,
    version: str,
    config: dict[str, Any],
    upstream: dict[str, dict[str, str]],
    seed: int,
    root: str | Path,
    body: Callable[[Path], dict[str, Any]],
    force: bool = False,
    verify: Verify = "sizes",
) -> StageResult:
    """Reuse the artifact with this fingerprint, or run `body(tmp_dir) -> metrics` and publish it atomically.

    `upstream` maps stage name -> record (`{stage, path, fingerprint}`) of each input artifact. The body
    writes into a temporary sibling dir; the manifest (with every file's size and hash) goes in last and the dir
    is renamed into place, so an interrupted run never leaves something that looks finished. An existing dir
    that fails `verify` is rebuilt, with the reason logged.
    """
    upstream_fps = {name: upstream_key(rec) for name, rec in upstream.items()}
    fp = fingerprint(stage, version, config, upstream_fps, seed)
    final = artifact_dir(root, stage, fp)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock")):
        manifest = read_manifest(final)
        if manifest is not None and manifest.get("fingerprint") == fp and not force:
            problems = artifact_problems(final, manifest, verify)
            if not problems:
                return StageResult(
                    stage, str(final), fp, "cached", 0.0, manifest.get("metrics", {}), content_digest(manifest)
                )
            logger.warning("%s: rebuilding %s: %s", stage, final, "; ".join(problems[:5]))
        return _build(stage, version, config, upstream, seed, fp, final, body)


def _build(
    stage: str,
    version: str,
    config: dict[str, Any],
    upstream: dict[str, dict[str, str]],
    seed: int,
    fp: str,
    final: Path,
    body: Callable[[Path], dict[str, Any]],
) -> StageResult:
    _remove_stale_temporaries(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
    started_at = time.time()
    started = time.perf_counter()
    try:
        metrics = body(tmp) or {}
        seconds = time.perf_counter() - started
        manifest = {
            "stage": stage,
            "version": version,
            "fingerprint": fp,
            "config": config,
            "seed": seed,
            "upstream": {
                name: {"fingerprint": rec["fingerprint"], "content": rec.get("content"), "path": rec["path"]}
                for name, rec in upstream.items()
            },
            "metrics": metrics,
            "timings": {"started_at": started_at, "seconds": seconds},
            "packages": package_versions(),
            "files": list_files(tmp),
        }
        manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
        write_json_atomic(tmp / MANIFEST, manifest)
        _replace_dir(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(err):
            free = shutil.disk_usage(final.parent).free
            raise DiskFullError(
                f"{stage}: disk full at {final.parent} ({free} bytes free after removing the "
                "stage's temporary files); free space or point --root elsewhere"
            ) from err
        raise
    return StageResult(stage, str(final), fp, "ran", seconds, metrics, content_digest(manifest))


class DiskFullError(OSError):
    """A stage ran out of disk; the message names where and how much is free."""


def _is_disk_full(err: BaseException | None) -> bool:
    """True when `err` or an exception it was raised from is ENOSPC (libraries often wrap it in their own)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _replace_dir(new: Path, final: Path) -> None:
    """Put `new` at `final`. An old dir there (a forced rebuild, a damaged artifact) is first renamed aside, so
    at every instant `final` is either the whole old artifact or the whole new one, never a half-deleted dir."""
    if final.exists():
        aside = final.with_name(f".old-{final.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(final, aside)
        os.replace(new, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(new, final)


def _remove_stale_temporaries(final: Path) -> None:
    """Delete temporary and set-aside dirs that earlier, interrupted runs of this same artifact left behind."""
    for leftover in [*final.parent.glob(f".tmp-{final.name}-*"), *final.parent.glob(f".old-{final.name}-*")]:
        pid_text = leftover.name.split("-")[-2]
        if pid_text.isdigit() and _process_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue  # another live process is building it right now
        shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
