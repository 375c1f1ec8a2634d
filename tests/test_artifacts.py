"""The stage contract: fingerprints, atomic artifact dirs, manifest written last."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

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
    assert [p.name for p in (tmp_path / "clean").iterdir() if not p.name.endswith(".lock")] == []


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

    def other_output(out_dir):
        (out_dir / "data.txt").write_text("other", encoding="utf-8")
        return {}

    other_up = build_artifact("clean", "1", {"changed": True}, {}, 0, tmp_path, other_output)
    moved = build_artifact("dedup", "1", {}, {"clean": other_up.record()}, 0, tmp_path, _body([]))
    assert moved.fingerprint != down.fingerprint


# ------------------------------------------------------------------------------------- verified artifacts


def _built(tmp_path, calls, **kwargs):
    return build_artifact("clean", "1", {"k": 1}, {}, 0, tmp_path, _body(calls), **kwargs)


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    result = _built(tmp_path, [])
    files = read_manifest(result.path)["files"]
    assert set(files) == {"data.txt"} and files["data.txt"]["size"] == 5 and len(files["data.txt"]["hash"]) == 32


@pytest.mark.parametrize("damage", ["truncate", "delete", "old_manifest", "edited_figure"])
def test_a_damaged_artifact_is_rebuilt_with_the_reason_logged(tmp_path, damage, caplog):
    calls = []
    first = _built(tmp_path, calls)
    target = Path(first.path) / "data.txt"
    if damage == "truncate":
        target.write_text("hel", encoding="utf-8")
    elif damage == "delete":
        target.unlink()
    else:
        manifest = read_manifest(first.path)
        if damage == "old_manifest":
            del manifest["files"]
        else:
            manifest["metrics"]["rows"] = 30
        (Path(first.path) / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert not is_complete(first.path, first.fingerprint)
    with caplog.at_level(logging.WARNING, logger="zero_chatgpt.artifacts"):
        again = _built(tmp_path, calls)
    assert again.status == "ran" and len(calls) == 2 and target.read_text() == "hello"
    assert "rebuilding" in caplog.text
    assert any(reason in caplog.text for reason in ("data.txt", "lists no files", "manifest.json was edited"))
    assert read_manifest(again.path)["metrics"] == {"rows": 3}


def test_same_size_edits_are_caught_by_a_deep_check_only(tmp_path):
    calls = []
    first = _built(tmp_path, calls)
    (Path(first.path) / "data.txt").write_text("jello", encoding="utf-8")
    assert _built(tmp_path, calls).status == "cached"
    assert not is_complete(first.path, first.fingerprint, verify="deep")
    assert _built(tmp_path, calls, verify="deep").status == "ran" and len(calls) == 2


def test_a_forced_rebuild_never_leaves_a_half_deleted_dir(tmp_path, monkeypatch):
    calls = []
    first = _built(tmp_path, calls)
    real_replace = os.replace

    def dying_after_moving_the_old_dir_aside(src, dst):
        real_replace(src, dst)
        if Path(dst).name.startswith(".old-"):
            raise KeyboardInterrupt  # killed between moving the old dir aside and moving the new one in

    monkeypatch.setattr("zero_chatgpt.artifacts.os.replace", dying_after_moving_the_old_dir_aside)
    with pytest.raises(KeyboardInterrupt):
        _built(tmp_path, calls, force=True)
    monkeypatch.undo()
    # The old dir was moved aside whole (never left in place without files): the artifact is simply absent.
    assert not Path(first.path).exists()
    again = _built(tmp_path, calls)
    assert again.status == "ran" and is_complete(again.path, again.fingerprint)
    assert not [p for p in (tmp_path / "clean").iterdir() if p.name.startswith((".old-", ".tmp-"))]


_CONCURRENT_BUILD = """
import json, sys, time
from pathlib import Path
from zero_chatgpt.artifacts import build_artifact
root, marker, release = map(Path, sys.argv[1:4])
def body(out_dir):
    marker.write_text("started")
    while not release.exists():
        time.sleep(0.02)
    (out_dir / "data.txt").write_text("hello")
    with open(root / "calls.txt", "a") as handle:
        handle.write("built\\n")
    return {}
result = build_artifact("clean", "1", {}, {}, 0, root, body)
print(json.dumps({"status": result.status, "path": result.path}))
"""


def test_two_runs_on_one_root_build_an_artifact_once(tmp_path):
    marker, release = tmp_path / "started", tmp_path / "release"
    command = [sys.executable, "-c", _CONCURRENT_BUILD, str(tmp_path), str(marker), str(release)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and first.poll() is None, "the first run never started its body"
        time.sleep(0.02)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with pytest.raises(subprocess.TimeoutExpired):
        second.wait(timeout=2)  # it waits on the lock while the first is building
    release.write_text("go")
    outcomes = [json.loads(process.communicate(timeout=60)[0]) for process in (first, second)]
    assert [o["status"] for o in outcomes] == ["ran", "cached"] and outcomes[0]["path"] == outcomes[1]["path"]
    assert (tmp_path / "calls.txt").read_text().count("built") == 1


def test_verify_command_names_damaged_artifacts(tmp_path, capsys):
    from zero_chatgpt.cli import main

    good = _built(tmp_path, [])
    bad = build_artifact("dedup", "1", {}, {}, 0, tmp_path, _body([]))
    assert main(["verify", str(tmp_path)]) == 0
    (Path(bad.path) / "data.txt").write_text("jello", encoding="utf-8")  # same size: only --deep sees it
    assert main(["verify", str(tmp_path)]) == 0
    assert main(["verify", str(tmp_path), "--deep"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED dedup/{Path(bad.path).name}: data.txt has other content" in out
    assert f"ok      clean/{Path(good.path).name}" in out and "1 of 2 artifacts match" in out


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_is_named_and_leaves_no_temporary_files(small_disk):
    from zero_chatgpt.artifacts import DiskFullError

    def filling(out_dir):
        (out_dir / "big.bin").write_bytes(b"\0" * (1 << 20))
        return {}

    with pytest.raises(DiskFullError, match=f"disk full at {small_disk}/clean .* bytes free"):
        build_artifact("clean", "1", {}, {}, 0, small_disk, filling)
    assert [p.name for p in (small_disk / "clean").iterdir() if not p.name.endswith(".lock")] == []


def test_downstream_fingerprints_follow_upstream_content_not_its_rebuilds(tmp_path):
    def writing(text):
        def body(out_dir):
            (out_dir / "data.txt").write_text(text, encoding="utf-8")
            return {}

        return body

    up = build_artifact("clean", "1", {}, {}, 0, tmp_path, writing("same"))
    down = build_artifact("dedup", "1", {}, {"clean": up.record()}, 0, tmp_path, writing("x"))
    rebuilt_same = build_artifact("clean", "1", {}, {}, 0, tmp_path, writing("same"), force=True)
    again = build_artifact("dedup", "1", {}, {"clean": rebuilt_same.record()}, 0, tmp_path, writing("x"))
    assert again.fingerprint == down.fingerprint and again.status == "cached"
    rebuilt_other = build_artifact("clean", "1", {}, {}, 0, tmp_path, writing("other"), force=True)
    moved = build_artifact("dedup", "1", {}, {"clean": rebuilt_other.record()}, 0, tmp_path, writing("x"))
    assert moved.fingerprint != down.fingerprint and moved.status == "ran"
    assert read_manifest(moved.path)["upstream"]["clean"]["content"] == rebuilt_other.content
