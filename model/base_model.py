"""An existing model as the pipeline's input: where it is, and the fingerprint that stands for it.

A local directory is fingerprinted by the content of every file in it (config, tokenizer, weights), so editing or
swapping any of them reruns the stages after it; a hub id by the id and the commit its revision resolves to, and
only when downloads are allowed (offline it is an error naming the id). Remote code is never run unless asked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from zero_chatgpt.file_hash import FileHashCache

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


class BaseModelError(ValueError):
    """A base model that cannot be used; the message names the path or id and what is missing."""


@dataclass(frozen=True)
class ResolvedBaseModel:
    """A base model on local disk: `path` holds config, tokenizer and weights; `fingerprint` stands for them."""

    path: Path
    fingerprint: str
    origin: str  # the local path, or "hub:<id>@<commit>"
    files: int


def resolve_base_model(
    name: str, revision: str | None = None, allow_download: bool = False, hash_cache: FileHashCache | None = None
) -> ResolvedBaseModel:
    """A local model directory, or (with `allow_download`) a hub id fetched into the local hub cache."""
    local = Path(name).expanduser()
    if local.is_dir():
        return _local_model(local.resolve(), hash_cache or FileHashCache())
    if local.exists():
        raise BaseModelError(
            f"base_model.path {name!r} is a file; give the directory holding config.json, the tokenizer and the weights"
        )
    if not allow_download:
        raise BaseModelError(
            f"base_model.path {name!r} is not a local directory. To fetch it from the Hugging Face hub set "
            "base_model.allow_download: true (needs network), or download it yourself and give its directory"
        )
    return _hub_model(name, revision)


def _local_model(path: Path, hash_cache: FileHashCache) -> ResolvedBaseModel:
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base model {path}: no config.json (is this a Hugging Face model directory?)")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise BaseModelError(f"base model {path}: no weights ({', '.join(WEIGHT_PATTERNS)})")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{hash_cache.hash(file)}\n".encode())
    hash_cache.save()
    return ResolvedBaseModel(path=path, fingerprint=digest.hexdigest(), origin=str(path), files=len(files))


def _hub_model(name: str, revision: str | None) -> ResolvedBaseModel:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BaseModelError(f"base model {name!r}: HF_HUB_OFFLINE=1, so the hub cannot be asked for it")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(name, revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise BaseModelError(
            f"base model {name!r} (revision {revision or 'main'}) could not be fetched from the hub: {err}"
        ) from err
    commit = path.name  # snapshots/<commit>
    payload = json.dumps({"hub": name, "commit": commit}, sort_keys=True)
    return ResolvedBaseModel(
        path=path,
        fingerprint=hashlib.sha256(payload.encode()).hexdigest(),
        origin=f"hub:{name}@{commit}",
        files=sum(1 for p in path.rglob("*") if p.is_file()),
    )


_RESOLVED: dict[tuple[str, str | None, bool], ResolvedBaseModel] = {}


def resolve_configured_base_model(cfg, hash_cache: FileHashCache | None = None) -> ResolvedBaseModel:
    """`resolve_base_model` for a `BaseModelConfig`; a hub id is asked for once per process, not per fingerprint."""
    key = (cfg.path, cfg.revision, cfg.allow_download)
    if Path(cfg.path).expanduser().is_dir():
        return resolve_base_model(cfg.path, cfg.revision, cfg.allow_download, hash_cache)
    if key not in _RESOLVED:
        _RESOLVED[key] = resolve_base_model(cfg.path, cfg.revision, cfg.allow_download, hash_cache)
    return _RESOLVED[key]


def import_base_model(cfg, out_dir: Path, hash_cache: FileHashCache | None = None) -> dict:
    """The `base_model` stage: check the model, and make `out_dir` a model dir that stands for it.

    `out_dir` gets a symlink per file of the model (a multi-GB checkpoint is not copied; the artifact manifest
    still records every file's size and hash) and `BASE_MODEL_RECORD` saying where it came from. Every later
    stage loads the model from `out_dir` as from any Hugging Face dir.
    """
    from transformers import AutoConfig, AutoTokenizer

    from zero_chatgpt.stage_files import BASE_MODEL_RECORD, MANIFEST

    resolved = resolve_configured_base_model(cfg, hash_cache)
    try:
        model_config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=cfg.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise BaseModelError(f"base model {resolved.origin}: cannot be loaded with the Auto classes: {err}") from err
    if getattr(model_config, "is_encoder_decoder", False):
        raise BaseModelError(
            f"base model {resolved.origin} is an encoder-decoder ({model_config.model_type}); "
            "the pipeline aligns decoder-only causal LMs"
        )
    out_dir = Path(out_dir)
    for file in sorted(p for p in resolved.path.rglob("*") if p.is_file()):
        relative = file.relative_to(resolved.path)
        # A previous run's artifact may be the base: its manifest and record describe that run, not this one.
        if _hidden(relative) or relative.as_posix() in (BASE_MODEL_RECORD, MANIFEST):
            continue
        link = out_dir / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(file.resolve())
    metrics = {
        "origin": resolved.origin,
        "model_type": model_config.model_type,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": _context_length(model_config),
        "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "files": resolved.files,
        "fingerprint": resolved.fingerprint,
    }
    (out_dir / BASE_MODEL_RECORD).write_text(
        json.dumps({**metrics, "dtype": cfg.dtype, "trust_remote_code": cfg.trust_remote_code}, indent=2) + "\n",
        encoding="utf-8",
    )
    return metrics


def _context_length(model_config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int):
            return value
    return None


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def load_dtype(dtype: str, device: str, trains_all_weights: bool = False):
    """The torch dtype a model loads in: float32 on CPU whatever is asked (CPU kernels for half types are slow and
    some are missing), and float32 for a model whose every weight trains (AdamW steps on bf16/fp16 weights lose
    updates smaller than their precision; autocast does the half-precision math); otherwise — a frozen model, or
    one trained through LoRA adapters — on GPU the asked dtype, `auto` meaning the checkpoint's own."""
    import torch

    if device == "cpu" or trains_all_weights:
        return torch.float32
    return "auto" if dtype == "auto" else getattr(torch, dtype)  # float32 / bfloat16 / float16, as the config allows


def load_causal_lm(
    model_dir: Path,
    dtype: str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
    trains_all_weights: bool = False,
):
    """`AutoModelForCausalLM` from `model_dir` in the dtype `load_dtype` picks; remote code only when asked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=load_dtype(dtype, device, trains_all_weights), trust_remote_code=trust_remote_code
    )
    return check_finite_weights(model, model_dir)


def check_finite_weights(model, model_dir: Path):
    """`model`, after checking no weight loaded from `model_dir` holds NaN or inf.

    A file overwritten in place keeps its size, so a cached artifact that was damaged after it was written passes
    the default (sizes) check and would otherwise train and sample as NaN without a word. One pass over the
    weights costs far less than loading them.
    """
    import torch

    damaged = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if damaged:
        raise BaseModelError(
            f"{model_dir}: {len(damaged)} weight tensor(s) hold NaN or inf (first: {damaged[0]}), so a weight file "
            "was damaged after it was written; `zero-chatgpt verify ROOT --deep` names damaged artifacts and "
            "`--force STAGE` rebuilds one"
        )
    return model


def prepare_chat_model(model, tokenizer):
    """Give `tokenizer` a chat template (its own, else ChatML with its special tokens, see `ensure_chat_template`)
    and grow `model`'s embeddings to match; returns the `ChatTemplateSetup` for the manifest."""
    from zero_chatgpt.tokenizer.chat_encoding import ensure_chat_template

    setup = ensure_chat_template(tokenizer)
    if setup.vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(setup.vocab_size)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return setup
