"""The grounding guard: is every checkable claim of an answer in its sources? (pure, cheap)

A small model retrieves the right document and still writes "7.1 minutes" where the source says
47. Checking meaning would need a second model; checking the *checkable* claims does not: the
numbers (with their units), dates and names of each answer sentence must appear in the sources
the sentence cites, or, for an uncited sentence, in any source of the prompt. Anything taken
from the question counts as given. It works with any OpenAI-compatible LLM, since it looks only
at the text.

When a claim is missing, the caller retries once with a stricter prompt, then falls back to an
extractive answer: the source sentences that best answer the question, quoted with citations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from freshrag.generate.citations import MARKER_RE, content_terms, marker_numbers
from freshrag.generate.sources import Source

# A sentence ends at . ! ? followed by a blank or the end (so "7.1" and "v2.0" stay whole).
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+|\n+")
# 1,200 / 1 200 / 3.5 / 47 / -2 / 12%, with an optional unit word right after.
_NUMBER_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:[,\u202f ]\d{3})+|\d+(?:\.\d+)?)(?![\w])")
_UNIT_RE = re.compile(r"\s?(%|[A-Za-z°µ]{1,12})")
# A name: a capitalised word (letters, digits, hyphens, apostrophes), not a sentence opener.
_WORD_RE = re.compile(r"[A-Za-z][\w'’-]*")
_MONTHS = (
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
# Words a sentence often starts with, or that are capitalised without being names.
_COMMON = frozenset(
    (
        "a an the this that these those it its i we you he she they there here yes no not "
        "according based however also and but or so if in on at to of for from by with as "
        "its it's source sources answer question sorry unfortunately note monday tuesday "
        "wednesday thursday friday saturday sunday"
    ).split()
)
_UNITS = {
    "%": "percent",
    "percent": "percent",
    "per": "",
    "min": "minute",
    "mins": "minute",
    "minute": "minute",
    "minutes": "minute",
    "h": "hour",
    "hr": "hour",
    "hrs": "hour",
    "hour": "hour",
    "hours": "hour",
    "s": "second",
    "sec": "second",
    "secs": "second",
    "second": "second",
    "seconds": "second",
    "day": "day",
    "days": "day",
    "week": "week",
    "weeks": "week",
    "month": "month",
    "months": "month",
    "year": "year",
    "years": "year",
    "km": "km",
    "kilometers": "km",
    "kilometres": "km",
    "m": "m",
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "cm": "cm",
    "mm": "mm",
    "kg": "kg",
    "kilograms": "kg",
    "g": "g",
    "grams": "g",
    "tonnes": "tonne",
    "tons": "tonne",
    "l": "litre",
    "liters": "litre",
    "litres": "litre",
    "kw": "kw",
    "kwh": "kwh",
    "mw": "mw",
    "w": "w",
    "watts": "w",
    "v": "v",
    "volts": "v",
    "mph": "mph",
    "kmh": "kmh",
    "°c": "c",
    "°f": "f",
    "gb": "gb",
    "mb": "mb",
    "tb": "tb",
    "usd": "usd",
    "eur": "eur",
    "dollars": "usd",
    "euros": "eur",
    "people": "people",
    "employees": "people",
    "staff": "people",
}


@dataclass(frozen=True, slots=True)
class SentenceCheck:
    """One answer sentence whose claims are not all in its sources."""

    sentence: str
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Grounding:
    grounded: bool
    unsupported: tuple[SentenceCheck, ...] = ()


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END_RE.split(text) if s and s.strip()]


def _norm_number(raw: str) -> str:
    digits = re.sub(r"[,\u202f ]", "", raw)
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".") or "0"
    return digits.lstrip("0") or "0"


def _numbers_with_units(text: str) -> list[tuple[str, str]]:
    """(number, unit) pairs; unit '' when none follows (or it is not a known unit)."""
    out: list[tuple[str, str]] = []
    for match in _NUMBER_RE.finditer(text):
        unit = ""
        after = _UNIT_RE.match(text, match.end())
        if after is not None:
            unit = _UNITS.get(after.group(1).lower(), "")
        out.append((_norm_number(match.group(1)), unit))
    return out


def _names(sentence: str) -> list[str]:
    """Capitalised words that are not the sentence's first word (unless they hold a digit or
    an inner capital, like "Zephyr-9" or "McAllister"), nor common words, plus month names."""
    out: list[str] = []
    words = list(_WORD_RE.finditer(MARKER_RE.sub(" ", sentence)))
    for i, match in enumerate(words):
        word = match.group(0).strip("'’-")
        lower = word.lower()
        if not word:
            continue
        if lower in _MONTHS:
            out.append(lower)
            continue
        if not word[0].isupper() or lower in _COMMON:
            continue
        distinctive = any(c.isdigit() for c in word) or any(c.isupper() for c in word[1:])
        if i == 0 and not distinctive:
            continue
        out.append(lower)
    return out


@dataclass(frozen=True, slots=True)
class _Evidence:
    numbers: frozenset[str]
    number_units: frozenset[tuple[str, str]]
    words: frozenset[str]

    @classmethod
    def of(cls, *texts: str) -> _Evidence:
        text = " ".join(texts)
        pairs = _numbers_with_units(text)
        words = {w.lower().strip("'’-") for w in _WORD_RE.findall(text)}
        return cls(frozenset(n for n, _ in pairs), frozenset(pairs), frozenset(words))

    def missing(self, sentence: str, given: _Evidence) -> list[str]:
        out: list[str] = []
        for number, unit in _numbers_with_units(MARKER_RE.sub(" ", sentence)):
            if number in given.numbers:
                continue
            if number not in self.numbers:
                out.append(number + (f" {unit}" if unit else ""))
            elif unit and (number, unit) not in self.number_units:
                # "47 minutes" when the source says 47 seconds: the unit is a claim too
                bare = (number, "") in self.number_units
                if not bare or unit not in {u for _, u in self.number_units}:
                    out.append(f"{number} {unit}")
        for name in _names(sentence):
            if name not in self.words and name not in given.words:
                out.append(name)
        return out


def check_grounding(text: str, sources: Sequence[Source], question: str = "") -> Grounding:
    """Every sentence's numbers (with units), dates and names must be in the sources it cites
    ([n] means `sources[n - 1]`); an uncited sentence may use any source. The question's own
    numbers and names count as given."""
    given = _Evidence.of(question)
    every = _Evidence.of(*(f"{s.title} {s.text}" for s in sources))
    per_source = [_Evidence.of(f"{s.title} {s.text}") for s in sources]
    bad: list[SentenceCheck] = []
    for sentence in sentences(text):
        cited = [n for n in marker_numbers(sentence) if 1 <= n <= len(sources)]
        if cited:
            evidence = _Evidence(
                frozenset().union(*(per_source[n - 1].numbers for n in cited)),
                frozenset().union(*(per_source[n - 1].number_units for n in cited)),
                frozenset().union(*(per_source[n - 1].words for n in cited)),
            )
            missing = evidence.missing(sentence, given)
        elif any(not one.missing(sentence, given) for one in per_source):
            missing = []  # one source backs the whole sentence
        else:
            # an uncited sentence must not stitch facts from different documents together
            missing = every.missing(sentence, given) or ["claims from different sources"]
        if missing:
            bad.append(SentenceCheck(sentence, tuple(dict.fromkeys(missing))))
    return Grounding(not bad, tuple(bad))


_FAMILIES = {
    "duration": {"second", "minute", "hour", "day", "week", "month", "year"},
    "distance": {"km", "m", "cm", "mm", "mph", "kmh"},
    "mass": {"kg", "g", "tonne"},
    "money": {"usd", "eur"},
    "power": {"kw", "kwh", "mw", "w", "v"},
    "percent": {"percent"},
    "people": {"people"},
}
_CUES = (
    (r"\bhow long\b|\bduration\b|\btime\b|\btake\b|\blast\b", ("duration", "distance")),
    (r"\bhow (far|tall|high|wide|deep)\b|\brange\b|\bdistance\b|\blength\b", ("distance",)),
    (r"\bweigh|\bweight\b|\bheavy\b|\bmass\b", ("mass",)),
    (r"\bcost|\bprice\b|\bpay\b|\bfee\b|\bbudget\b", ("money",)),
    (r"\bpower\b|\bwatts?\b|\bcapacity\b|\bvolt", ("power",)),
    (r"\bpercent|%|\bshare\b|\brate\b", ("percent",)),
    (r"\bhow many (people|employees|staff|workers)\b", ("people",)),
)
_DATE_CUE = re.compile(r"\b(when|what year|which year|date|founded|opened|launched|since)\b")
_NUMBER_CUE = re.compile(r"\bhow (many|much|long|far|old|big|fast|high|tall)\b|\bwhat is the\b")
_YEAR_RE = re.compile(r"\b(1[89]\d\d|20\d\d)\b")


_NON_ANSWER_TERMS = frozenset("source sources number numbers text document answer question".split())
_DONT_KNOW_RE = re.compile(
    r"\b(do(es)? not (cover|say|mention|state|contain)|don't know|do not know|not (stated|"
    r"mentioned|covered)|no information)\b",
    re.IGNORECASE,
)


def answers_question(question: str, text: str) -> bool:
    """Whether a reply says anything at all about the question: not a bare "[2]", not "The
    source with the number [n] is:". A question that asks for a quantity or a date needs a
    number the question does not already hold; any other needs a word the question does not
    hold. An honest "the sources do not say" counts as an answer."""
    body = MARKER_RE.sub(" ", text)
    if not any(c.isalnum() for c in body):
        return False
    if _DONT_KNOW_RE.search(body) or re.match(r"\s*(yes|no)\b", body, re.IGNORECASE):
        return True
    q = question.lower()
    given_numbers = {n for n, _ in _numbers_with_units(question)}
    # "how many/much/long/far/old", "what year": only a number answers it ("when" can be
    # answered in words: "in winter")
    if re.search(r"\bhow (many|much|long|far|old)\b|\b(what|which) year\b", q):
        return bool({n for n, _ in _numbers_with_units(body)} - given_numbers)
    new_terms = _stems(body) - _stems(question) - _NON_ANSWER_TERMS
    return bool(new_terms) or bool({n for n, _ in _numbers_with_units(body)} - given_numbers)


def source_sentences(text: str) -> list[str]:
    """Sentences of a source for quoting: paragraphs unwrapped (a line break inside a
    paragraph is not a sentence end), markdown headings and list markers left out."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        prose = [ln for ln in lines if not ln.startswith("#")]
        joined = " ".join(re.sub(r"^([-*+]|\d+[.)])\s+", "", ln) for ln in prose)
        out.extend(sentences(joined))
    return out


_SUFFIXES = ("ing", "ies", "ied", "ed", "es", "s", "e", "y", "ly")


def _stem(word: str) -> str:
    """A crude stem (charging/charge, carries/carry), enough to match question and source."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _stems(text: str) -> set[str]:
    return {_stem(t) for t in content_terms(text)}


def extractive_answer(question: str, sources: Sequence[Source], max_sentences: int = 2) -> str:
    """The source sentences that best answer the question, quoted, each with its citation.

    Score: words (stems) shared with the question, rarer ones across the sources weighing more
    and the source's title words (they name the document, not the answer) less; a bonus for a
    number the question does not hold, larger when its unit is the kind the question asks for
    (how long: a duration; weigh: a mass; when: a date); a small one for the better-ranked
    source. Ties keep rank order."""
    q = question.lower()
    asked = _stems(question)
    families = {f for cue, fams in _CUES if re.search(cue, q) for f in fams}
    wanted_units = set().union(*(_FAMILIES[f] for f in families)) if families else set()
    wants_date = bool(_DATE_CUE.search(q))
    wants_number = bool(_NUMBER_CUE.search(q)) or bool(families) or wants_date
    given_numbers = {n for n, _ in _numbers_with_units(question)}
    split = [(n, source_sentences(s.text)) for n, s in enumerate(sources, 1)]
    titles = [_stems(s.title) for s in sources]
    df: dict[str, int] = {}
    for _, sents in split:
        for sent in sents:
            for term in _stems(sent):
                df[term] = df.get(term, 0) + 1
    candidates: list[tuple[float, int, int, str]] = []
    order = 0
    for number, sents in split:
        for sent in sents:
            shared = _stems(sent) & asked
            title = titles[number - 1]
            score = sum((1.0 + 1.0 / df.get(t, 1)) * (0.25 if t in title else 1.0) for t in shared)
            if not shared and number > 1:
                continue  # a number alone is evidence only in the best-ranked source
            pairs = [(n, u) for n, u in _numbers_with_units(sent) if n not in given_numbers]
            if wants_number and pairs:
                score += 1.0
                if any(u in wanted_units for _, u in pairs):
                    score += 3.0
            if wants_date and (_YEAR_RE.search(sent) or any(m in sent.lower() for m in _MONTHS)):
                score += 3.0
            if score > 0:
                score += 0.5 / number  # the retriever's ranking breaks near-ties
                candidates.append((score, -order, number, sent))
            order += 1
    if not candidates:
        return ""
    candidates.sort(reverse=True)
    best = candidates[:max_sentences]
    if len(best) > 1 and best[1][0] < best[0][0] * 0.6:
        best = best[:1]
    return " ".join(f'"{sent.rstrip()}" [{number}]' for _, _, number, sent in best)
