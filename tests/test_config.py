"""The config tree: presets load, typos and wrong types fail naming the key, overrides land where they say."""

from __future__ import annotations

import pytest
import yaml

from zero_chatgpt.cli import main
from zero_chatgpt.config import (
    PRESETS_DIR,
    ConfigError,
    EvaluateConfig,
    load_config,
    overrides_from_set_options,
    preset_names,
    route_stages,
)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_loads(preset):
    config = load_config(preset)
    if "clean" in route_stages(config):
        assert config.data.sources, "a preset that pretrains needs a corpus"
    assert config.data.sft_sources, "every preset needs SFT data"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key given twice in one mapping (safe_load silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key_node, deep=deep) for key_node, _ in node.value]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated keys {repeated}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


@pytest.mark.parametrize("preset", preset_names())
def test_no_preset_gives_a_key_twice(preset):
    yaml.load((PRESETS_DIR / f"{preset}.yaml").read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)


@pytest.mark.parametrize("preset", preset_names())
def test_presets_on_the_demo_world_ask_its_held_out_questions(preset):
    config = load_config(preset)
    if any(source.kind == "demo" for source in config.data.sft_sources):
        assert [source.kind for source in config.evaluate.qa_sources] == ["demo"]
    assert EvaluateConfig().qa_sources == []  # user data: no exact_match unless asked for


def test_the_align_preset_starts_from_a_base_model_on_user_data():
    config = load_config("align")
    assert route_stages(config)[:2] == ("base_model", "sft")
    assert {source.format for source in config.data.sft_sources} == {"messages"}
    assert [source.format for source in config.data.pref_sources] == ["hh"]
    assert config.build_prefs.samples_per_prompt == 0 and config.sft.lora.rank > 0


def test_presets_differ_in_scale():
    tiny, full = load_config("tiny"), load_config("full")
    assert set(preset_names()) >= {"tiny", "small", "full"}
    assert full.train_tokenizer.vocab_size == 32000
    assert full.pretrain.model.max_seq_len == 1024
    assert full.pretrain.model.num_layers >= 24 > tiny.pretrain.model.num_layers
    assert tiny.run.device == "cpu"


def test_unknown_key_names_the_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", set_options=["clean.min_lenght=5"])
    message = str(err.value)
    assert "clean.min_lenght" in message and "min_length" in message


def test_wrong_type_and_bad_choice_name_the_key():
    with pytest.raises(ConfigError, match=r"pretrain\.optim\.max_steps"):
        load_config("tiny", set_options=["pretrain.optim.max_steps=lots"])
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.kind.*'jsonl'"):
        load_config("tiny", overrides={"data": {"sources": [{"kind": "csv"}]}})


def test_dotted_overrides_parse_yaml_values_and_list_indices():
    config = load_config(
        "tiny",
        set_options=[
            "pretrain.optim.max_steps=7",
            "pretrain.optim.lr=1e-4",
            "clean.strip_citations=false",
            "data.demo.languages=[en]",
        ],
    )
    assert config.pretrain.optim.max_steps == 7 and config.pretrain.optim.lr == pytest.approx(1e-4)
    assert config.clean.strip_citations is False and config.data.demo.languages == ["en"]
    indexed = load_config("tiny", overrides=overrides_from_set_options(["data.sources.0.limit=3"]))
    assert indexed.data.sources[0].limit == 3 and indexed.data.sources[0].kind == "demo"


def test_user_file_with_base_overrides_a_subset(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("base: tiny\nclean:\n  min_length: 99\n", encoding="utf-8")
    config = load_config(str(user))
    assert config.clean.min_length == 99
    assert config.pretrain.model.hidden_size == load_config("tiny").pretrain.model.hidden_size


def test_base_cycle_and_missing_preset_are_clear(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n", encoding="utf-8")
    b.write_text("base: a.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(a))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")


def test_config_show_prints_resolved_config_and_rejects_typos(capsys):
    assert main(["config", "show", "--preset", "tiny", "--set", "dedup.threshold=0.8"]) == 0
    assert "threshold: 0.8" in capsys.readouterr().out
    assert main(["config", "show", "--set", "dedup.thresold=0.8"]) == 2
    assert "dedup.thresold" in capsys.readouterr().err


def test_setting_one_key_keeps_the_sections_own_defaults():
    """PPO's optimizer defaults to 40 steps; `--set ppo.optim.lr` must not reset it to OptimConfig's 200."""
    default = load_config("tiny")
    changed = load_config("tiny", set_options=["ppo.optim.lr=5e-5"])
    assert changed.ppo.optim.lr == 5e-5
    assert changed.ppo.optim.model_dump(exclude={"lr"}) == default.ppo.optim.model_dump(exclude={"lr"})
    nested = load_config("tiny", overrides={"train_rm": {"judge_optim": {"lr": 1e-3}}})
    assert nested.train_rm.judge_optim.max_steps == default.train_rm.judge_optim.max_steps


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("pretrain.model.hidden_size=130", "`pretrain.model`: hidden_size=130 is not a multiple of num_heads=4"),
        ("pretrain.model.num_kv_heads=3", "num_heads=4 is not a multiple of num_kv_heads=3"),
        ("pretrain.model.hidden_size=132", "head size hidden_size / num_heads = 33 must be even"),
        ("pretrain.optim.max_steps=true", "`pretrain.optim.max_steps`: expected int, got the boolean true"),
        ("run.seed=false", "`run.seed`: expected int, got the boolean false"),
    ],
)
def test_cross_field_and_type_mistakes_fail_at_load_naming_the_key(option, named):
    with pytest.raises(ConfigError) as caught:
        load_config("tiny", set_options=[option])
    assert named in str(caught.value)


def test_booleans_still_set_boolean_keys():
    assert (
        load_config("tiny", set_options=["pretrain.model.tie_embeddings=false"]).pretrain.model.tie_embeddings is False
    )
