"""The installed package: one top-level name in site-packages, presets inside it, and a multi-rank run that
works from a folder whose own `model.py`, `tokenizer.py` and `tasks.py` would shadow generic package names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHADOWING_FILES = ("model.py", "tokenizer.py", "tasks.py", "flows.py", "configs.py")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the built wheel; the test environment's packages are reachable through a
    `.pth` line (not as a site dir, so the editable install's finder is not loaded there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and egg-info next to the sources it builds.
    source = tmp / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp.glob("zero_chatgpt-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    before = set(os.listdir(site))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    added = set(os.listdir(site)) - before
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return {"python": python, "site": site, "added": added, "bin": venv / "bin"}


def _shadowing_dir(path: Path) -> Path:
    path.mkdir()
    for name in SHADOWING_FILES:
        (path / name).write_text('raise SystemExit("imported the caller\'s own module")\n', encoding="utf-8")
    return path


def _run(installed, cwd: Path, code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(installed["python"]), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_wheel_installs_one_top_level_package(installed):
    top_level = {name for name in installed["added"] if not name.endswith(".dist-info")}
    assert top_level == {"zero_chatgpt"}, installed["added"]
    presets = sorted(p.name for p in (installed["site"] / "zero_chatgpt" / "configs").glob("*.yaml"))
    assert {"tiny.yaml", "small.yaml", "full.yaml"} <= set(presets)


def test_generic_names_are_not_importable_and_ours_come_from_the_install(installed, tmp_path):
    done = _run(
        installed,
        tmp_path,
        "import importlib.util as u, zero_chatgpt.model.launch as l, json; print(json.dumps("
        "{'generic': [n for n in ('model', 'tasks', 'flows', 'tokenizer', 'data_process', 'configs') "
        "if u.find_spec(n)], 'file': l.__file__}))",
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["generic"] == []
    assert found["file"].startswith(str(installed["site"]))
    assert _run(installed, tmp_path, "import model").returncode != 0


def test_presets_load_from_a_folder_that_shadows_generic_names(installed, tmp_path):
    cwd = _shadowing_dir(tmp_path / "work")
    done = _run(
        installed,
        cwd,
        "from zero_chatgpt.config import load_config; print(load_config('tiny').model_dump()['run']['seed'])",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_rank_pretrain_runs_from_a_shadowing_folder(installed, tmp_path):
    cwd = _shadowing_dir(tmp_path / "work")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), OMP_NUM_THREADS="1")
    command = [
        str(installed["bin"] / "zero-chatgpt"),
        "run",
        "--preset",
        "tiny",
        "--root",
        str(tmp_path / "runs"),
        "--until",
        "pretrain",
        "--set",
        "resources.ranks=2",
        "--set",
        "pretrain.optim.max_steps=4",
        "--set",
        "pretrain.optim.eval_every=2",
        "--set",
        "pretrain.optim.checkpoint_every=2",
    ]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text(encoding="utf-8"))
    assert latest["pretrain"]["status"] == "ran"
    assert (Path(latest["pretrain"]["path"]) / "config.json").is_file()
