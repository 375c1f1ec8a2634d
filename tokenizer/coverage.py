"""How well a tokenizer covers a text set: the share of tokens that are byte-fallback pieces, and which characters.

The tokenizer is trained on the pretraining corpus. A character that corpus lacks has no piece of its own and
is spelled as UTF-8 byte pieces (`<0xE8>` ...), two to four tokens each, whose embeddings pretraining never
trained. Chat data full of such characters (question words a corpus of statements never uses, say) reaches
the model as tokens it knows nothing about.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# Above this share of byte pieces in the chat data the sft stage warns (a few rare symbols stay well below).
BYTE_FALLBACK_WARN_SHARE = 0.05


@dataclass
class ByteFallbackReport:
    """Token counts of a text set and the characters spelled as byte pieces (with their occurrence counts)."""

    tokens: int = 0
    byte_tokens: int = 0
    characters: Counter = field(default_factory=Counter)

    @property
    def share(self) -> float:
        """Byte-fallback tokens / all tokens (0 for no tokens)."""
        return self.byte_tokens / self.tokens if self.tokens else 0.0

    def most_common(self, count: int = 10) -> str:
        """The `count` most frequent fallback characters, as a readable list (repr keeps odd symbols visible)."""
        return ", ".join(f"{char!r} x{times}" for char, times in self.characters.most_common(count))


def byte_piece_ids(tokenizer) -> frozenset[int]:
    """Ids of the vocabulary's byte-fallback pieces (`<0x00>` ... `<0xFF>`)."""
    return frozenset(index for piece, index in tokenizer.get_vocab().items() if BYTE_PIECE.fullmatch(piece))


def byte_fallback_report(tokenizer, texts: Iterable[str]) -> ByteFallbackReport:
    """Encode `texts` without special tokens and count byte-fallback tokens and the characters behind them.

    A (non-space) character counts as falling back when encoding it alone uses a byte piece; each distinct
    character is tested once. The texts are encoded in one batch call (the fast tokenizer's parallel path).
    """
    byte_ids = byte_piece_ids(tokenizer)
    report = ByteFallbackReport()
    verdicts: dict[str, bool] = {}
    texts = list(texts)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    for text, ids in zip(texts, encoded):
        report.tokens += len(ids)
        in_bytes = sum(index in byte_ids for index in ids)
        if not in_bytes:
            continue
        report.byte_tokens += in_bytes
        for char in text:
            if char not in verdicts:
                char_ids = tokenizer(char, add_special_tokens=False)["input_ids"]
                verdicts[char] = bool(char_ids) and any(index in byte_ids for index in char_ids) and not char.isspace()
            if verdicts[char]:
                report.characters[char] += 1
    return report
