"""Talking to a trained model: streamed multi-turn chat and batch generation over a prompt file.

Both use the pipeline's own batched, KV-cached `sample`, the ChatML template and `<|im_end|>` as the stop
token, so what a user sees here is what PPO and evaluation saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zero_chatgpt.model.artifact_io import iter_jsonl
from zero_chatgpt.model.build import resolve_device
from zero_chatgpt.model.generation import chat_prompt_ids, response_texts, sample
from zero_chatgpt.tokenizer.chat import IM_END, render_chat


def load_chat_model(model_dir: str | Path, device: str = "auto"):
    """(model, tokenizer) from a pipeline artifact dir (any stage that saved a causal LM)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json — pass a pretrain, sft or ppo artifact dir")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(resolve_device(device))
    model.eval()
    return model, tokenizer


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
        self.stop_id = tokenizer.convert_tokens_to_ids(IM_END)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_id
        self.context_tokens = int(getattr(model.config, "max_position_embeddings", 2048))
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
            text = render_chat(system + history, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            # Drop the oldest turns first; a single over-long message keeps its end.
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
            if token_id == self.stop_id:
                return
            generated.append(token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            # Byte-fallback pieces of one character arrive separately: wait until the character is whole.
            if on_text is not None and not text.endswith("\ufffd") and len(text) > shown:
                on_text(text[shown:])
                shown = len(text)

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
        answer = self.tokenizer.decode(generated, skip_special_tokens=True)
        if on_text is not None and len(answer) > shown:
            on_text(answer[shown:])
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per non-empty line) or JSONL (field `prompt`); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.suffix == ".jsonl":
        prompts = []
        for number, row in iter_jsonl(path):
            if not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{number}: expected an object with a string `prompt`")
            prompts.append(row["prompt"])
    else:
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def generate_replies(
    model,
    tokenizer,
    prompts: Iterable[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Single-turn answers for `prompts`, batched; greedy by default so the output is reproducible."""
    prompts = list(prompts)
    stop_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rollout = sample(
            model, chat_prompt_ids(tokenizer, batch), max_new_tokens, stop_id, pad_id, temperature, top_p, generator
        )
        rows += [{"prompt": p, "response": r} for p, r in zip(batch, response_texts(tokenizer, rollout))]
    return rows
