"""Every failure of the command line is one clear line (and the traceback in a file); config mistakes exit 2,
failures of the work exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from zero_chatgpt import cli


def test_config_mistakes_exit_2_with_the_key(capsys):
    assert cli.main(["config", "show", "--set", "pretrain.optim.max_step=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key `pretrain.optim.max_step`" in err and "Traceback" not in err


def test_any_other_failure_is_one_line_plus_a_traceback_file(capsys, monkeypatch, tmp_path):
    def broken(args):
        raise TypeError("something deep went wrong\nwith detail on a second line")

    monkeypatch.setattr(cli, "_cmd_run", broken)
    assert cli.main(["run", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "zero-chatgpt: run failed: TypeError: something deep went wrong"
    log = Path(err[1].split("full traceback: ")[1].split(" (")[0])
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text() and "second line" in log.read_text()


def test_verify_of_a_missing_root_fails_cleanly(capsys, tmp_path):
    assert cli.main(["verify", str(tmp_path / "nowhere")]) == 1
    assert "no artifacts" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_latest_stage_references_resolve_through_latest_json(tmp_path):
    (tmp_path / "latest.json").write_text('{"ppo": {"path": "/x/ppo/abc"}}', encoding="utf-8")
    assert cli.model_dir_of(f"{tmp_path}/latest:ppo") == Path("/x/ppo/abc")
    assert cli.model_dir_of("runs/ppo/abc") == Path("runs/ppo/abc")
    with pytest.raises(FileNotFoundError, match="has no stage 'sft'"):
        cli.model_dir_of(f"{tmp_path}/latest:sft")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cli.model_dir_of(f"{tmp_path}/elsewhere/latest:ppo")


@pytest.mark.usefixtures("prefect_api")
def test_a_failing_stage_prints_its_error_without_prefects_tracebacks(capfd, tmp_path):
    """The stage's error in one line; Prefect's task and flow tracebacks stay in the file and the run's logs."""
    argv = ["run", "--root", str(tmp_path), "--until", "train_tokenizer", "--set", "train_tokenizer.vocab_size=60000"]
    assert cli.main(argv) == 1
    out, err = capfd.readouterr()
    assert "Traceback (most recent call last)" not in out + err
    assert "zero-chatgpt: run failed: RuntimeError: sentencepiece training failed" in err
    log = Path(err.split("full traceback: ")[1].split(" (")[0])
    assert "Traceback (most recent call last)" in log.read_text()
