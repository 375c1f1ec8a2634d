"""Turn a trained sentencepiece BPE model into a Hugging Face fast tokenizer with the same ids.

sentencepiece BPE encodes by repeatedly merging the adjacent pair whose concatenation is the highest-ranked
piece in the vocab (piece id order, since BPE pieces are stored in the order they were learned). A
`tokenizers` BPE model does the same when its merge list is sorted by the rank of the merged piece, so the
merges are rebuilt from the vocab alone: every way of splitting a piece into two vocab pieces is one merge.
Around the model: spaces become `▁` (sentencepiece's whitespace mark, with identity normalisation and no dummy
prefix), characters outside the vocab fall back to `<0xXX>` byte pieces, and the decoder undoes both.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from zero_chatgpt.tokenizer.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_START, PAD, SPECIAL_TOKENS

SPACE_MARK = "\u2581"  # ▁


def sentencepiece_vocab_and_merges(sp: spm.SentencePieceProcessor) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The `{piece: id}` vocab and the BPE merges, highest-priority first, of a sentencepiece BPE model."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    mergeable = {
        sp.id_to_piece(i): i
        for i in range(sp.get_piece_size())
        if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    }
    ranked: list[tuple[int, int, tuple[str, str]]] = []
    for piece, piece_id in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((piece_id, cut, (left, right)))
    ranked.sort()
    return vocab, [pair for _, _, pair in ranked]


def build_fast_tokenizer(sp_model_file: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` giving sentencepiece's ids for plain text, with the chat special tokens.

    Unlike sentencepiece (where they are control pieces that plain text can never produce), the special tokens
    are matched in text here, because `apply_chat_template` renders them as text and tokenizes the result.
    """
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_file))
    vocab, merges = sentencepiece_vocab_and_merges(sp)
    # unk_token stays unset: with byte fallback every character has bytes, and "<unk>" in user text must not
    # turn into a special id.
    model = models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", SPACE_MARK)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    for token in SPECIAL_TOKENS:
        if tok.token_to_id(token) != sp.piece_to_id(token):
            raise RuntimeError(
                f"special token {token} got id {tok.token_to_id(token)} in the fast tokenizer, "
                f"{sp.piece_to_id(token)} in sentencepiece"
            )
    return tok


def export_hf_tokenizer(sp_model_file: str | Path, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Write `tokenizer.json`, `tokenizer_config.json` and the chat template into `out_dir`; returns the tokenizer.

    `AutoTokenizer.from_pretrained(out_dir)` loads it back. EOS is `<|endoftext|>`, pad `<|pad|>`; there is no
    BOS and nothing is added around encoded text.
    """
    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_fast_tokenizer(sp_model_file),
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side="right",
        model_max_length=1 << 30,
    )
    hf.save_pretrained(str(out_dir))
    return hf
