"""A small generated bilingual corpus in the dedup stage's format, for tests and benchmarks (no downloads)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_EN_WORDS = (
    "the river town market bridge winter harvest old lantern stone quiet merchant road north "
    "festival bell garden scholar mountain ferry tea silk rain harbour library"
).split()
_ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种"
    "面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本"
    "去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比"
    "或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总"
    "次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做"
    "必战先回则任取据处理世"
)
# Zipf-like character frequencies, as in real text: a few characters are common, most are rare.
_ZH_WEIGHTS = [1.0 / (rank + 1) for rank in range(len(_ZH_CHARS))]


def toy_documents(num_docs: int, seed: int = 0) -> list[str]:
    """`num_docs` documents alternating English and Chinese, with digits, punctuation and newlines."""
    rng = random.Random(seed)
    docs = []
    for number in range(num_docs):
        paragraphs = []
        for _ in range(rng.randint(1, 3)):
            if number % 2 == 0:
                words = [rng.choice(_EN_WORDS) for _ in range(rng.randint(20, 60))]
                paragraphs.append(" ".join(words).capitalize() + f" In {rng.randint(1000, 2024)}, it rained.")
            else:
                chars = "".join(rng.choices(_ZH_CHARS, weights=_ZH_WEIGHTS, k=rng.randint(30, 90)))
                paragraphs.append(f"{chars}，共{rng.randint(1, 999)}人。")
        docs.append("\n\n".join(paragraphs))
    return docs


def write_corpus_parts(
    docs: list[str], out_dir: str | Path, docs_per_part: int = 1000, ids: list[str] | None = None, source: str = "toy"
) -> list[Path]:
    """Write `docs` as `part_XXXXX.parquet` files with columns `id`, `text`, `source`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = ids if ids is not None else [f"{source}:{i}" for i in range(len(docs))]
    paths = []
    for start in range(0, len(docs), docs_per_part):
        table = pa.table(
            {
                "id": ids[start : start + docs_per_part],
                "text": docs[start : start + docs_per_part],
                "source": [source] * len(docs[start : start + docs_per_part]),
            }
        )
        path = out_dir / f"part_{start // docs_per_part:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    return paths
