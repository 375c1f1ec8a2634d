"""The flow's typed parameters: the overrides model mirrors the config tree, and the CLI still reaches the flow."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from zero_chatgpt.artifacts import read_manifest
from zero_chatgpt.cli import main
from zero_chatgpt.config import PipelineConfig, Section
from zero_chatgpt.flow_parameters import PipelineConfigOverrides, overrides_dict, run_name


def section_paths(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[type[BaseModel], str]]:
    """Every field of a config model tree: dotted path -> (the model that declares it, field name)."""
    paths = {}
    for name, field in model.model_fields.items():
        paths[prefix + name] = (model, name)
        for nested in models_in(field.annotation):
            paths.update(section_paths(nested, f"{prefix}{name}."))
    return paths


def models_in(annotation) -> list[type[BaseModel]]:
    """The models inside an annotation such as `list[TextSource] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in getattr(annotation, "__args__", ()) for model in models_in(arg)]


def test_every_config_key_can_be_overridden_with_its_help_and_nothing_else():
    config_paths = section_paths(PipelineConfig)
    override_paths = section_paths(PipelineConfigOverrides)
    assert len(config_paths) > 150  # the walk really sees the tree
    assert set(override_paths) == set(config_paths)
    for path, (model, name) in config_paths.items():
        override_model, _ = override_paths[path]
        field = override_model.model_fields[name]
        assert field.description == model.model_fields[name].description, path
        assert field.default is None and issubclass(override_model, Section), path  # unset; unknown keys refused


def test_overrides_keep_types_and_bounds_and_only_the_keys_given():
    with pytest.raises(ValidationError, match="max_step"):
        PipelineConfigOverrides.model_validate({"pretrain": {"optim": {"max_step": 5}}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PipelineConfigOverrides.model_validate({"pretrain": {"optim": {"max_steps": 0}}})
    with pytest.raises(ValidationError, match="boolean"):
        PipelineConfigOverrides.model_validate({"pretrain": {"optim": {"max_steps": True}}})
    given = {"pretrain": {"optim": {"max_steps": 5}}, "base_model": {"path": None}, "data": {"sources": [{"limit": 3}]}}
    assert overrides_dict(PipelineConfigOverrides.model_validate(given)) == given  # an explicit null is kept


def test_run_names_say_what_the_run_does():
    assert run_name("tiny") == "tiny"
    assert run_name("tiny", until="ppo", force=["sft", "train_rm"]) == "tiny→ppo force=sft,train_rm"
    assert run_name("tiny", preset_file="/data/configs/my-run.yaml", until="sft") == "my-run→sft"
    overrides = PipelineConfigOverrides.model_validate({"pretrain": {"optim": {"max_steps": 5, "lr": 1e-3}}})
    assert run_name("small", overrides=overrides) == "small +2 overrides"


def test_the_cli_passes_a_preset_file_and_an_indexed_override_through_the_flow(tmp_path, prefect_api):
    preset_file = tmp_path / "my-run.yaml"
    preset_file.write_text("base: tiny\nclean:\n  min_length: 7\n", encoding="utf-8")
    root = tmp_path / "root"
    command = ["run", "--preset", str(preset_file), "--set", "data.sources.0.limit=40", "--until", "clean"]
    assert main([*command, "--root", str(root)]) == 0
    # The artifact the run reports, not whatever `clean/` lists first (its lock file sits beside it).
    manifest = read_manifest(json.loads((root / "latest.json").read_text(encoding="utf-8"))["clean"]["path"])
    assert manifest["config"]["clean"]["min_length"] == 7
    assert [source["limit"] for source in manifest["config"]["data.sources"]] == [40]
    assert manifest["metrics"]["docs_in"] == 40
