"""A base model's fingerprint follows its files; hub ids need an explicit download flag; bad dirs are named."""

from __future__ import annotations

import os

import pytest

from tests.foreign_models import tiny_causal_lm
from tests.foreign_tokenizers import gpt2_style_tokenizer
from zero_chatgpt.file_hash import FileHashCache
from zero_chatgpt.model.base_model import BaseModelError, resolve_base_model


@pytest.fixture
def base_dir(tmp_path):
    out = tmp_path / "gpt2-tiny"
    tiny_causal_lm("gpt2").save_pretrained(out)
    gpt2_style_tokenizer().save_pretrained(out)
    return out


def test_fingerprint_follows_the_content_of_config_tokenizer_and_weights(base_dir, tmp_path):
    cache = FileHashCache(tmp_path / "hashes.json")
    first = resolve_base_model(str(base_dir), hash_cache=cache)
    assert first.path == base_dir.resolve() and first.files >= 3
    assert resolve_base_model(str(base_dir), hash_cache=FileHashCache(tmp_path / "hashes.json")) == first

    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        target = base_dir / name
        original = target.read_bytes()
        target.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit, same size
        os.utime(target, ns=(1, 1))  # a new mtime: the cache must rehash rather than trust the old entry
        assert resolve_base_model(str(base_dir), hash_cache=cache).fingerprint != first.fingerprint, name
        target.write_bytes(original)
    assert resolve_base_model(str(base_dir), hash_cache=cache).fingerprint == first.fingerprint


def test_the_hash_cache_skips_unchanged_files(base_dir, tmp_path, monkeypatch):
    cache_path = tmp_path / "hashes.json"
    resolve_base_model(str(base_dir), hash_cache=FileHashCache(cache_path))
    monkeypatch.setattr("zero_chatgpt.file_hash.hash_file", lambda path: pytest.fail(f"rehashed {path}"))
    again = FileHashCache(cache_path)
    resolve_base_model(str(base_dir), hash_cache=again)
    assert not again.changed


def test_a_name_that_is_no_local_dir_needs_the_download_flag(monkeypatch):
    with pytest.raises(BaseModelError, match="allow_download"):
        resolve_base_model("Qwen/Qwen2.5-0.5B")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE"):
        resolve_base_model("Qwen/Qwen2.5-0.5B", allow_download=True)


def test_incomplete_dirs_are_named(tmp_path, base_dir):
    with pytest.raises(BaseModelError, match="no config.json"):
        resolve_base_model(str(tmp_path))
    (base_dir / "model.safetensors").unlink()
    with pytest.raises(BaseModelError, match="no weights"):
        resolve_base_model(str(base_dir))
    with pytest.raises(BaseModelError, match="is a file"):
        resolve_base_model(str(base_dir / "config.json"))


def test_the_base_model_stage_publishes_a_loadable_model_dir_with_its_origin(base_dir, tmp_path):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zero_chatgpt.config import BaseModelConfig
    from zero_chatgpt.model.base_model import import_base_model
    from zero_chatgpt.stage_files import BASE_MODEL_RECORD

    out = tmp_path / "artifact"
    out.mkdir()
    metrics = import_base_model(BaseModelConfig(path=str(base_dir)), out)
    assert metrics["model_type"] == "gpt2" and metrics["has_chat_template"] is False
    assert (out / "model.safetensors").is_symlink()  # a big checkpoint is linked, not copied
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    record = json.loads((out / BASE_MODEL_RECORD).read_text())
    assert record["origin"] == str(base_dir.resolve()) and record["fingerprint"] == metrics["fingerprint"]


def test_an_encoder_decoder_is_refused_by_name(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from zero_chatgpt.config import BaseModelConfig
    from zero_chatgpt.model.base_model import import_base_model

    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(
        T5Config(vocab_size=320, d_model=16, d_ff=32, num_layers=1, num_heads=2)
    ).save_pretrained(t5)
    gpt2_style_tokenizer().save_pretrained(t5)
    with pytest.raises(BaseModelError, match="encoder-decoder"):
        import_base_model(BaseModelConfig(path=str(t5)), tmp_path / "out")


def test_weights_that_all_train_load_in_float32_frozen_or_adapted_ones_as_asked():
    import torch

    from zero_chatgpt.model.base_model import load_dtype

    assert load_dtype("bfloat16", "cuda") == torch.bfloat16  # frozen (reference, reward) or under LoRA adapters
    assert load_dtype("auto", "cuda") == "auto"  # the checkpoint's own
    assert load_dtype("bfloat16", "cuda", trains_all_weights=True) == torch.float32  # AdamW keeps fp32 weights
    assert load_dtype("float16", "cpu") == torch.float32
