"""Talking to a trained model: streamed multi-turn chat and batch generation over a prompt file.

Any causal LM dir the pipeline exported works (LLaMA / Qwen2 / GPT-2 / BLOOM / OPT, this project's or a base
model's): prompts are rendered with the tokenizer's own chat template (`tokenizer/chat_encoding.py`), and a reply
ends at the template's end-of-turn token (or the end-of-text token), so what a user sees here is what SFT trained
on and PPO and evaluation saw. Both use the pipeline's batched, KV-cached `sample`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zero_chatgpt.data_process.conversations import ConversationError, prompt_messages
from zero_chatgpt.model.artifact_io import iter_jsonl
from zero_chatgpt.model.base_model import check_finite_weights
from zero_chatgpt.model.build import resolve_device
from zero_chatgpt.model.generation import context_length, sample
from zero_chatgpt.tokenizer.chat_encoding import encode_prompt, end_of_turn_id, ensure_chat_template, pad_id, stop_ids

# A prompt: one user turn as text, or `{"role", "content"}` messages ending with a user turn.
Prompt = str | list[dict[str, str]]


def load_chat_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a model dir, with a chat template.

    A tokenizer without one gets ChatML only when its vocabulary already holds ChatML's tokens (adding tokens would
    give ids the model has no embeddings for): a base model that was never fine-tuned for chat is refused with a
    message saying so.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        setup = ensure_chat_template(tokenizer)
        if setup.added_tokens:
            raise ValueError(
                f"{model_dir}: the tokenizer has no chat template (a base model that was not fine-tuned for "
                "chat?); pass the sft or ppo artifact dir of a run that aligned it"
            )
    return tokenizer


def load_chat_model(model_dir: str | Path, device: str = "auto"):
    """(model, tokenizer) from a pipeline artifact dir (any stage that saved a causal LM) or any Hugging Face
    causal LM dir whose tokenizer has a chat template."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json — pass a pretrain, sft or ppo artifact dir")
    tokenizer = load_chat_tokenizer(model_dir)
    model = check_finite_weights(AutoModelForCausalLM.from_pretrained(model_dir), model_dir).to(resolve_device(device))
    model.eval()
    return model, tokenizer


class _Stopped(Exception):
    """Raised from the streaming callback to end generation at a stop token."""


class ChatSession:
    """A multi-turn conversation; `reply` streams the assistant's text through `on_text` as it is written."""

    def __init__(
        self,
        model,
        tokenizer,
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.9,
        system: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_p = temperature, top_p
        # The template's end-of-turn token ends a reply; so does the end-of-text token, should the model write it.
        self.stop_id = end_of_turn_id(tokenizer)
        self.stop_ids = set(stop_ids(tokenizer))
        self.pad_id = pad_id(tokenizer)
        self.context_tokens = context_length(model) or 2048
        # Leave at least half the context for the conversation so far.
        self.max_new_tokens = max(1, min(max_new_tokens, self.context_tokens // 2))
        self.system = system
        self.messages: list[dict[str, str]] = []
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def reset(self) -> None:
        """Forget the conversation."""
        self.messages = []

    def _prompt_ids(self) -> list[int]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        history = list(self.messages)
        budget = self.context_tokens - self.max_new_tokens
        while True:
            ids = encode_prompt(self.tokenizer, system + history)
            # Drop the oldest exchange first (the history stays user-first); a single over-long message keeps its end.
            if len(ids) <= budget or len(history) <= 1:
                return ids[-budget:]
            history = history[2:] if len(history) > 2 else history[1:]

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> str:
        """Add the user's message, generate the answer (streamed through `on_text`) and return it."""
        self.messages.append({"role": "user", "content": user_text})
        generated: list[int] = []
        shown = 0

        def stream(token: torch.LongTensor) -> None:
            nonlocal shown
            token_id = int(token[0])
            if token_id in self.stop_ids:
                raise _Stopped
            generated.append(token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            # Byte-fallback pieces of one character arrive separately: wait until the character is whole.
            if on_text is not None and not text.endswith("\ufffd") and len(text) > shown:
                on_text(text[shown:])
                shown = len(text)

        try:
            sample(
                self.model,
                [self._prompt_ids()],
                self.max_new_tokens,
                self.stop_id,
                self.pad_id,
                self.temperature,
                self.top_p,
                self.generator,
                on_tokens=stream,
            )
        except _Stopped:
            pass
        answer = self.tokenizer.decode(generated, skip_special_tokens=True)
        if on_text is not None and len(answer) > shown:
            on_text(answer[shown:])
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a text file (one per non-empty line) or JSONL (field `prompt`: a string, or a list of
    `{"role", "content"}` messages ending with a user turn); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.suffix == ".jsonl":
        prompts: list[Prompt] = []
        for number, row in iter_jsonl(path):
            prompt: Any = row.get("prompt")
            if isinstance(prompt, list):
                try:
                    prompt_messages(prompt)
                except ConversationError as err:
                    raise ValueError(f"{path}:{number}: bad `prompt` conversation: {err}") from None
            elif not isinstance(prompt, str):
                raise ValueError(
                    f"{path}:{number}: expected an object with a `prompt` string or list of role/content messages"
                )
            prompts.append(prompt)
    else:
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def generate_replies(
    model,
    tokenizer,
    prompts: Iterable[Prompt],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Answers to `prompts` (single- or multi-turn), batched; greedy by default so the output is reproducible.

    A prompt longer than the model's context keeps its end (room is left for `max_new_tokens`).
    """
    prompts = list(prompts)
    stop_id, stops = end_of_turn_id(tokenizer), set(stop_ids(tokenizer))
    context = context_length(model)
    room = None if context is None else max(1, context - max_new_tokens)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        ids = [encode_prompt(tokenizer, prompt_messages(prompt), room) for prompt in batch]
        rollout = sample(model, ids, max_new_tokens, stop_id, pad_id(tokenizer), temperature, top_p, generator)
        rows += [{"prompt": p, "response": r} for p, r in zip(batch, _replies(tokenizer, rollout, stops))]
    return rows


def _replies(tokenizer, rollout, stops: set[int]) -> list[str]:
    """Each row's generated text up to its first stop token (`sample` stops rows at the end-of-turn token only)."""
    texts = []
    for tokens, mask in zip(rollout.responses.tolist(), rollout.response_mask.tolist()):
        kept = []
        for token, keep in zip(tokens, mask):
            if not keep or token in stops:
                break
            kept.append(token)
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts
