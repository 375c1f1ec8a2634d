"""The stage contract: fingerprints, atomic artifact dirs, manifest written last."""

from __future__ import annotations

import json

import pytest

from zero_chatgpt.artifacts import artifact_dir, build_artifact, fingerprint, is_complete, read_manifest


def test_fingerprint_is_stable_and_sensitive_to_every_input():
    base = fingerprint("clean", "1", {"a": 1, "b": [1, 2]}, {"up": "x"}, 7)
    assert base == fingerprint("clean", "1", {"b": [1, 2], "a": 1}, {"up": "x"}, 7), "key order must not matter"
    variants = [
        fingerprint("dedup", "1", {"a": 1, "b": [1, 2]}, {"up": "x"}, 7),
        fingerprint("clean", "2", {"a": 1, "b": [1, 2]}, {"up": "x"}, 7),
        fingerprint("clean", "1", {"a": 2, "b": [1, 2]}, {"up": "x"}, 7),
        fingerprint("clean", "1", {"a": 1, "b": [1, 2]}, {"up": "y"}, 7),
        fingerprint("clean", "1", {"a": 1, "b": [1, 2]}, {"up": "x"}, 8),
    ]
    assert len({base, *variants}) == 6


def _body(calls):
    def body(out_dir):
        calls.append(out_dir)
        (out_dir / "data.txt").write_text("hello", encoding="utf-8")
        return {"rows": 3}
    return body


def test_build_then_reuse_then_force(tmp_path):
    calls = []
    first = build_artifact("clean", "1", {"k": 1}, {}, 0, tmp_path, _body(calls))
    assert first.status == "ran" and len(calls) == 1
    assert (tmp_path / "clean" / first.fingerprint[:12] / "data.txt").read_text() == "hello"
    manifest = read_manifest(first.path)
    assert manifest["metrics"] == {"rows": 3} and manifest["fingerprint"] == first.fingerprint
    assert {"config", "upstream", "timings", "packages"} <= set(manifest)

    again = build_artifact("clean", "1", {"k": 1}, {}, 0, tmp_path, _body(calls))
    assert again.status == "cached" and len(calls) == 1 and again.path == first.path

    forced = build_artifact("clean", "1", {"k": 1}, {}, 0, tmp_path, _body(calls), force=True)
    assert forced.status == "ran" and len(calls) == 2 and is_complete(forced.path, forced.fingerprint)


def test_failed_body_leaves_no_artifact_and_no_temporary(tmp_path):
    def broken(out_dir):
        (out_dir / "half.txt").write_text("partial", encoding="utf-8")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_artifact("clean", "1", {}, {}, 0, tmp_path, broken)
    assert list((tmp_path / "clean").iterdir()) == []


def test_dir_without_manifest_is_not_an_artifact(tmp_path):
    fp = fingerprint("clean", "1", {}, {}, 0)
    stale = artifact_dir(tmp_path, "clean", fp)
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a crash", encoding="utf-8")
    calls = []
    result = build_artifact("clean", "1", {}, {}, 0, tmp_path, _body(calls))
    assert result.status == "ran" and len(calls) == 1
    assert not (stale / "junk").exists()
    assert json.loads((stale / "manifest.json").read_text())["fingerprint"] == fp


def test_upstream_lineage_is_recorded(tmp_path):
    up = build_artifact("clean", "1", {}, {}, 0, tmp_path, _body([]))
    down = build_artifact("dedup", "1", {}, {"clean": up.record()}, 0, tmp_path, _body([]))
    assert read_manifest(down.path)["upstream"]["clean"]["fingerprint"] == up.fingerprint
    other_up = build_artifact("clean", "1", {"changed": True}, {}, 0, tmp_path, _body([]))
    moved = build_artifact("dedup", "1", {}, {"clean": other_up.record()}, 0, tmp_path, _body([]))
    assert moved.fingerprint != down.fingerprint
