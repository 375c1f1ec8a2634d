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
