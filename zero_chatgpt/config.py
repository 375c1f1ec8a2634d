"""The one typed config tree: a section per stage, plus `data`, `run` and `resources`.

Every model forbids unknown keys, so a typo fails before any work starts, with a message that names the
dotted key and the keys that are allowed there (see `load_config`). Presets live in `configs/*.yaml`; a
user file may say `base: tiny` and override any subset; `--set a.b.c=value` overrides one leaf.
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

STAGES = (
    "base_model",
    "clean",
    "dedup",
    "train_tokenizer",
    "shard",
    "pretrain",
    "sft",
    "build_prefs",
    "train_rm",
    "ppo",
    "evaluate",
    "report",
)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment, and a boolean
    is never taken for a number (pydantic would read `max_steps: true` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if not _accepts_bool(annotation):
                raise ValueError(f"expected {_type_name(annotation)}, got the boolean {str(value).lower()}")
        return value


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(option, bool) for option in get_args(annotation))
    return any(_accepts_bool(arg) for arg in get_args(annotation))


def _type_name(annotation: Any) -> str:
    names = [
        getattr(arg, "__name__", str(arg)) for arg in (get_args(annotation) or (annotation,)) if arg is not type(None)
    ]
    return " or ".join(names) if names else str(annotation)


# ----------------------------------------------------------------------------------------------- sources


class SourceBase(Section):
    """Where rows come from. `kind` picks the reader; local kinds need `path` (a glob), `hf` needs `name`."""

    kind: Literal["demo", "jsonl", "parquet", "text", "hf"]
    path: str | None = Field(None, description="glob of local files (jsonl, parquet, text)")
    name: str | None = Field(None, description="Hugging Face dataset name (kind hf, only used when online)")
    subset: str | None = Field(None, description="Hugging Face dataset config name")
    split: str = Field("train", description="Hugging Face dataset split")
    id_field: str | None = Field(None, description="field holding a stable row id; else `<file>:<line>`")
    limit: int | None = Field(None, ge=1, description="read at most this many rows from the source")

    @model_validator(mode="after")
    def _location_given(self) -> SourceBase:
        if self.kind in ("jsonl", "parquet", "text") and not self.path:
            raise ValueError(f"a '{self.kind}' source needs `path` (a file or glob)")
        if self.kind == "hf" and not self.name:
            raise ValueError("an 'hf' source needs `name` (the dataset name)")
        return self


class TextSource(SourceBase):
    """A pretraining text source: one document per row (per line for `text` files)."""

    text_field: str = "text"


ChatFormat = Literal["fields", "messages", "hh"]


class SftSource(SourceBase):
    """A supervised fine-tuning source: prompt/response rows, or whole conversations (`format`)."""

    format: ChatFormat = Field(
        "fields",
        description="fields: `prompt_field` (a string, or a message list ending with a user turn) and "
        "`response_field`; messages: `conversation_field` holds OpenAI- or ShareGPT-shaped turns ending with an "
        "assistant turn; hh: `conversation_field` holds an Anthropic HH transcript ending with 'Assistant:'",
    )
    prompt_field: str = "prompt"
    response_field: str = "response"
    conversation_field: str = Field("messages", description="the conversation's field (formats messages and hh)")
    answer_field: str | None = Field(
        None,
        description="optional field with the short answer every correct response contains (a name, a "
        "number); build_prefs then drops a sampled answer that contains it and never mines a reference "
        "containing it as a negative, since neither is a wrong answer. Demo rows carry it",
    )


class PrefSource(SourceBase):
    """A preference source of prompt/chosen/rejected rows, merged into `build_prefs`."""

    format: ChatFormat = Field(
        "fields",
        description="fields or messages: `prompt_field` is a string or a message list ending with a user turn, "
        "`chosen_field`/`rejected_field` the two replies; hh: the prompt is an Anthropic HH transcript ending "
        "with 'Human:', or, when a row has no prompt field, chosen and rejected are whole HH transcripts that "
        "must share everything before their last assistant turn (rows that do not are quarantined)",
    )
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"


class QaSource(SourceBase):
    """Questions with a short answer, asked for exact match by `evaluate` (kind demo: the held-out fact questions)."""

    question_field: str = "question"
    answer_field: str = Field("answer", description="field with the short answer a correct reply contains")
    lang_field: str | None = Field(
        None, description="optional field with a language tag; exact match is then also reported per language"
    )


class DemoCorpusConfig(Section):
    """Size of the embedded, generated demo world (the default data of every preset)."""

    num_entities: int = Field(120, ge=8, description="fictional places described by the corpus")
    docs_per_entity: int = Field(4, ge=1, description="encyclopedia-style documents written per place and language")
    languages: list[Literal["en", "zh"]] = ["en", "zh"]
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of fact questions kept for evaluation")
    exact_duplicate_fraction: float = Field(
        0.03, ge=0.0, le=0.5, description="share of documents repeated verbatim under a new id (for dedup to find)"
    )
    near_duplicate_fraction: float = Field(
        0.04, ge=0.0, le=0.5, description="share of documents repeated with a small edit (for MinHash dedup to find)"
    )
    junk_docs_per_rule: int = Field(
        4, ge=0, description="planted junk documents per cleaning rule and language (too short, whitespace, keywords)"
    )
    sft_questions_per_fact: int = Field(
        2, ge=1, le=3, description="differently worded SFT questions per (place, fact, language)"
    )


class DataConfig(Section):
    """All data sources of the run."""

    sources: list[TextSource] = Field(default_factory=lambda: [TextSource(kind="demo")])
    sft_sources: list[SftSource] = Field(default_factory=lambda: [SftSource(kind="demo")])
    pref_sources: list[PrefSource] = Field(default_factory=list)
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig)


# ------------------------------------------------------------------------------------------------ stages


class BaseModelConfig(Section):
    """An existing Hugging Face causal LM to align instead of pretraining one from scratch."""

    path: str | None = Field(
        None,
        description="local model directory (config.json, tokenizer, weights) or hub id; null: pretrain from "
        "scratch (clean -> dedup -> train_tokenizer -> shard -> pretrain)",
    )
    revision: str | None = Field(None, description="hub branch, tag or commit (hub ids only)")
    allow_download: bool = Field(
        False, description="fetch a hub id into the local Hugging Face cache (needs network); off: local dirs only"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the weights load in; auto: float32 on CPU, the checkpoint's own dtype on GPU "
        "(training autocasts per `optim.precision`)",
    )
    trust_remote_code: bool = Field(
        False, description="run model code shipped with the checkpoint (only for models you trust)"
    )
    continue_pretraining: bool = Field(
        False,
        description="first pretrain the base further on `data.sources` (clean -> dedup -> shard with the base's "
        "tokenizer -> pretrain from the base's weights), then sft; off: sft starts from the base",
    )


class LoraSettings(Section):
    """LoRA adapters for a training stage (peft); the exported model is always merged into plain weights."""

    rank: int = Field(0, ge=0, description="adapter rank; 0 trains all weights")
    alpha: float | None = Field(None, gt=0, description="adapter scale numerator; null: 2 x rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="linear layers that get adapters (e.g. [q_proj, v_proj]); all-linear: every linear layer of "
        "the transformer blocks, whatever the family calls them",
    )


class CleanConfig(Section):
    """Document cleaning rules, after Zero-Chatgpt's: every dropped row is kept with its rule."""

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFKC"
    keep_cjk_punctuation: bool = Field(
        True,
        description="under NFKC keep full-width CJK punctuation (，！？：；（）～) and the ellipsis … as written, "
        "so cleaned Chinese text reads like the SFT data instead of turning into ASCII commas and '...'",
    )
    min_length: int = Field(20, ge=0, description="minimum length in CJK characters plus non-CJK words")
    max_whitespace_ratio: float = Field(0.3, gt=0.0, le=1.0, description="drop docs with more whitespace than this")
    strip_citations: bool = Field(True, description="remove citation marks like [1] and [1-2]")
    max_punctuation_run: int = Field(3, ge=1, description="collapse longer runs of one punctuation mark to this")
    section_keywords: list[str] = Field(
        default_factory=lambda: ["人物简介", "人物经历", "产品介绍", "产品特点", "Early life", "Product overview"],
        description="headings that mark person / product introductions",
    )
    max_section_keyword_hits: int = Field(2, ge=1, description="drop docs with at least this many keyword hits")
    docs_per_shard: int = Field(20000, ge=100, description="rows per output parquet shard")


class DedupConfig(Section):
    """Exact, then MinHash LSH near-duplicate removal."""

    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length)")
    threshold: float = Field(0.7, gt=0.0, lt=1.0, description="Jaccard similarity that counts as a duplicate")
    shingle: Literal["auto", "char", "word"] = Field(
        "char", description="char: character n-grams for every text; auto: char n-grams only for CJK text, else words"
    )
    cjk_char_share: float = Field(
        0.3, gt=0.0, le=1.0, description="auto shingles: char n-grams when this share of visible chars is CJK"
    )
    char_ngram: int = Field(5, ge=1, description="characters per shingle (char shingles, and CJK text under auto)")
    word_ngram: int = Field(3, ge=1, description="words per shingle (word shingles, and non-CJK text under auto)")
    bands: int | None = Field(None, ge=1, description="LSH bands; derived from threshold when unset")
    rows: int | None = Field(None, ge=1, description="LSH rows per band; derived from threshold when unset")
    docs_per_shard: int = Field(5000, ge=100, description="documents per signature task")


class TrainTokenizerConfig(Section):
    """sentencepiece BPE with byte fallback, exported as a Hugging Face fast tokenizer."""

    vocab_size: int = Field(6000, ge=300, description="pieces in all, with 256 byte pieces and 5 special tokens")
    max_sample_chars: int = Field(20_000_000, ge=10_000, description="cap on the shuffled training sample")
    max_doc_chars: int = Field(
        100_000,
        ge=1000,
        description="each document gives the sample at most this many characters, so one huge "
        "document (a dump on one line) cannot fill it; the count cut is the `sample_docs_capped` metric",
    )
    character_coverage: float = Field(
        0.9995, gt=0.9, le=1.0, description="share of sample characters that get their own piece (upper bound)"
    )
    max_char_share: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="at most this share of the learnable vocab goes to single characters; character_coverage is "
        "lowered to fit and rarer characters fall back to bytes",
    )
    max_sentence_length: int = Field(8192, ge=256, description="training lines are cut to this many UTF-8 bytes")
    heldout_docs: int = Field(
        200, ge=0, description="documents kept out of the sample to measure characters per token (at most 10%)"
    )


class ShardConfig(Section):
    """Tokenised `.bin` shards."""

    val_fraction: float = Field(0.02, gt=0.0, lt=0.5, description="share of documents held out for validation")
    tokens_per_shard: int = Field(50_000_000, ge=1000)
    docs_per_batch: int = Field(1000, ge=1, description="documents per tokenizer batch call")
    chars_per_batch: int = Field(
        2_000_000, ge=1000, description="a batch also closes at this many characters, so jobs stay even in size"
    )


class ModelConfig(Section):
    """LLaMA-style decoder size (defaults: the CPU `tiny` model, ~1.6M parameters with a 6000-token vocab)."""

    hidden_size: int = Field(128, ge=8, description="width of the residual stream; a multiple of num_heads")
    num_layers: int = Field(4, ge=1, description="decoder blocks")
    num_heads: int = Field(4, ge=1, description="attention heads (head size = hidden_size / num_heads)")
    num_kv_heads: int | None = Field(None, ge=1, description="grouped-query attention; defaults to num_heads")
    intermediate_size: int | None = Field(
        None, ge=8, description="MLP width; derived from hidden_size when unset (multiple of 32 near 8/3 * hidden)"
    )
    max_seq_len: int = Field(128, ge=16, description="context length in tokens")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency")
    tie_embeddings: bool = Field(True, description="share the input embedding with the output head")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="attention dropout")

    @model_validator(mode="after")
    def _heads_divide_the_width(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"head size hidden_size / num_heads = {self.hidden_size // self.num_heads} must be even "
                "(rotary embeddings rotate pairs of dimensions)"
            )
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads} "
                "(grouped-query attention shares each key/value head among a whole number of heads)"
            )
        return self


class OptimConfig(Section):
    """Optimiser and schedule shared by every training stage."""

    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(20, ge=0, description="linear warmup steps before the cosine decay")
    max_steps: int = Field(200, ge=1, description="optimizer steps (each takes grad_accum micro-batches)")
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch per rank")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decay, applied to >= 2-D weights only")
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max global gradient norm; 0 disables clipping")
    eval_every: int = Field(100, ge=1, description="steps between evaluations (and one after the last step)")
    eval_batches: int = Field(8, ge=1, description="batch_size-sized batches per evaluation")
    checkpoint_every: int = Field(200, ge=1, description="steps between resume checkpoints")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto: bf16 on a GPU that supports it, else fp32"
    )


class PretrainConfig(Section):
    """Causal-LM pretraining on the token shards."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)


class SftConfig(Section):
    """Supervised fine-tuning with loss on response tokens only."""

    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, max_steps=200, eval_every=50),
        description="optimiser and schedule; batch_size counts chat rows, eval_batches caps the scored val rows",
    )
    max_seq_len: int = Field(
        256,
        ge=16,
        description="tokens per chat row (capped at the pretrained context); longer rows keep the "
        "prompt's end and the response's start",
    )
    rlhf_prompt_fraction: float = Field(
        0.5, ge=0.0, lt=1.0, description="share of SFT rows held out as RLHF prompts (by id hash and seed)"
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="share of the remaining rows kept for SFT val")
    train_on: Literal["all", "last"] = Field(
        "all", description="assistant turns of a multi-turn conversation that get the loss: all, or the last only"
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)


class MinedNegativesConfig(Section):
    """Extra training pairs whose rejected answer is the reference answer of another question (build_prefs).

    Built from the training side of the split only (and SFT rows sharing no text with the held-out side).
    """

    mismatched_per_prompt: int = Field(
        0,
        ge=0,
        description="pairs per training prompt whose rejected answer is the reference of a look-alike "
        "question (see model.preference_pairs.mismatched_pairs)",
    )
    same_subject_per_prompt: int = Field(
        0,
        ge=0,
        description="pairs per training prompt whose rejected answer is the reference of another question "
        "about the same subject (see model.preference_pairs.same_subject_pairs)",
    )
    from_sft_rows: bool = Field(
        False,
        description="also take the SFT training rows (sft_train.jsonl) as prompts and references for the mined "
        "pairs; rows sharing a prompt or reference with a held-out pair are left out",
    )


class BuildPrefsConfig(Section):
    """Preference pairs: chosen = reference answer, rejected = the SFT model's own sample."""

    max_new_tokens: int = Field(48, ge=1, description="longest sampled answer in tokens")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of the SFT model")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    batch_size: int = Field(32, ge=1, description="prompts sampled together")
    # Each sample is paired with the same reference, so many samples per prompt let the reward model learn the
    # references rather than judge answers.
    samples_per_prompt: int = Field(
        2,
        ge=0,
        description="answers sampled per prompt, each a pair with the reference (repeats dropped); 0: no "
        "sampling, the pairs are the preference sources' alone",
    )
    max_prompts: int | None = Field(
        None, ge=1, description="sample at most this many RLHF prompts (a seeded subset); null: all"
    )
    # Held-out pairs share neither prompt nor reference answer with training (`split_pairs`), so train_rm's accuracy
    # measures judging answers to new questions, not recognising memorised references.
    val_fraction: float = Field(
        0.1,
        gt=0.0,
        lt=0.5,
        description="share of pair groups held out (pairs sharing a prompt or a reference answer form one group)",
    )
    negatives: MinedNegativesConfig = Field(
        default_factory=lambda: MinedNegativesConfig(),
        description="extra training pairs mined from references (off by default; the demo presets turn them on)",
    )


class TrainRmConfig(Section):
    """Reward model with a scalar head, pairwise loss."""

    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=10, max_steps=600))
    init: str = Field(
        "sft",
        description="weights the reward model starts from: sft (the SFT model), base (base_model.path), or a "
        "model directory (a smaller model of the policy's tokenizer, as DeepSpeed-Chat pairs a 1.3B actor with "
        "a 350M reward model); the scalar head is new",
    )
    freeze_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of lower layers kept frozen")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    max_seq_len: int = Field(256, ge=16, description="tokens of prompt + answer scored; longer ones keep the end")
    independent_judge: bool = Field(
        True,
        description="also train a second reward model, evaluate's independent judge, on a share of the training "
        "pairs (`judge_fraction`), with its own seed and budget",
    )
    judge_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="share of the training pair groups given to the independent judge"
    )
    judge_disjoint: bool = Field(
        False,
        description="train the reward model only on the pairs the judge does not get, so the two share none; "
        "this halves the reward model's data (docs/what_we_tried.md)",
    )
    judge_optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(
            lr=5e-4, warmup_steps=10, max_steps=100, eval_every=100, checkpoint_every=1000
        ),
        description="the independent judge's optimizer (a small budget: it only has to judge, not to be optimised)",
    )


class PpoConfig(Section):
    """PPO with a frozen reference, critic initialised from the reward model."""

    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(
            lr=1e-4, warmup_steps=0, max_steps=40, min_lr_ratio=1.0, weight_decay=0.0, checkpoint_every=10
        ),
        description="actor optimizer; max_steps counts PPO steps (one rollout batch each)",
    )
    critic_lr: float | None = Field(None, gt=0, description="critic learning rate; defaults to optim.lr")
    rollout_batch_size: int = Field(32, ge=1, description="prompts sampled per PPO step")
    mini_batch_size: int = Field(8, ge=1, description="rollouts per optimizer step inside a PPO epoch")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    max_new_tokens: int = Field(32, ge=1, description="response length cap when sampling")
    max_prompt_tokens: int = Field(128, ge=4, description="longer chat prompts keep their end")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of rollouts")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling of rollouts")
    # Large enough that the KL to the reference stays well inside target_kl over a short run.
    kl_coef: float = Field(0.4, ge=0.0, description="per-token KL penalty weight (initial value when adaptive)")
    adaptive_kl: bool = Field(False, description="move kl_coef so the observed KL approaches target_kl")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL: rollouts over which kl_coef adapts")
    target_kl: float = Field(6.0, gt=0.0, description="bound on mean per-sequence KL to the reference")
    reward_clip: float = Field(5.0, gt=0.0, description="the reward model's score is clipped to +-this")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="GAE discount")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE bias/variance trade-off")
    clip_range: float = Field(0.2, gt=0.0, description="policy ratio clip")
    value_clip_range: float = Field(0.2, gt=0.0, description="value update clip around the rollout's values")
    num_eval_prompts: int = Field(32, ge=1, description="held-out prompts for reward_before / reward_after / kl")
    ptx_coef: float = Field(0.0, ge=0.0, description="weight of the pretraining loss mixed in (PPO-ptx)")
    ptx_batch_size: int = Field(4, ge=1, description="pretraining windows per actor optimizer step (PPO-ptx)")
    ptx_seq_len: int = Field(128, ge=8, description="tokens per pretraining window (PPO-ptx)")
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="LoRA adapters on the actor and the critic; rank 0 trains all weights"
    )
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description="EMA of actor weights; 0 disables")


class EvaluateConfig(Section):
    """Evaluation of the trained models (see `model/evaluate.py` for what each figure means)."""

    max_prompts: int = Field(
        100,
        ge=1,
        description="held-out chat prompts (from the sft artifact's sft_val.jsonl, a seeded subset) "
        "answered by every model for win rate, reward, KL, length, repetition and refusal figures",
    )
    qa_sources: list[QaSource] = Field(
        default_factory=list,
        description="question/answer sources asked greedily for `exact_match` (a reply is "
        "right when it contains the answer); empty: no exact_match metric",
    )
    max_questions: int | None = Field(
        200, ge=1, description="questions from qa_sources asked for exact match (a seeded subset); null: all"
    )
    max_new_tokens: int = Field(48, ge=1, description="longest generated answer in tokens")
    temperature: float = Field(
        0.0, ge=0.0, description="sampling temperature of the judged answers, the same for every model; 0: greedy"
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass of the judged answers")
    kl_temperature: float = Field(
        1.0,
        gt=0.0,
        description="temperature of the extra samples that estimate KL to the SFT model (greedy answers would bias it)",
    )
    batch_size: int = Field(32, ge=1, description="prompts generated together; option sequences scored together")
    pretrain_prompt_template: str = Field(
        "{question}\n",
        description="how the pretrained model (which never saw the chat template) is asked a "
        "question: plain text after the tokenizer's BOS (else its end-of-text) token, `{question}` is replaced; "
        "a multi-turn prompt is filled in as a User:/Assistant: transcript ending with the last user turn",
    )
    judge_model: str | None = Field(
        None,
        description="dir of a reward model (AutoModelForSequenceClassification) to judge with instead of "
        "train_rm's independent judge; null: train_rm's",
    )
    task_files: list[str] = Field(
        default_factory=list, description="globs of JSONL task files scored by likelihood (docs/eval_tasks.md)"
    )
    few_shot: int = Field(
        0,
        ge=0,
        description="solved examples taken from each task file's first rows and "
        "prepended to every prompt (those rows are not scored)",
    )
    task_score: Literal["sum", "mean"] = Field(
        "sum",
        description="an option's score: sum or per-token mean of its continuation log-likelihood "
        "(a task file's spec may override it)",
    )
    max_task_rows: int | None = Field(300, ge=1, description="scored rows per task file at most; null: all")
    task_models: list[Literal["pretrain", "sft", "ppo"]] = Field(
        default_factory=lambda: ["pretrain"],
        description="models scored on the task files; `tasks.<name>."
        "accuracy` is the first one's, `accuracy_by_model` has each",
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: [
            "Tell me about yourself.",
            "介绍一下你自己。",
            "What is a river?",
            "请写一句关于山的话。",
        ],
        description="fixed prompts answered by every model in samples.md (plus held-out prompts and questions)",
    )
    num_samples: int = Field(4, ge=0, description="held-out prompts and qa questions each added to the samples table")


class ReportConfig(Section):
    """The report card."""

    plots: bool = True


# ----------------------------------------------------------------------------------------------- run-wide


class RunConfig(Section):
    """Run-wide settings that change results (the seed is part of every fingerprint)."""

    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    verify: Literal["sizes", "deep"] = Field(
        "sizes",
        description="how a reused artifact is checked against its manifest: file sizes (instant), or "
        "sizes and content hashes (reads every file); a mismatch rebuilds the stage",
    )


class ResourcesConfig(Section):
    """Where and how wide work runs. Not part of any fingerprint: it changes speed, not results."""

    task_runner: Literal["processes", "threads", "dask", "ray"] = "processes"
    workers: int | None = Field(None, ge=1, description="parallel data workers; defaults to the CPU count")
    address: str | None = Field(None, description="Dask scheduler or Ray cluster address for data stages")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for in-process torch work; unset keeps torch's default. Small models on "
        "a busy CPU often run faster on 1 thread than on all cores",
    )
    ranks: int = Field(
        1,
        ge=1,
        description="training processes per node (one per GPU; CPU ranks for tests); > 1, nodes > 1 or "
        "a hostfile run training stages through the launcher, 1 trains in the task's own process",
    )
    nodes: int = Field(
        1,
        ge=1,
        description="machines in the training job (torchrun --nnodes / deepspeed --num_nodes); with "
        "torchrun start the pipeline on every node with its own node_rank and the same master_addr",
    )
    node_rank: int = Field(
        0,
        ge=0,
        description="this machine's index among `nodes` (torchrun --node_rank, deepspeed --node_rank with --no_ssh)",
    )
    master_addr: str | None = Field(
        None, description="address of node 0 that every rank connects to; null: 127.0.0.1 (one node only)"
    )
    master_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="port on master_addr; null: a free port picked per launch (one node "
        "only: several nodes must agree on it)",
    )
    hostfile: str | None = Field(
        None,
        description="deepspeed launcher hostfile (`host slots=N` lines): it starts the ranks on every "
        "host over ssh/pdsh; paths (data, artifacts) must be on a filesystem shared by all hosts",
    )
    launcher: Literal["torchrun", "deepspeed"] = Field(
        "torchrun",
        description="the program that starts the ranks: torchrun, or the deepspeed launcher (needed for hostfile runs)",
    )
    engine: Literal["auto", "ddp", "deepspeed"] = Field(
        "auto",
        description="how ranks train together: torch DDP or a DeepSpeed engine; auto: DeepSpeed when "
        "launcher is deepspeed or zero_stage > 0, else DDP",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        0,
        description="DeepSpeed ZeRO stage: 1 partitions optimizer states, 2 also gradients, 3 also weights "
        "(the final export consolidates them into an HF checkpoint); ppo runs 0-2",
    )
    launcher_args: list[str] = Field(
        default_factory=list, description="extra arguments passed to the launcher before the entry point"
    )

    def data_workers(self) -> int:
        """Number of parallel data workers to use on this machine."""
        return self.workers or max(1, os.cpu_count() or 1)


class TrackingConfig(Section):
    """Where training metrics stream while they are logged, besides each stage's metrics.jsonl. Not part of any
    fingerprint: it changes what you can watch, not results."""

    tensorboard: bool = Field(
        True,
        description="write every training stage's metrics as TensorBoard events under <root>/tensorboard/"
        "<stage>-<fingerprint> (watch with `tensorboard --logdir <root>/tensorboard`)",
    )
    wandb_project: str | None = Field(
        None,
        description="also log to this Weights & Biases project (needs `pip install wandb`; WANDB_MODE=offline "
        "keeps the runs local)",
    )

    @field_validator("wandb_project")
    @classmethod
    def _wandb_installed(cls, project: str | None) -> str | None:
        if project and importlib.util.find_spec("wandb") is None:
            raise ValueError("wandb is not installed: pip install wandb, or leave wandb_project unset")
        return project


class PipelineConfig(Section):
    """The whole resolved config of one pipeline run."""

    run: RunConfig = Field(default_factory=RunConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    train_tokenizer: TrainTokenizerConfig = Field(default_factory=TrainTokenizerConfig)
    shard: ShardConfig = Field(default_factory=ShardConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    build_prefs: BuildPrefsConfig = Field(default_factory=BuildPrefsConfig)
    train_rm: TrainRmConfig = Field(default_factory=TrainRmConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)


# ---------------------------------------------------------------------------------------------- loading

# The presets ship inside the package (`zero_chatgpt.configs`), so an installed wheel finds them too.
PRESETS_DIR = Path(str(importlib.resources.files("zero_chatgpt.configs")))


def preset_names() -> list[str]:
    """Names of the presets shipped in `configs/`."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def resolve_preset_path(preset: str, relative_to: Path | None = None) -> Path:
    """A preset name (`tiny`) or a YAML file path; relative `base:` paths resolve next to the including file."""
    candidate = Path(preset)
    if relative_to is not None and not candidate.is_absolute():
        beside = relative_to.parent / candidate
        if beside.is_file():
            return beside
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"config file {candidate} does not exist")
        return candidate
    named = PRESETS_DIR / f"{preset}.yaml"
    if not named.is_file():
        raise ConfigError(f"unknown preset {preset!r}; choose one of {preset_names()} or give a YAML file path")
    return named


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, merging nested mappings; lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_preset_dict(preset: str, _seen: tuple[Path, ...] = (), _from: Path | None = None) -> dict[str, Any]:
    """The raw mapping of a preset, with its `base:` chain merged in (base first)."""
    path = resolve_preset_path(preset, _from).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"`base:` cycle: {chain}")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a preset name or a file path, got {base!r}")
    return deep_merge(load_preset_dict(base, (*_seen, path), path), raw)


def parse_set_option(assignment: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], parsed value). Values are read as YAML (`3`, `1e-3`, `[a, b]`)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. pretrain.optim.max_steps=200")
    key, raw_value = assignment.split("=", 1)
    keys = [part for part in key.strip().split(".")]
    if not key.strip() or any(not part for part in keys):
        raise ConfigError(f"--set {assignment!r}: the key must be dotted names like clean.min_length")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return keys, value


def overrides_from_set_options(assignments: list[str]) -> dict[str, Any]:
    """Nested override mapping from a list of `--set a.b=value` strings (later ones win)."""
    nested: dict[str, Any] = {}
    for assignment in assignments:
        keys, value = parse_set_option(assignment)
        nested = deep_merge(nested, _nest(keys, value))
    return nested


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _apply_list_indices(tree: Any, overrides: Any, where: str) -> Any:
    """Apply overrides whose keys are list indices (`data.sources.0.path=...`) onto lists in `tree`."""
    if not isinstance(overrides, dict):
        return overrides
    if isinstance(tree, list) and overrides and all(str(k).isdigit() for k in overrides):
        updated = copy.deepcopy(tree)
        for index_text, value in overrides.items():
            index = int(index_text)
            if index >= len(updated):
                raise ConfigError(f"{where}.{index}: the list has only {len(updated)} entries")
            updated[index] = _apply_list_indices(updated[index], value, f"{where}.{index}")
        return updated
    base = tree if isinstance(tree, dict) else {}
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        merged[key] = _apply_list_indices(base.get(key), value, f"{where}.{key}" if where else str(key))
    return merged


def _allowed_here(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """Walk the model tree along an error location; return the dotted parent key and its allowed field names."""
    model: Any = PipelineConfig
    parent: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int):
            parent.append(str(part))
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            # A tagged union branch name or similar: keep walking with what we have.
            continue
        parent.append(str(part))
        annotation = fields[part].annotation
        model = _model_in(annotation) or model
    return ".".join(parent), sorted(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[TextSource]` or `ModelConfig | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    dotted = ".".join(str(part) for part in loc) or "<top level>"
    if error.get("type") == "extra_forbidden":
        parent, allowed = _allowed_here(loc)
        where = f" in `{parent}`" if parent else ""
        return f"unknown key `{dotted}`{where}; allowed keys: {', '.join(allowed)}"
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    got = error.get("input")
    # Our own checks say what they got; pydantic's built-in ones do not.
    shown = "" if isinstance(got, dict) or error.get("type") == "value_error" else f" (got {got!r})"
    return f"`{dotted}`: {message}{shown}"


def validate_config(raw: dict[str, Any]) -> PipelineConfig:
    """A `PipelineConfig` from a raw mapping, or a `ConfigError` that names every bad key."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None


def load_config(
    preset: str = "tiny",
    overrides: dict[str, Any] | None = None,
    set_options: list[str] | None = None,
) -> PipelineConfig:
    """Resolve preset (name or file, with `base:` chain), then nested overrides, then `--set` options.

    Every layer is merged over the full default tree, not over the preset alone: setting one key of a section
    whose default differs from its class defaults (`ppo.optim.lr`, where PPO's optimizer defaults to 40 steps)
    keeps that section's other defaults instead of resetting them to the class's (`OptimConfig`'s 200 steps).
    """
    raw = PipelineConfig().model_dump(mode="python")
    for layer in (load_preset_dict(preset), overrides or {}, overrides_from_set_options(set_options or [])):
        raw = _apply_list_indices(raw, layer, "")
    return validate_config(raw)


def route_stages(config: PipelineConfig) -> tuple[str, ...]:
    """The stages a run of `config` goes through, in order: from scratch (no `base_model`), from a base model
    (straight to sft), or from a base model pretrained further on the corpus (with the base's own tokenizer)."""
    if not config.base_model.path:
        skipped: tuple[str, ...] = ("base_model",)
    elif config.base_model.continue_pretraining:
        skipped = ("train_tokenizer",)
    else:
        skipped = ("clean", "dedup", "train_tokenizer", "shard", "pretrain")
    return tuple(stage for stage in STAGES if stage not in skipped)


def config_to_yaml(config: PipelineConfig) -> str:
    """The resolved config as YAML, in stage order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


__all__ = [
    "STAGES",
    "ConfigError",
    "PipelineConfig",
    "TextSource",
    "SftSource",
    "PrefSource",
    "BaseModelConfig",
    "LoraSettings",
    "load_config",
    "route_stages",
    "validate_config",
    "config_to_yaml",
    "preset_names",
]
