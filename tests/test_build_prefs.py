"""build_prefs: pair counts, identical and right-in-other-words pairs dropped, user pairs merged (bad rows
quarantined), determinism; the strict held-out split and the mined negatives (off by default, never touching a
held-out prompt or reference)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from zero_chatgpt.config import (
    BuildPrefsConfig,
    DemoCorpusConfig,
    MinedNegativesConfig,
    ModelConfig,
    PrefSource,
    TrainTokenizerConfig,
)
from zero_chatgpt.data_process.demo_corpus import demo_documents, demo_sft_pairs
from zero_chatgpt.model.artifact_io import read_jsonl, write_jsonl
from zero_chatgpt.model.build import build_model
from zero_chatgpt.model.build_prefs import SAMPLED_SOURCE, build_prefs, select_prompts
from zero_chatgpt.model.preference_pairs import (
    MISMATCHED_SOURCE,
    SAME_SUBJECT_SOURCE,
    mismatched_pairs,
    normalise_text,
    pair_groups,
    same_subject_pairs,
    sft_reference_pairs,
    split_pairs,
    states_the_answer,
)
from zero_chatgpt.stage_files import HELDOUT_PAIRS, REJECTED, RLHF_PROMPTS, SFT_TRAIN, TRAIN_PAIRS
from zero_chatgpt.tokenizer.toy_corpus import write_corpus_parts
from zero_chatgpt.tokenizer.train import train_tokenizer

DEMO = DemoCorpusConfig(num_entities=8, docs_per_entity=1)
SEED = 3
NUM_PROMPTS = 20
CFG = BuildPrefsConfig(
    max_new_tokens=12,
    temperature=1.0,
    top_p=0.95,
    batch_size=8,
    max_prompts=16,
    samples_per_prompt=1,
    val_fraction=0.25,
)
MINED_SOURCES = {MISMATCHED_SOURCE, SAME_SUBJECT_SOURCE}


def read_real_pairs(out: Path) -> list[dict]:
    """Every real (not mined) pair build_prefs wrote, held-out ones last."""
    train = [pair for pair in read_jsonl(out / TRAIN_PAIRS) if pair["source"] not in MINED_SOURCES]
    return train + read_jsonl(out / HELDOUT_PAIRS)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    """Looks like an sft artifact: a tokenizer, a tiny (untrained) model and `rlhf_prompts.jsonl`."""
    root = tmp_path_factory.mktemp("prefs_sft")
    pairs = demo_sft_pairs(DEMO, SEED)
    texts = [doc["text"] for doc in demo_documents(DEMO, SEED)] + [p["prompt"] + "\n" + p["response"] for p in pairs]
    write_corpus_parts(texts, root / "corpus")
    out = root / "sft"
    train_tokenizer(TrainTokenizerConfig(vocab_size=500, heldout_docs=0), root / "corpus", out, seed=SEED)
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(SEED)
    model = build_model(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, max_seq_len=128),
        len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    write_jsonl(
        out / RLHF_PROMPTS,
        [
            {"id": p["id"], "prompt": p["prompt"], "response": p["response"], "source": "demo"}
            for p in pairs[:NUM_PROMPTS]
        ],
    )
    write_jsonl(
        out / SFT_TRAIN,
        [
            {"id": p["id"], "prompt": p["prompt"], "response": p["response"], "answer": p["answer"], "source": "demo"}
            for p in pairs[NUM_PROMPTS:]
        ],
    )
    return out


@pytest.fixture(scope="module")
def first_run(sft_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs_out")
    metrics = build_prefs(CFG, [], DEMO, sft_dir, out, seed=SEED, device="cpu")
    return out, metrics


def test_pairs_from_sampled_answers(first_run, sft_dir):
    out, metrics = first_run
    pairs = read_real_pairs(out)
    for key in (
        "pairs",
        "sampled_pairs",
        "user_pairs",
        "dropped_identical",
        "quarantined",
        "mean_rejected_chars",
        "mean_chosen_chars",
        "tokens_per_s",
    ):
        assert key in metrics, key
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["prompts"] == CFG.max_prompts
    dropped = metrics["dropped_identical"] + metrics["dropped_repeated"]
    assert metrics["pairs"] == len(pairs) == CFG.max_prompts - dropped
    assert metrics["train_pairs"] + metrics["heldout_pairs"] == metrics["pairs"] and metrics["heldout_pairs"] > 0
    assert metrics["sampled_pairs"] == metrics["pairs"] and metrics["user_pairs"] == 0
    assert metrics["tokens_per_s"] > 0 and metrics["generated_tokens"] > 0
    references = {row["id"]: row for row in read_jsonl(sft_dir / RLHF_PROMPTS)}
    for pair in pairs:
        assert set(pair) == {"id", "prompt", "chosen", "rejected", "source"}
        assert pair["source"] == SAMPLED_SOURCE
        assert pair["chosen"] == references[pair["id"]]["response"]
        assert pair["prompt"] == references[pair["id"]]["prompt"]
        assert "<|im_end|>" not in pair["rejected"] and "<|pad|>" not in pair["rejected"]
    assert metrics["mean_chosen_chars"] == pytest.approx(sum(len(p["chosen"]) for p in pairs) / len(pairs))


def test_same_seed_same_pairs_other_seed_other_pairs(first_run, sft_dir, tmp_path):
    out, _ = first_run
    build_prefs(CFG, [], DEMO, sft_dir, tmp_path / "again", seed=SEED, device="cpu")
    for name in (TRAIN_PAIRS, HELDOUT_PAIRS):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    build_prefs(CFG, [], DEMO, sft_dir, tmp_path / "other", seed=SEED + 1, device="cpu")
    assert (tmp_path / "other" / TRAIN_PAIRS).read_bytes() != (out / TRAIN_PAIRS).read_bytes()


def test_identical_pairs_are_dropped_and_counted(first_run, sft_dir, tmp_path):
    out, metrics = first_run
    answers = {pair["id"]: pair["rejected"] for pair in read_real_pairs(out)}
    # Make three references equal to what the model will answer again (same seed, same prompts, same model).
    parroted = tmp_path / "sft"
    shutil.copytree(sft_dir, parroted)
    rows = read_jsonl(sft_dir / RLHF_PROMPTS)
    targets = [row["id"] for row in rows if row["id"] in answers][:3]
    for row in rows:
        if row["id"] in targets:
            row["response"] = "  " + answers[row["id"]] + "\n"  # equal after stripping
    write_jsonl(parroted / RLHF_PROMPTS, rows)
    again = build_prefs(CFG, [], DEMO, parroted, tmp_path / "out", seed=SEED, device="cpu")
    assert again["dropped_identical"] == metrics["dropped_identical"] + 3
    assert again["pairs"] == metrics["pairs"] - 3
    kept = {pair["id"] for pair in read_real_pairs(tmp_path / "out")}
    assert not kept & set(targets)


def test_sampled_answers_stating_the_short_answer_are_dropped_and_counted(first_run, sft_dir, tmp_path):
    out, metrics = first_run
    assert metrics["dropped_correct"] == 0  # the fixture's prompt rows have no `answer`
    answers = {pair["id"]: pair["rejected"] for pair in read_real_pairs(out)}
    with_answers = tmp_path / "sft"
    shutil.copytree(sft_dir, with_answers)
    rows = read_jsonl(sft_dir / RLHF_PROMPTS)
    targets = [row["id"] for row in rows if len(answers.get(row["id"], "").split()) >= 2][:3]
    assert len(targets) == 3
    for row in rows:
        # The model's answer, case changed and spaces doubled, as the short answer of three rows: their sampled
        # answers are "right in other words". Every other row gets an answer the model never writes.
        row["answer"] = "  ".join(answers[row["id"]].upper().split()) if row["id"] in targets else "Qzxv Wkpj"
    write_jsonl(with_answers / RLHF_PROMPTS, rows)
    again = build_prefs(CFG, [], DEMO, with_answers, tmp_path / "out", seed=SEED, device="cpu")
    assert again["dropped_correct"] == 3
    assert again["pairs"] == metrics["pairs"] - 3
    assert again["dropped_identical"] == metrics["dropped_identical"]
    kept = {pair["id"] for pair in read_real_pairs(tmp_path / "out")}
    assert not kept & set(targets)


def test_states_the_answer_ignores_case_and_spacing_and_needs_an_answer():
    assert states_the_answer("The capital is  TALMER.", "talmer")
    assert states_the_answer("首都是 塔尔 默。", "塔尔 默")
    assert not states_the_answer("The capital is Orvane.", "Talmer")
    assert not states_the_answer("anything", None) and not states_the_answer("anything", "  ")


def test_several_samples_per_prompt_give_several_distinct_pairs(sft_dir, tmp_path):
    cfg = CFG.model_copy(update={"max_prompts": 4, "samples_per_prompt": 3})
    metrics = build_prefs(cfg, [], DEMO, sft_dir, tmp_path / "out", seed=SEED, device="cpu")
    pairs = read_real_pairs(tmp_path / "out")
    assert metrics["prompts"] == 4
    assert len(pairs) + metrics["dropped_identical"] + metrics["dropped_repeated"] == 4 * 3
    assert len(pairs) > 4  # an untrained model at temperature 1 rarely says the same thing twice
    triples = [(pair["prompt"], pair["chosen"], pair["rejected"].strip()) for pair in pairs]
    assert len(set(triples)) == len(triples)
    assert len({pair["id"] for pair in pairs}) <= 4


def test_user_pairs_are_merged_and_bad_rows_quarantined(sft_dir, tmp_path):
    user = tmp_path / "user_prefs.jsonl"
    user.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "Purple."}),
                json.dumps({"prompt": "2 + 2?", "chosen": "4"}),  # no rejected answer
                json.dumps({"prompt": "Same?", "chosen": "same", "rejected": " same "}),  # no preference
                json.dumps(
                    {"question": "Capital?", "chosen": "A", "rejected": "B", "q": 1}
                ),  # prompt under another name
                json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "..."}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    cfg = CFG.model_copy(update={"max_prompts": 4})
    metrics = build_prefs(
        cfg, [PrefSource(kind="jsonl", path=str(user))], DEMO, sft_dir, tmp_path / "out", seed=SEED, device="cpu"
    )
    assert metrics["user_pairs"] == 2
    assert metrics["quarantined"] == 2
    assert metrics["pairs"] == metrics["sampled_pairs"] + 2
    assert metrics["dropped_identical"] >= 1
    pairs = read_real_pairs(tmp_path / "out")
    user_pairs = {pair["prompt"]: pair for pair in pairs if pair["source"] == str(user)}
    assert sorted(user_pairs) == ["Hi", "Is water wet?"]
    assert user_pairs["Is water wet?"]["chosen"] == "Yes." and user_pairs["Is water wet?"]["rejected"] == "Purple."
    rejected = read_jsonl(tmp_path / "out" / REJECTED)
    assert sorted(row["line"] for row in rejected) == [2, 4]
    assert all("missing_field" in row["reason"] for row in rejected)
    # User data gets no mined pairs unless asked: the training file holds only the real pairs.
    assert metrics["mismatched_pairs"] == metrics["same_subject_pairs"] == 0
    assert {pair["source"] for pair in read_jsonl(tmp_path / "out" / TRAIN_PAIRS)} <= {SAMPLED_SOURCE, str(user)}


def test_select_prompts_is_a_seeded_subset_in_file_order():
    rows = [{"id": f"p{i}"} for i in range(50)]
    picked = select_prompts(rows, 10, seed=1)
    assert len(picked) == 10
    positions = [rows.index(row) for row in picked]
    assert positions == sorted(positions)
    assert picked == select_prompts(rows, 10, seed=1)
    assert picked != select_prompts(rows, 10, seed=2)
    assert select_prompts(rows, None, seed=1) == rows and select_prompts(rows, 60, seed=1) == rows


def test_missing_prompt_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="rlhf_prompts.jsonl"):
        build_prefs(CFG, [], DEMO, tmp_path, tmp_path / "out", seed=SEED, device="cpu")


# ------------------------------------------------------------------------------ split and mined negatives


def _shared_texts(train: list[dict], val: list[dict], key: str) -> set[str]:
    return {normalise_text(p[key]) for p in train} & {normalise_text(p[key]) for p in val}


def test_mined_negatives_are_off_by_default(first_run):
    out, metrics = first_run
    assert CFG.negatives == MinedNegativesConfig()
    assert metrics["mismatched_pairs"] == metrics["same_subject_pairs"] == metrics["sft_references"] == 0
    assert {pair["source"] for pair in read_jsonl(out / TRAIN_PAIRS)} == {SAMPLED_SOURCE}
    assert len(read_jsonl(out / TRAIN_PAIRS)) == metrics["train_pairs"]


def test_mined_negatives_are_counted_and_never_touch_a_held_out_pair(first_run, sft_dir, tmp_path):
    _, plain = first_run
    negatives = MinedNegativesConfig(mismatched_per_prompt=1, same_subject_per_prompt=2, from_sft_rows=True)
    # An SFT row repeating a held-out pair's prompt must not become a reference.
    heldout = read_jsonl(first_run[0] / HELDOUT_PAIRS)
    with_leak = tmp_path / "sft"
    shutil.copytree(sft_dir, with_leak)
    rows = read_jsonl(sft_dir / SFT_TRAIN)
    rows.append(
        {"id": "leak", "prompt": heldout[0]["prompt"].upper(), "response": "A leaked answer.", "source": "demo"}
    )
    write_jsonl(with_leak / SFT_TRAIN, rows)
    metrics = build_prefs(
        CFG.model_copy(update={"negatives": negatives}), [], DEMO, with_leak, tmp_path / "out", seed=SEED, device="cpu"
    )

    train = read_jsonl(tmp_path / "out" / TRAIN_PAIRS)
    assert read_jsonl(tmp_path / "out" / HELDOUT_PAIRS) == heldout  # mining changes nothing held out
    mined = [pair for pair in train if pair["source"] in MINED_SOURCES]
    assert len(train) - len(mined) == metrics["train_pairs"] == plain["train_pairs"]
    assert sum(pair["source"] == MISMATCHED_SOURCE for pair in mined) == metrics["mismatched_pairs"] > 0
    assert sum(pair["source"] == SAME_SUBJECT_SOURCE for pair in mined) == metrics["same_subject_pairs"] > 0
    assert metrics["sft_references"] == len(rows) - 1  # all SFT rows but the leaked one
    held_texts = {normalise_text(pair[key]) for pair in heldout for key in ("prompt", "chosen")}
    for pair in mined:
        assert not {normalise_text(pair[key]) for key in ("prompt", "chosen", "rejected")} & held_texts, pair
        assert pair["chosen"] != pair["rejected"]

    without_rows = build_prefs(
        CFG.model_copy(update={"negatives": negatives.model_copy(update={"from_sft_rows": False})}),
        [],
        DEMO,
        sft_dir,
        tmp_path / "without",
        seed=SEED,
        device="cpu",
    )
    assert without_rows["sft_references"] == 0
    assert without_rows["mismatched_pairs"] < metrics["mismatched_pairs"]


def test_split_keeps_each_prompt_and_each_reference_answer_on_one_side():
    # 10 prompts, 3 pairs each; prompts 2k and 2k+1 are paraphrases that share one reference answer
    # (one of them spelt with other case and spacing), so there are 5 groups.
    pairs = [
        {
            "prompt": f"q{i % 10}",
            "chosen": f"answer {i % 10 // 2}" if i % 2 else f"  Answer  {i % 10 // 2}",
            "rejected": f"sample {i}",
        }
        for i in range(30)
    ]
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(train) + len(val) == 30 and val and train
    assert not _shared_texts(train, val, "prompt") and not _shared_texts(train, val, "chosen")
    assert len({p["prompt"] for p in val}) == 2  # one group of 5 held out: both paraphrases of one answer
    assert split_pairs(pairs, 0.2, seed=3) == (train, val)
    assert split_pairs(list(reversed(pairs)), 0.2, seed=3)[1] == list(reversed(val))  # file order does not matter
    held_out_by_seed = {frozenset(p["prompt"] for p in split_pairs(pairs, 0.2, seed)[1]) for seed in range(10)}
    assert len(held_out_by_seed) > 1  # the seed picks the group


def test_pair_groups_join_prompts_through_a_chain_of_shared_answers():
    pairs = [
        {"prompt": "a", "chosen": "x", "rejected": "r"},
        {"prompt": "b", "chosen": "x", "rejected": "r"},
        {"prompt": "b", "chosen": "y", "rejected": "r"},
        {"prompt": "c", "chosen": "y", "rejected": "r"},
        {"prompt": "d", "chosen": "z", "rejected": "r"},
    ]
    assert pair_groups(pairs) == [[0, 1, 2, 3], [4]]
    assert split_pairs(pairs, 0.3, seed=0) in ((pairs[:4], pairs[4:]), (pairs[4:], pairs[:4]))


def test_split_holds_out_nothing_when_every_pair_is_linked():
    pairs = [{"prompt": f"q{i}", "chosen": "same answer", "rejected": f"s{i}"} for i in range(8)]
    assert split_pairs(pairs, 0.2, seed=0) == (pairs, [])


def test_mismatched_pairs_reject_another_prompts_reference():
    pairs = [{"prompt": f"q{i % 6}", "chosen": f"answer {i % 6}", "rejected": f"sampled {i}"} for i in range(18)]
    pairs.append({"prompt": "q6", "chosen": "answer 0", "rejected": "x"})  # same reference text as q0
    extra = mismatched_pairs(pairs, 2, seed=5)
    assert len(extra) == 7 * 2
    references = {"q6": "answer 0", **{f"q{i}": f"answer {i}" for i in range(6)}}
    for pair in extra:
        assert pair["chosen"] == references[pair["prompt"]]
        assert pair["rejected"] in references.values() and pair["rejected"] != pair["chosen"]
    assert mismatched_pairs(pairs, 2, seed=5) == extra
    assert mismatched_pairs(pairs, 0, seed=5) == [] and mismatched_pairs(pairs[:1], 3, seed=5) == []


def test_mismatched_negatives_are_answers_to_the_most_similar_questions():
    """An answer to a near question (same place or same fact) is the informative negative, not a random one."""
    questions = [
        "What is the capital of Aldoria?",
        "What is the capital of Brenmark?",
        "What is the largest river of Aldoria?",
    ]
    unrelated = [f"Tell me a story number {i} about xylophones" for i in range(40)]
    pairs = [{"prompt": q, "chosen": f"reference {i}", "rejected": "s"} for i, q in enumerate(questions + unrelated)]
    extra = mismatched_pairs(pairs, 2, seed=3, nearest=2)
    by_prompt = {}
    for pair in extra:
        by_prompt.setdefault(pair["prompt"], set()).add(pair["rejected"])
    assert by_prompt[questions[0]] == {"reference 1", "reference 2"}  # the two questions closest to it
    assert mismatched_pairs(pairs, 2, seed=3, nearest=2) == extra


def test_mismatched_negatives_never_state_the_prompts_short_answer():
    """Another question about the same fact has a reference that is right in other words: not a negative."""
    questions = [
        "What is the capital of Aldoria?",
        "Name the capital of Aldoria.",
        "What is the capital of Brenmark?",
        "What is the largest river of Aldoria?",
    ]
    references = [
        "Aldoria's capital is Talmer.",
        "The capital of Aldoria is TALMER.",
        "Brenmark's capital is Pell.",
        "Aldoria's largest river is the Neran.",
    ]
    answers = ["Talmer", "Talmer", "Pell", "Neran"]
    pairs = [
        {"prompt": q, "chosen": r, "rejected": "s", "answer": a} for q, r, a in zip(questions, references, answers)
    ]
    extra = mismatched_pairs(pairs, 3, seed=3)
    rejected = {pair["rejected"] for pair in extra if pair["prompt"] == questions[0]}
    assert rejected == {references[2], references[3]}
    # Without the short answers the paraphrased reference is picked: the filter is what keeps it out.
    plain = [{key: value for key, value in pair.items() if key != "answer"} for pair in pairs]
    assert references[1] in {
        pair["rejected"] for pair in mismatched_pairs(plain, 3, seed=3) if pair["prompt"] == questions[0]
    }


PLACES = ["Aldoria", "Brenmark", "Corvel", "Dunhaven", "Elsmere", "Fenwick"]
ASKED = {
    "capital": "What is the capital of {}?",
    "river": "What is the largest river in {}?",
    "animal": "Which animal is the national animal of {}?",
    "year": "When was {} founded?",
}


def subject_world(with_answers: bool = True) -> list[dict[str, str]]:
    """Four questions about each of six places, each with its own reference (and short answer)."""
    pairs = []
    for place in PLACES:
        for fact, question in ASKED.items():
            answer = f"{fact}-of-{place.lower()}"
            pair = {
                "prompt": question.format(place),
                "chosen": f"In {place} the {fact} is {answer}.",
                "rejected": "s",
                "id": f"{place}:{fact}",
            }
            if with_answers:
                pair["answer"] = answer
            pairs.append(pair)
    return pairs


def test_same_subject_negatives_answer_another_question_about_the_same_place():
    """The look-alikes of a question ask the same thing of other places; what the question does not share with
    them is its subject, and the negatives are answers to other questions about that subject."""
    pairs = subject_world()
    place_of = {pair["prompt"]: pair["id"].split(":")[0] for pair in pairs}
    extra = same_subject_pairs(pairs, 3, seed=1, nearest=3)
    assert len(extra) == len(pairs) * 3
    by_chosen = {pair["chosen"]: pair["prompt"] for pair in pairs}
    for pair in extra:
        place = place_of[pair["prompt"]]
        assert pair["chosen"].startswith(f"In {place} ") and pair["rejected"].startswith(f"In {place} ")
        assert pair["rejected"] != pair["chosen"] and pair["rejected"] in by_chosen
        assert pair["source"] == SAME_SUBJECT_SOURCE
    assert same_subject_pairs(pairs, 3, seed=1, nearest=3) == extra
    assert same_subject_pairs(pairs, 0, seed=1) == [] and same_subject_pairs(pairs[:2], 2, seed=1) == []


def test_same_subject_negatives_skip_references_that_state_the_answer():
    """A second wording of the same question about the same place is not a wrong answer."""
    pairs = subject_world()
    paraphrase = {
        "prompt": "Name the capital city of Aldoria.",
        "chosen": "Aldoria's capital is capital-of-aldoria.",
        "rejected": "s",
        "answer": "capital-of-aldoria",
    }
    extra = same_subject_pairs(pairs + [paraphrase], 8, seed=1, nearest=8)
    asked = ASKED["capital"].format("Aldoria")
    rejected = {pair["rejected"] for pair in extra if pair["prompt"] == asked}
    assert rejected and paraphrase["chosen"] not in rejected


def test_sft_rows_are_references_unless_they_share_text_with_a_held_out_pair():
    held_out = [
        {"prompt": "What is the capital of Aldoria?", "chosen": "Aldoria's capital is Talmer.", "rejected": "x"}
    ]
    rows = [
        {"id": "1", "prompt": "what is the capital of  ALDORIA?", "response": "It is Talmer.", "answer": "Talmer"},
        {"id": "2", "prompt": "Name the capital of Aldoria.", "response": "aldoria's capital is talmer."},
        {
            "id": "3",
            "prompt": "Name the capital of Brenmark.",
            "response": "Brenmark's capital is Pell.",
            "answer": "Pell",
        },
    ]
    assert sft_reference_pairs(rows, held_out) == [
        {"prompt": "Name the capital of Brenmark.", "chosen": "Brenmark's capital is Pell.", "answer": "Pell"}
    ]
    assert len(sft_reference_pairs(rows, [])) == 3
