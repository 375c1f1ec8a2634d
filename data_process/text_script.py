"""Which characters belong to scripts written without spaces between words (Chinese, Japanese kana).

One definition serves every stage that treats such text differently: cleaning counts each of these characters
as one unit of length, dedup shingles such documents by characters instead of words, and the tokenizer's corpus
statistics report how much of a corpus is Chinese. Hangul is not included: Korean separates words by spaces.
"""

from __future__ import annotations

import re

import numpy as np

# (first, last) code points, inclusive: kana, Han ideographs (extension A, the basic block, compatibility
# ideographs, the supplementary-plane extensions B-H).
CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))

CJK_CHAR_RE = re.compile("[" + "".join(f"{chr(first)}-{chr(last)}" for first, last in CJK_RANGES) + "]")

# The same set as a lookup table over all code points, for counting over UTF-32 arrays without a regex.
_CJK_TABLE = np.zeros(0x110000, dtype=bool)
for _first, _last in CJK_RANGES:
    _CJK_TABLE[_first : _last + 1] = True


def cjk_char_count(text: str) -> int:
    """Number of CJK characters in `text`."""
    return len(CJK_CHAR_RE.findall(text))


def cjk_share_of_code_points(code_points: np.ndarray) -> float:
    """Share of CJK characters among `code_points` (uint32, shape (n,), whitespace already removed)."""
    return float(np.count_nonzero(_CJK_TABLE[code_points])) / code_points.size if code_points.size else 0.0


def cjk_share(text: str) -> float:
    """Share of CJK characters among the non-whitespace characters of `text` (0.0 when it has none)."""
    visible = "".join(text.split())
    if visible.isascii():
        return 0.0
    return cjk_share_of_code_points(np.frombuffer(visible.encode("utf-32-le"), dtype="<u4"))
