"""The one definition of CJK text: counts, shares, and agreement between the regex and the code-point table."""

from __future__ import annotations

import numpy as np

from zero_chatgpt.data_process.clean import length_units
from zero_chatgpt.data_process.text_script import CJK_CHAR_RE, cjk_char_count, cjk_share, cjk_share_of_code_points
from zero_chatgpt.tokenizer.corpus import is_chinese


def test_shares_count_han_and_kana_but_not_hangul_or_punctuation():
    assert cjk_share("plain ascii") == 0.0 and cjk_share(" \n") == 0.0
    assert cjk_share("你好 ab") == 0.5
    assert cjk_share("ひらがなカタカナ") == 1.0
    assert cjk_share("한국어") == 0.0  # Korean separates words by spaces
    assert cjk_share("，。") == 0.0
    assert cjk_char_count("北京𠀀 is big") == 3  # a supplementary-plane ideograph counts too


def test_regex_and_code_point_table_agree_on_every_boundary():
    probes = [
        0x303F,
        0x3040,
        0x30FF,
        0x3100,
        0x33FF,
        0x3400,
        0x4DBF,
        0x4DC0,
        0x4E00,
        0x9FFF,
        0xA000,
        0xF8FF,
        0xF900,
        0xFAFF,
        0xFB00,
        0x1FFFF,
        0x20000,
        0x3134F,
        0x31350,
        0xAC00,
    ]
    for code_point in probes:
        by_regex = bool(CJK_CHAR_RE.fullmatch(chr(code_point)))
        by_table = cjk_share_of_code_points(np.array([code_point], dtype=np.uint32)) == 1.0
        assert by_regex == by_table, hex(code_point)


def test_stages_use_the_same_definition():
    assert length_units("北京 is big") == 4
    assert is_chinese("北京是首都, ok") and not is_chinese("Beijing is the capital 京")
