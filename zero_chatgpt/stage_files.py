"""The files one stage writes and another reads: every such name, and the readers several stages share.

A stage reads another stage's output only through this module (or the format module it names here), never by
importing the other stage's module: a stage's code can then change without breaking its readers, and a
newcomer finds every inter-stage contract in one place. Files a stage writes only for people (samples.md,
metrics.jsonl) are named in the stage's own module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zero_chatgpt.artifacts import MANIFEST  # noqa: F401  (every artifact: written last, see artifacts.py)
from zero_chatgpt.data_process.conversations import ConversationError, prompt_messages
from zero_chatgpt.data_process.token_shards import META as SHARD_META  # noqa: F401  (read with TokenShards)
from zero_chatgpt.model.artifact_io import iter_jsonl, read_jsonl
from zero_chatgpt.tokenizer.files import HF_TOKENIZER_FILE, SP_MODEL_FILE  # noqa: F401  (train_tokenizer)

# ------------------------------------------------------------------ base_model: an existing model as input
# The artifact dir is a Hugging Face model dir (symlinks to the user's files) plus this record of its origin.
BASE_MODEL_RECORD = "zero_chatgpt_base_model.json"

# ------------------------------------------------------------------ sft: the split of the chat rows
# Rows `{"id", "prompt", "response", "source"[, "answer"]}`; `answer` is the short fact a right response states.
RLHF_PROMPTS = "rlhf_prompts.jsonl"  # held out from SFT; read by build_prefs and ppo
SFT_VAL = "sft_val.jsonl"  # SFT's val loss only; read by evaluate (prompts no stage trained on)
SFT_TRAIN = "sft_train.jsonl"  # trained on; read by build_prefs (references for mined negatives)
REJECTED = "rejected.jsonl"  # quarantined input rows with a reason (sft, build_prefs); for people

# ------------------------------------------------------------------ build_prefs: preference pairs
# Rows `{"prompt", "chosen", "rejected", "source"[, "id", "answer"]}`. No normalised prompt and no reference
# (`chosen`) is on both sides, and mined negatives come from the train side only.
TRAIN_PAIRS = "train_pairs.jsonl"  # real pairs, then mined ones (`source` says which); read by train_rm
HELDOUT_PAIRS = "heldout_pairs.jsonl"  # real pairs only; read by train_rm to measure its judges
PAIR_KEYS = ("prompt", "chosen", "rejected")

# ------------------------------------------------------------------ train_rm: the judges
# The reward model itself is the artifact dir (AutoModelForSequenceClassification); this subdir holds the
# second judge, trained on pairs disjoint from the first one's, loaded by evaluate.
INDEPENDENT_JUDGE_DIR = "independent_judge"


def read_chat_rows(sft_dir: Path, name: str, require_response: bool = True) -> list[dict[str, Any]]:
    """The rows of one of the sft artifact's split files (`RLHF_PROMPTS`, `SFT_VAL`, `SFT_TRAIN`), in file order.

    A row's `prompt` is a non-empty string or a message list ending with a user turn (`prompt_messages`), its
    `response` a string (unless `require_response` is false). A missing file is an error saying `sft_dir` is not an
    sft artifact; a bad row is an error naming the file and line.
    """
    path = Path(sft_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {sft_dir} is not an sft artifact")
    rows = []
    for number, row in iter_jsonl(path):
        if require_response and not isinstance(row.get("response"), str):
            raise ValueError(f"{path}:{number}: key 'response' is missing or not a string")
        check_prompt(row, path, number)
        rows.append(row)
    return rows


def check_prompt(row: dict[str, Any], path: Path, number: int) -> None:
    """Raise, naming the file and line, unless `row["prompt"]` is a non-empty string or a message list ending with
    a user turn."""
    prompt = row.get("prompt")
    if prompt is None:
        raise ValueError(f"{path}:{number}: key 'prompt' is missing")
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError(f"{path}:{number}: key 'prompt' is empty")
    try:
        prompt_messages(prompt)
    except ConversationError as err:
        raise ValueError(f"{path}:{number}: key 'prompt': {err}") from None


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Rows of a pairs file (`TRAIN_PAIRS` / `HELDOUT_PAIRS`): `chosen` and `rejected` strings, a `prompt` as
    `check_prompt` wants it; a malformed line or a bad key is an error naming the file and line, and so is an
    empty file."""
    pairs = read_jsonl(path, required_str_keys=("chosen", "rejected"))
    for number, row in enumerate(pairs, start=1):
        check_prompt(row, path, number)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def independent_judge_dir(rm_dir: Path) -> Path:
    """Where a train_rm artifact keeps its independent judge (it may not have one: see `train_rm.independent_judge`)."""
    return Path(rm_dir) / INDEPENDENT_JUDGE_DIR
