"""What a reward model reads, for runs of `bench/align_families.py` (made with `--until train_rm` or further).

For each run root: checks of the encoded preference pairs (the reward model's pad id never inside a sequence,
every sequence ending in the end-of-turn token, how many were cut to `--max-seq-len` and how many lost their whole
prompt to the cut), then how much preference signal the SFT model's last-token features carry before any reward
training (held-out accuracy of a logistic-regression probe on chosen-minus-rejected features, at three L2
weights), and the spread of the trained reward model's scores.

    python bench/rm_features.py /tmp/rm-2x2/gpt2-gpt2/gpt2-1234 /tmp/rm-2x2/llama-llama3/llama-1234
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zero_chatgpt.data_process.conversations import prompt_messages  # noqa: E402
from zero_chatgpt.model.reward_model import load_reward_model, reward_pad_id, sequence_scores  # noqa: E402
from zero_chatgpt.model.train_rm import encode_pairs, pair_batch  # noqa: E402
from zero_chatgpt.stage_files import HELDOUT_PAIRS, TRAIN_PAIRS, read_pairs  # noqa: E402
from zero_chatgpt.tokenizer.chat_encoding import encode_answer, encode_prompt, end_of_turn_id  # noqa: E402


def pair_checks(tokenizer, rows, encoded, max_seq_len: int) -> dict[str, int]:
    pad, end = reward_pad_id(tokenizer), end_of_turn_id(tokenizer)
    sequences = [ids for pair in encoded for ids in pair]
    no_prompt = 0
    for row in rows:
        messages = prompt_messages(row["prompt"])
        prompt = len(encode_prompt(tokenizer, messages))
        no_prompt += sum(
            len(encode_answer(tokenizer, messages, answer)) - prompt >= max_seq_len
            for answer in (row["chosen"], row["rejected"])
        )
    return {
        "sequences": len(sequences),
        "pad_inside": sum(pad in ids for ids in sequences),
        "ending_in_end_of_turn": sum(ids[-1] == end for ids in sequences),
        "end_of_turn_elsewhere": sum(end in ids[:-1] for ids in sequences),
        "cut": sum(len(ids) == max_seq_len for ids in sequences),
        "no_prompt_left": no_prompt,
        "identical_pairs": sum(chosen == rejected for chosen, rejected in encoded),
    }


def last_token_differences(model, encoded, pad: int) -> torch.Tensor:
    """(pairs, width) final-layer hidden state at the last token, chosen minus rejected."""
    out = []
    for start in range(0, len(encoded), 64):
        batch = pair_batch(encoded[start : start + 64], pad)
        with torch.no_grad():
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        last = hidden[torch.arange(hidden.size(0)), batch["attention_mask"].sum(1) - 1]
        half = last.size(0) // 2
        out.append(last[:half] - last[half:])
    return torch.cat(out)


def probe_accuracy(train: torch.Tensor, heldout: torch.Tensor, l2: float) -> float:
    scale = train.std()
    train, heldout = train / scale, heldout / scale
    weights = torch.zeros(train.size(1), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = -torch.nn.functional.logsigmoid(train @ weights).mean() + l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float((heldout @ weights > 0).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run roots holding latest.json")
    parser.add_argument("--max-seq-len", type=int, default=128, help="train_rm.max_seq_len of the runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for run in args.runs:
        latest = json.loads((run / "latest.json").read_text(encoding="utf-8"))
        sft, prefs = Path(latest["sft"]["path"]), Path(latest["build_prefs"]["path"])
        tokenizer = AutoTokenizer.from_pretrained(sft)
        pad = reward_pad_id(tokenizer)
        train_rows, heldout_rows = read_pairs(prefs / TRAIN_PAIRS), read_pairs(prefs / HELDOUT_PAIRS)
        train, heldout = (encode_pairs(tokenizer, rows, args.max_seq_len) for rows in (train_rows, heldout_rows))
        figures: dict = pair_checks(tokenizer, train_rows + heldout_rows, train + heldout, args.max_seq_len)
        model = AutoModelForCausalLM.from_pretrained(sft).eval()
        train_features, heldout_features = (last_token_differences(model, pairs, pad) for pairs in (train, heldout))
        for l2 in (1e-3, 1e-2, 1e-1):
            figures[f"probe_heldout_accuracy_l2_{l2:g}"] = probe_accuracy(train_features, heldout_features, l2)
        if "train_rm" in latest:
            reward_model = load_reward_model(Path(latest["train_rm"]["path"])).eval()
            batch = pair_batch(heldout, pad)
            with torch.no_grad():
                scores = sequence_scores(reward_model, batch["input_ids"], batch["attention_mask"])
            figures["rm_heldout_score_std"] = float(scores.std())
        results[str(run)] = figures
        print(
            f"{run}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
