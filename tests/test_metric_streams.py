"""Training metrics stream to TensorBoard through the library's own writer, from every stage's MetricsLog."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zero_chatgpt.config import ConfigError, load_config
from zero_chatgpt.metric_streams import MetricStreams, streaming_metrics
from zero_chatgpt.model.training import MetricsLog
from zero_chatgpt.tasks.stage import StageSpec, run_stage


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_records_logged_inside_a_stream_reach_tensorboard_with_their_steps(tmp_path):
    streams = MetricStreams("pretrain-abc", tensorboard_dir=str(tmp_path / "tb"))
    with streaming_metrics(streams):
        log = MetricsLog(tmp_path / "metrics.jsonl")
        for step, loss in [(1, 2.5), (2, 2.0), (3, 1.5)]:
            log.write({"step": step, "loss": loss, "note": "text is not a scalar", "done": True})
        log.write({"step": 3, "val_loss": 1.75})
    curves = scalars(tmp_path / "tb")
    assert curves["loss"] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert curves["val_loss"] == [(3, 1.75)]
    assert set(curves) == {"loss", "val_loss"}


def test_nothing_is_written_without_a_stream_or_without_records(tmp_path):
    MetricsLog(tmp_path / "metrics.jsonl").write({"step": 1, "loss": 1.0})
    with streaming_metrics(MetricStreams("sft-abc", tensorboard_dir=str(tmp_path / "tb"))):
        pass
    assert not (tmp_path / "tb").exists()


def test_a_stage_streams_to_a_run_named_by_stage_and_fingerprint_under_the_root(tmp_path):
    config = load_config("tiny").model_dump(mode="json")
    spec = StageSpec("pretrain", "test", ("pretrain",))

    def body(out_dir):
        log = MetricsLog(out_dir / "metrics.jsonl")
        for step in range(1, 4):
            log.write({"step": step, "loss": 1.0 / step})
        return {"steps": 3}

    record = run_stage(spec, config, {}, str(tmp_path), False, body)
    runs = list((tmp_path / "tensorboard").iterdir())
    assert [run.name for run in runs] == [f"pretrain-{record['fingerprint'][:12]}"]
    assert [step for step, _ in scalars(runs[0])["loss"]] == [1, 2, 3]

    config["tracking"]["tensorboard"] = False
    spec = StageSpec("sft", "test", ("sft",))
    run_stage(spec, config, {}, str(tmp_path), False, body)
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1


def test_a_wandb_project_without_wandb_installed_is_a_config_error(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None if name == "wandb" else object())
    with pytest.raises(ConfigError, match="wandb is not installed"):
        load_config("tiny", set_options=["tracking.wandb_project=my-project"])
