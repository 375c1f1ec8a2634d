"""The embedded demo corpus: a small generated world of fictional countries, written up as encyclopedia pages.

It is the default data of every preset and needs no download. Stages never import it: it is a source kind
(`kind: demo`), read through `data_process/sources.py`, the only module that opens it.

A `random.Random` seeded from `(seed, purpose)` strings builds the world (names from English syllables and,
separately, from Chinese characters; facts such as the capital or the founding year), then writes several
documents per country and language that state each fact in different words, so a tiny model can learn the facts
from pretraining alone.

The corpus also carries the dirt the data stages must remove, each piece labelled in the `planted` field:
- `exact_dup`, `near_dup`: copies of good documents under new ids (near: a sentence dropped or added, a word
  swapped, punctuation changed); `dup_of` holds the original's id.
- `too_short`, `whitespace`, `section_keywords`: junk aimed at one cleaning rule each (see `CleanConfig`).
Good documents (`planted=None`) also contain citation marks (`[2]`, `[1-3]`) and runs of punctuation (`!!!!`,
`。。。。`) that cleaning strips or collapses without dropping the document.

Questions about the facts become SFT pairs; a `heldout_fraction` share of (country, fact) pairs never appears in
SFT and is asked by `demo_eval_questions` instead (a `demo` QA source in `evaluate.qa_sources`). Those facts are
still stated in the documents.

Determinism: every random stream is `random.Random(str)` (seeded through SHA-512, so PYTHONHASHSEED does not
matter) and nothing iterates over a set.
"""

from __future__ import annotations

import copy
import functools
import logging
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zero_chatgpt.config import DemoCorpusConfig
from zero_chatgpt.data_process import demo_corpus_text as words
from zero_chatgpt.data_process.demo_corpus_text import FACT_KEYS

log = logging.getLogger(__name__)

# Part of the fingerprint of every stage that reads a demo source (`sources.source_version`): bump it whenever
# a change here or in `demo_corpus_text` changes the generated text or rows, so cached artifacts built from the
# old ones rebuild.
DEMO_CORPUS_VERSION = 4

# Values of a document's `planted` field (None for a good page); the last three each target one cleaning rule.
PLANTED_LABELS = ("exact_dup", "near_dup", "too_short", "whitespace", "section_keywords")
JUNK_LABELS = PLANTED_LABELS[2:]

# ============================================================================================ the world


@dataclass(frozen=True)
class DemoEntity:
    """One fictional country. `facts[key][lang]` is the exact answer string that documents state."""

    index: int
    name: dict[str, str]
    kind: dict[str, str]
    facts: dict[str, dict[str, str]]
    location: dict[str, str]
    climate: dict[str, str]
    neighbour_direction: dict[str, str]
    mountain_height_m: int

    def fact(self, key: str, lang: str) -> str:
        """The answer string of one fact in one language, e.g. `fact("capital", "en") == "Talmer"`."""
        return self.facts[key][lang]

    def slots(self, lang: str) -> dict[str, str]:
        """Template slot values describing this place in `lang`."""
        kind = self.kind[lang]
        return {
            "name": self.name[lang],
            "kind": kind,
            "a_kind": ("an " if kind[0] in "aeiou" else "a ") + kind,
            "capital": self.facts["capital"][lang],
            "river": self.facts["largest_river"][lang],
            "mountain": self.facts["highest_mountain"][lang],
            "year": self.facts["founding_year"][lang],
            "export": self.facts["main_export"][lang],
            "animal": self.facts["national_animal"][lang],
            "neighbour": self.facts["neighbour"][lang],
            "direction": self.neighbour_direction[lang],
            "height": f"{self.mountain_height_m:,}" if lang == "en" else str(self.mountain_height_m),
            "location": self.location[lang],
            "climate": self.climate[lang],
        }


@dataclass(frozen=True)
class DemoWorld:
    """The generated world: its places and which (place index, fact key) pairs are held out of SFT."""

    entities: tuple[DemoEntity, ...]
    # Only ever tested for membership: iterating a frozenset of strings would depend on PYTHONHASHSEED.
    heldout: frozenset[tuple[int, str]]

    def fact_pairs(self) -> list[tuple[DemoEntity, str]]:
        """Every (place, fact key), in a stable order."""
        return [(entity, key) for entity in self.entities for key in FACT_KEYS]

    def is_heldout(self, entity_index: int, fact_key: str) -> bool:
        """True when this fact is asked only in evaluation, never in SFT."""
        return (entity_index, fact_key) in self.heldout


def _rng(seed: int, *purpose: object) -> random.Random:
    """An independent random stream per purpose, so changing one part of the corpus leaves the others alone."""
    return random.Random(":".join(str(part) for part in ("demo", seed, *purpose)))


@functools.cache
def _template_text(lang: str) -> str:
    """All fixed template and pool text of a language, lowercased: generated names must not occur in it."""
    parts: list[str] = list(words.INTROS[lang])
    for table in (words.FACT_SENTENCES, words.FILLER, words.QUESTIONS, words.ANSWERS, words.POOLS):
        for group in table[lang].values():
            parts.extend(group)
    parts.extend(words.TOO_SHORT[lang])
    parts.extend(words.SECTION_PAGES[lang])
    column = 0 if lang == "en" else 1
    pairs = (
        words.KINDS,
        words.MAINLAND_LOCATIONS,
        words.ISLAND_LOCATIONS,
        words.CLIMATES,
        words.EXPORTS,
        words.ANIMALS,
        words.PRODUCTS,
    )
    for table in pairs:
        parts.extend(row[column] for row in table)
    return "\n".join(parts).lower()


class _NameRegistry:
    """Proper nouns of one language: unique, and none inside another or inside the template text.

    That keeps every answer string unambiguous: finding "Talmer" in a model's reply means it named that capital.
    """

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self.taken: list[str] = []

    def claim(self, rng: random.Random, make: Callable[[random.Random], str]) -> str:
        """A fresh name from `make`, retried until it clashes with nothing already claimed."""
        for _ in range(1000):
            candidate = make(rng)
            folded = candidate.lower()
            if folded in _template_text(self.lang):
                continue
            if any(folded in other or other in folded for other in self.taken):
                continue
            self.taken.append(folded)
            return candidate
        raise RuntimeError(
            f"could not find a fresh {self.lang} name after 1000 tries; the world is too large "
            f"for the name generator ({len(self.taken)} names taken)"
        )


def _en_country(rng: random.Random) -> str:
    syllables = rng.choice(words.EN_CLOSED) + rng.choice(words.EN_OPEN) + rng.choice(words.EN_COUNTRY_ENDINGS)
    return syllables.capitalize()


def _en_capital(rng: random.Random) -> str:
    return (rng.choice(words.EN_CLOSED) + rng.choice(words.EN_CLOSED)).capitalize()


def _en_river(rng: random.Random) -> str:
    return (rng.choice(words.EN_OPEN) + rng.choice(words.EN_CLOSED)).capitalize()


def _en_mountain(rng: random.Random) -> str:
    return (rng.choice(words.EN_CLOSED) + rng.choice(words.EN_OPEN) + rng.choice(words.EN_CLOSED)).capitalize()


def _zh_pair(rng: random.Random) -> str:
    return "".join(rng.sample(words.ZH_NAME_CHARS, 2))


def _zh_country(rng: random.Random) -> str:
    return _zh_pair(rng)


def _zh_capital(rng: random.Random) -> str:
    return _zh_pair(rng) + rng.choice(words.ZH_CAPITAL_SUFFIXES)


def _zh_river(rng: random.Random) -> str:
    return _zh_pair(rng) + rng.choice(words.ZH_RIVER_SUFFIXES)


def _zh_mountain(rng: random.Random) -> str:
    return _zh_pair(rng) + rng.choice(words.ZH_MOUNTAIN_SUFFIXES)


def _pair_neighbours(count: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Nearest neighbour and its direction index per place: mutual pairs, plus one triangle when count is odd.

    Mutual pairs keep "the nearest neighbour of A" a single, checkable answer.
    """
    order = list(range(count))
    rng.shuffle(order)
    neighbour = [0] * count
    direction = [0] * count
    for a, b in zip(order[0::2], order[1::2]):
        neighbour[a], neighbour[b] = b, a
        direction[a] = rng.randrange(len(words.DIRECTIONS))
        direction[b] = words.OPPOSITE_DIRECTION[direction[a]]
    if count % 2:
        a, b, c = order[-3], order[-2], order[-1]
        neighbour[a], neighbour[b], neighbour[c] = b, c, a
        direction[b] = rng.randrange(len(words.DIRECTIONS))
        direction[c] = rng.randrange(len(words.DIRECTIONS))
    return neighbour, direction


def build_demo_world(cfg: DemoCorpusConfig, seed: int) -> DemoWorld:
    """Generate the places, their facts, and the held-out (place, fact) pairs; same (cfg, seed) -> same world."""
    rng = _rng(seed, "world")
    count = cfg.num_entities
    registries = {"en": _NameRegistry("en"), "zh": _NameRegistry("zh")}
    makers = {
        "name": (_en_country, _zh_country),
        "capital": (_en_capital, _zh_capital),
        "largest_river": (_en_river, _zh_river),
        "highest_mountain": (_en_mountain, _zh_mountain),
    }
    names: dict[str, list[dict[str, str]]] = {key: [] for key in makers}
    for _ in range(count):
        for key, (make_en, make_zh) in makers.items():
            names[key].append({"en": registries["en"].claim(rng, make_en), "zh": registries["zh"].claim(rng, make_zh)})
    neighbour, direction = _pair_neighbours(count, rng)

    entities = []
    for i in range(count):
        kind_en, kind_zh, on_islands = rng.choice(words.KINDS)
        location = rng.choice(words.ISLAND_LOCATIONS if on_islands else words.MAINLAND_LOCATIONS)
        climate = rng.choice(words.CLIMATES)
        export = rng.choice(words.EXPORTS)
        animal = rng.choice(words.ANIMALS)
        year = str(rng.randint(600, 1750))
        facts = {
            "capital": names["capital"][i],
            "largest_river": names["largest_river"][i],
            "highest_mountain": names["highest_mountain"][i],
            "founding_year": {"en": year, "zh": year},
            "main_export": {"en": export[0], "zh": export[1]},
            "national_animal": {"en": animal[0], "zh": animal[1]},
            "neighbour": dict(names["name"][neighbour[i]]),
        }
        entities.append(
            DemoEntity(
                index=i,
                name=names["name"][i],
                kind={"en": kind_en, "zh": kind_zh},
                facts=facts,
                location={"en": location[0], "zh": location[1]},
                climate={"en": climate[0], "zh": climate[1]},
                neighbour_direction=dict(zip(("en", "zh"), words.DIRECTIONS[direction[i]])),
                mountain_height_m=rng.randint(900, 4800),
            )
        )

    # Held out per fact kind, so evaluation asks about every kind of fact.
    heldout: set[tuple[int, str]] = set()
    per_kind = round(cfg.heldout_fraction * count)
    for key in FACT_KEYS:
        for index in _rng(seed, "heldout", key).sample(range(count), per_kind):
            heldout.add((index, key))
    return DemoWorld(entities=tuple(entities), heldout=frozenset(heldout))


# ============================================================================================ writing


def _fill(
    template: str, slots: dict[str, str], lang: str, rng: random.Random, drawn: dict[str, list[str]] | None = None
) -> str:
    """Fill a template from `slots`, drawing missing fields from the language's pools; capitalise English.

    `drawn` remembers pool values already used (pass one per page so its sentences do not repeat a value).
    """
    values: dict[str, str] = {}
    drawn = {} if drawn is None else drawn
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None or field_name in values:
            continue
        if field_name in slots:
            values[field_name] = slots[field_name]
            continue
        pool_name = field_name.rstrip("0123456789")
        used = drawn.setdefault(pool_name, [])
        choices = [v for v in words.POOLS[lang][pool_name] if v not in used] or list(words.POOLS[lang][pool_name])
        values[field_name] = rng.choice(choices)
        used.append(values[field_name])
    text = template.format(**values)
    return text[0].upper() + text[1:] if lang == "en" else text


@dataclass
class _Sentence:
    """One sentence of a page; fact sentences (and the intro) are never touched by near-duplicate edits."""

    text: str
    is_fact: bool


@dataclass
class _Draft:
    """A page before rendering, kept so near-duplicates can be edited sentence by sentence."""

    title: str
    paragraphs: list[list[_Sentence]]
    lang: str
    entity: DemoEntity

    def render(self) -> str:
        join = words.SENTENCE_JOIN[self.lang]
        body = "\n\n".join(join.join(s.text for s in paragraph) for paragraph in self.paragraphs)
        return f"{self.title}\n\n{body}"

    def sentences(self) -> list[_Sentence]:
        return [s for paragraph in self.paragraphs for s in paragraph]


def _filler_sentence(entity: DemoEntity, lang: str, groups: tuple[str, ...], rng: random.Random) -> _Sentence:
    templates = [t for group in groups for t in words.FILLER[lang][group]]
    return _Sentence(_fill(rng.choice(templates), entity.slots(lang), lang, rng), is_fact=False)


def _draft_page(entity: DemoEntity, page: int, lang: str, seed: int) -> _Draft:
    """Page `page` about one place: an intro, the focus's facts and some filler, in 2-3 paragraphs."""
    rng = _rng(seed, "page", lang, entity.index, page)
    focus, fact_keys, groups, (min_filler, max_filler) = words.FOCUSES[page % len(words.FOCUSES)]
    slots = entity.slots(lang)
    facts = [_Sentence(_fill(rng.choice(words.FACT_SENTENCES[lang][key]), slots, lang, rng), True) for key in fact_keys]
    templates = [t for group in groups for t in words.FILLER[lang][group]]
    count = min(rng.randint(min_filler, max_filler), len(templates))
    drawn: dict[str, list[str]] = {}
    filler = [_Sentence(_fill(t, slots, lang, rng, drawn), False) for t in rng.sample(templates, count)]
    body = facts + filler
    rng.shuffle(body)
    sentences = [_Sentence(_fill(rng.choice(words.INTROS[lang]), slots, lang, rng), True)] + body
    # Paragraph breaks after the intro block and somewhere in the middle of the rest.
    first_break = rng.randint(2, 4)
    second_break = rng.randint(first_break + 2, max(first_break + 2, len(sentences) - 2))
    paragraphs = [sentences[:first_break], sentences[first_break:second_break], sentences[second_break:]]
    title = _fill(rng.choice(words.TITLES[lang][focus]), slots, lang, rng)
    draft = _Draft(title, [p for p in paragraphs if p], lang, entity)
    _add_markup_noise(draft, rng)
    return draft


def _add_markup_noise(draft: _Draft, rng: random.Random) -> None:
    """Citation marks and repeated punctuation, as scraped encyclopedia text has; cleaning removes them."""
    sentences = draft.sentences()
    if rng.random() < 0.35:
        first = rng.randint(1, 5)
        for sentence in rng.sample(sentences, min(len(sentences), rng.randint(1, 3))):
            mark = f"[{first}]" if rng.random() < 0.6 else f"[{first}-{first + rng.randint(1, 2)}]"
            sentence.text += mark
            first += rng.randint(1, 3)
    if rng.random() < 0.2:
        end = words.SENTENCE_END[draft.lang]
        plain = [s for s in sentences if not s.is_fact and s.text.endswith(end)]
        if plain:
            sentence = rng.choice(plain)
            run = "!" * rng.randint(4, 6) if draft.lang == "en" else "。" * rng.randint(4, 6)
            sentence.text = sentence.text[: -len(end)] + run


# ============================================================================================ planted dirt


# A planted near-duplicate must be one that default MinHash dedup (threshold 0.7, 128 permutations, banded LSH)
# finds almost surely: at shingle Jaccard 0.92 the usual 14x9 banding misses a pair about once in 8,000.
_NEAR_DUPLICATE_MIN_JACCARD = 0.92
_NEAR_DUPLICATE_TRIES = 8


def _near_duplicate(original: _Draft, rng: random.Random) -> _Draft:
    """A copy with one small edit to a filler sentence (never to a stated fact), sometimes plus a word-level one.

    Tries a few random edits and keeps the first that leaves the copy at least `_NEAR_DUPLICATE_MIN_JACCARD`
    similar (else the most similar one), so sentence-level edits only land on pages long enough to absorb them.
    """
    before = original.render()
    best, best_similarity = None, -1.0
    for _ in range(_NEAR_DUPLICATE_TRIES):
        draft = copy.deepcopy(original)
        edits = [rng.choice(("drop", "add", "swap_word", "punctuation"))]
        if rng.random() < 0.4:
            edits.append(rng.choice(("swap_word", "punctuation")))
        for edit in edits:
            _EDITS[edit](draft, rng)  # an edit with nothing to work on changes nothing
        text = draft.render()
        if text == before:
            continue
        similarity = _shingle_jaccard(before, text, original.lang)
        if similarity >= _NEAR_DUPLICATE_MIN_JACCARD:
            return draft
        if similarity > best_similarity:
            best, best_similarity = draft, similarity
    if best is None:
        best = copy.deepcopy(original)
        _edit_add_sentence(best, rng)
    return best


def _shingle_jaccard(a: str, b: str, lang: str) -> float:
    """Jaccard similarity of the dedup stage's default shingles.

    Chinese: character 5-grams of the whitespace-normalised text; English: 3-grams of lower-cased
    whitespace-separated tokens (punctuation stays attached, so "hills." and "hills!" differ).
    """

    def shingle_set(text: str) -> set[Any]:
        if lang == "zh":
            text = " ".join(text.split())
            return {text[i : i + 5] for i in range(len(text) - 4)}
        tokens = text.lower().split()
        return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}

    first, second = shingle_set(a), shingle_set(b)
    return len(first & second) / max(1, len(first | second))


def _edit_drop_sentence(draft: _Draft, rng: random.Random) -> bool:
    """Remove one filler sentence; False when every paragraph is a single sentence."""
    candidates = [(p, s) for p in draft.paragraphs if len(p) > 1 for s in p if not s.is_fact]
    if not candidates:
        return False
    # The shortest filler sentence: the smallest change that is still a whole sentence.
    paragraph, sentence = min(candidates, key=lambda pair: len(pair[1].text))
    paragraph.remove(sentence)
    return True


def _edit_add_sentence(draft: _Draft, rng: random.Random) -> bool:
    """Insert one new filler sentence somewhere; always possible."""
    groups = tuple(words.FILLER[draft.lang])
    paragraph = rng.choice(draft.paragraphs)
    # The shortest of three candidates, to keep the copy close to its original.
    candidates = [_filler_sentence(draft.entity, draft.lang, groups, rng) for _ in range(3)]
    sentence = min(candidates, key=lambda candidate: len(candidate.text))
    paragraph.insert(rng.randint(0, len(paragraph)), sentence)
    return True


def _edit_swap_word(draft: _Draft, rng: random.Random) -> bool:
    """Replace one word of a filler sentence with a synonym; False when no filler has a listed word."""
    synonyms = words.SYNONYMS[draft.lang]
    sentences = [s for s in draft.sentences() if not s.is_fact]
    rng.shuffle(sentences)
    for sentence in sentences:
        for word, replacement in synonyms.items():
            if draft.lang == "zh":
                if word in sentence.text:
                    sentence.text = sentence.text.replace(word, replacement, 1)
                    return True
                continue
            match = re.search(rf"\b{word}\b", sentence.text, flags=re.IGNORECASE)
            if match:
                found = match.group(0)
                swapped = replacement.capitalize() if found[0].isupper() else replacement
                sentence.text = sentence.text[: match.start()] + swapped + sentence.text[match.end() :]
                return True
    return False


def _edit_punctuation(draft: _Draft, rng: random.Random) -> bool:
    """Turn one comma into a semicolon or one full stop into an exclamation mark, in a filler sentence."""
    comma, semicolon, end, exclaim = (", ", "; ", ".", "!") if draft.lang == "en" else ("，", "；", "。", "！")
    sentences = [s for s in draft.sentences() if not s.is_fact and (comma in s.text or s.text.endswith(end))]
    if not sentences:
        return False
    sentence = rng.choice(sentences)
    if comma in sentence.text:
        sentence.text = sentence.text.replace(comma, semicolon, 1)
    else:
        sentence.text = sentence.text[: -len(end)] + exclaim
    return True


_EDITS = {
    "drop": _edit_drop_sentence,
    "add": _edit_add_sentence,
    "swap_word": _edit_swap_word,
    "punctuation": _edit_punctuation,
}


def _person_name(lang: str, rng: random.Random) -> str:
    if lang == "zh":
        return rng.choice(words.ZH_SURNAMES) + "".join(rng.sample(words.ZH_NAME_CHARS, rng.randint(1, 2)))
    first = (rng.choice(words.EN_CLOSED) + rng.choice(words.EN_OPEN)).capitalize()
    return f"{first} {(rng.choice(words.EN_CLOSED) + rng.choice(words.EN_CLOSED)).capitalize()}"


def _junk_text(rule: str, entity: DemoEntity, lang: str, seed: int, number: int) -> str:
    """A document that exactly one cleaning rule (`rule`) must drop."""
    rng = _rng(seed, "junk", rule, lang, number)
    slots = entity.slots(lang)
    if rule == "too_short":
        return _fill(rng.choice(words.TOO_SHORT[lang]), slots, lang, rng)
    if rule == "section_keywords":
        product = rng.choice(words.PRODUCTS)
        extra = {
            "person": _person_name(lang, rng),
            "birth_year": str(rng.randint(1800, 1990)),
            "product": product[0] if lang == "en" else product[1],
            "product_title": product[0].title(),
        }
        return _fill(rng.choice(words.SECTION_PAGES[lang]), {**slots, **extra}, lang, rng)
    if rule == "whitespace":
        # A table flattened by a bad extractor: real content, but more blank than text.
        keys = rng.sample(FACT_KEYS, 4)
        sentences = [_fill(rng.choice(words.FACT_SENTENCES[lang][key]), slots, lang, rng) for key in keys]
        text = words.SENTENCE_JOIN[lang].join(sentences)
        if lang == "en":
            pieces = text.split()
        else:
            pieces, start = [], 0
            while start < len(text):
                step = rng.randint(2, 4)
                pieces.append(text[start : start + step])
                start += step
        out = pieces[0]
        for piece in pieces[1:]:
            out += rng.choice(words.WHITESPACE_RUNS) + piece
        return out
    raise ValueError(f"unknown junk rule {rule!r}; expected one of {JUNK_LABELS}")


def planted_counts(cfg: DemoCorpusConfig) -> dict[str, int]:
    """How many documents of each `planted` label one language gets (multiply by the number of languages)."""
    good = cfg.num_entities * cfg.docs_per_entity
    exact = min(good, round(cfg.exact_duplicate_fraction * good))
    near = min(good - exact, round(cfg.near_duplicate_fraction * good))
    counts = {"exact_dup": exact, "near_dup": near}
    counts.update({rule: cfg.junk_docs_per_rule for rule in JUNK_LABELS})
    return counts


# ============================================================================================ public API


def _languages(cfg: DemoCorpusConfig) -> list[str]:
    return list(dict.fromkeys(cfg.languages))


def _language_documents(world: DemoWorld, cfg: DemoCorpusConfig, seed: int, lang: str) -> list[dict[str, Any]]:
    drafts = [_draft_page(entity, page, lang, seed) for entity in world.entities for page in range(cfg.docs_per_entity)]
    rows: list[dict[str, Any]] = [{"text": d.render(), "planted": None, "dup_of": None} for d in drafts]

    counts = planted_counts(cfg)
    rng = _rng(seed, "duplicates", lang)
    originals = rng.sample(range(len(drafts)), counts["exact_dup"] + counts["near_dup"])
    for i in originals[: counts["exact_dup"]]:
        rows.append({"text": rows[i]["text"], "planted": "exact_dup", "dup_of": i})
    for i in originals[counts["exact_dup"] :]:
        rows.append({"text": _near_duplicate(drafts[i], rng).render(), "planted": "near_dup", "dup_of": i})
    for rule in JUNK_LABELS:
        for number in range(counts[rule]):
            entity = world.entities[rng.randrange(len(world.entities))]
            rows.append({"text": _junk_text(rule, entity, lang, seed, number), "planted": rule, "dup_of": None})

    # Shuffled so copies and junk sit among the good pages (and in other shards), as in scraped data.
    order = list(range(len(rows)))
    _rng(seed, "order", lang).shuffle(order)
    ids = [""] * len(rows)
    for position, row_index in enumerate(order):
        ids[row_index] = f"demo:{lang}:{position:05d}"
    return [
        {
            "id": ids[i],
            "text": rows[i]["text"],
            "lang": lang,
            "planted": rows[i]["planted"],
            "dup_of": None if rows[i]["dup_of"] is None else ids[rows[i]["dup_of"]],
        }
        for i in order
    ]


def demo_documents(cfg: DemoCorpusConfig, seed: int) -> list[dict[str, Any]]:
    """Pretraining documents, language by language.

    Each is `{"id", "text", "lang", "planted", "dup_of"}`: `id` like `demo:en:00007` (unique, stable for a given
    cfg and seed); `planted` is None for a good page, else one of `exact_dup`, `near_dup`, `too_short`,
    `whitespace`, `section_keywords`; `dup_of` is the id of the page a planted duplicate copies, else None.
    """
    world = build_demo_world(cfg, seed)
    docs = [doc for lang in _languages(cfg) for doc in _language_documents(world, cfg, seed, lang)]
    log.info(
        "demo corpus: %d documents (%d planted) about %d places in %s",
        len(docs),
        sum(d["planted"] is not None for d in docs),
        len(world.entities),
        _languages(cfg),
    )
    return docs


def demo_sft_pairs(cfg: DemoCorpusConfig, seed: int) -> list[dict[str, str]]:
    """Question/answer pairs about every fact not held out: `{"id", "prompt", "response", "answer", "lang"}`.

    Each response contains `answer`, the fact's exact answer string. `id` is `demo:sft:<lang>:<place>:<fact>:<n>`.
    """
    world = build_demo_world(cfg, seed)
    pairs = []
    for lang in _languages(cfg):
        for entity, key in world.fact_pairs():
            if world.is_heldout(entity.index, key):
                continue
            rng = _rng(seed, "sft", lang, entity.index, key)
            slots = entity.slots(lang)
            phrasings = words.QUESTIONS[lang][key]
            questions = rng.sample(phrasings, min(cfg.sft_questions_per_fact, len(phrasings)))
            for n, question in enumerate(questions):
                pairs.append(
                    {
                        "id": f"demo:sft:{lang}:{entity.index:04d}:{key}:{n}",
                        "prompt": _fill(question, slots, lang, rng),
                        "response": _fill(rng.choice(words.ANSWERS[lang][key]), slots, lang, rng),
                        "answer": entity.fact(key, lang),
                        "lang": lang,
                    }
                )
    return pairs


def demo_eval_questions(cfg: DemoCorpusConfig, seed: int) -> list[dict[str, str]]:
    """Questions about the held-out facts: `{"id", "prompt", "answer", "lang"}`, `answer` the short fact string.

    None of these (place, fact) pairs is in `demo_sft_pairs`; the documents still state them.
    `id` is `demo:eval:<lang>:<place>:<fact>`.
    """
    world = build_demo_world(cfg, seed)
    questions = []
    for lang in _languages(cfg):
        for entity, key in world.fact_pairs():
            if not world.is_heldout(entity.index, key):
                continue
            rng = _rng(seed, "eval", lang, entity.index, key)
            questions.append(
                {
                    "id": f"demo:eval:{lang}:{entity.index:04d}:{key}",
                    "prompt": _fill(rng.choice(words.QUESTIONS[lang][key]), entity.slots(lang), lang, rng),
                    "answer": entity.fact(key, lang),
                    "lang": lang,
                }
            )
    return questions


__all__ = [
    "DEMO_CORPUS_VERSION",
    "FACT_KEYS",
    "DemoEntity",
    "DemoWorld",
    "build_demo_world",
    "demo_documents",
    "demo_sft_pairs",
    "demo_eval_questions",
    "planted_counts",
    "PLANTED_LABELS",
]
