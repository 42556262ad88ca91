"""Freshness QA: are the answers of `POST /v1/chat` right, current and grounded?

    .venv/bin/python -m benchmarks.qa [--size 48] [--questions 96] [--json out.json]
    (or as the `qa` section of `python -m benchmarks.bench`)

The data set ships in benchmarks/data/qa/: `documents.jsonl` (short documents about fictional
products, places, people and events, so the model cannot answer from training), `updates.jsonl`
(a new version of half of them in which specific facts change) and `questions.jsonl` (questions
phrased as a user would ask them, each answerable from one document, with the accepted forms of
the answer; for a fact the update changes: `answer_after`, the forms after it, and
`superseded`, the forms of the old fact). `check_dataset` states what the data guarantees.

The stack is real: `freshrag up` (Kafka change events -> the flow -> Qdrant Edge, and the API)
on a fresh topic and shard, with the real embedding model and a real OpenAI-compatible LLM
(FRESHRAG_TEST_LLM_BASE_URL, else the bundled one started with infra/llm/llm.sh for the run).

- Phase 1: every document is written through `POST /v1/documents`; the consistency tokens of
  the writes are merged and passed to a search, which returns once the index holds them all;
  then every question is asked through `POST /v1/chat` with that token.
- Phase 2: the documents of `updates.jsonl` are written again with their changed facts, the
  tokens are passed the same way, and every question is asked again.

Scored per phase, by this module and never by the server's own flags:

- correct: the answer contains an accepted form of the current fact (case, blanks and thousands
  separators normalised; a number must not run on into other digits);
- stale: it contains a superseded form and no current one;
- unsupported: it states a number, or a capitalised name, found in none of the texts (and
  titles) of the sources the response returned nor in the question (`unsupported_claims`);
  "unsupported presented as grounded": unsupported by this check while the response says
  `grounded: true` (a response without the flag that is not a refusal counts as presented as
  grounded: nothing tells the reader otherwise);
- refusals; citation precision: of the cited sources, the share that is the question's document
  at its current version (and the share whose text holds the current fact);
- latency p50/p99 of the chat request (client-side), the breakdown by `answer_type`, and the
  agreement of the server's `grounded` flag with this module's check;
- extractive answers: each quoted passage must be in the text of the source it cites;
- sources of an old version: returned sources or citations of a benchmark document at another
  version than the one indexed when the phase began (after the token, there must be none).

`run()` returns plain dicts (with every answer and its scores under "answers"); `markdown()`
renders the tables the `__main__` prints and `make bench` writes. The full size (48 documents,
96 questions, twice) takes about 10 minutes with the bundled LLM on a quiet 2-core box.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks/data/qa"
API_KEY = "bench-qa-key-0123456789"
TENANT = "bench-qa"
ANSWER_TYPES = ("generated", "extractive", "raw", "refusal")

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(f"[qa {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the data set -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Question:
    id: str
    doc_id: str
    question: str
    answer: tuple[str, ...]
    answer_after: tuple[str, ...] = ()
    superseded: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.answer_after)

    def current(self, phase: int) -> tuple[str, ...]:
        return self.answer_after if phase == 2 and self.changes else self.answer

    def old(self, phase: int) -> tuple[str, ...]:
        return self.superseded if phase == 2 else ()


@dataclass(frozen=True)
class Dataset:
    documents: tuple[Document, ...]
    updates: tuple[Document, ...]
    questions: tuple[Question, ...]

    def select(self, size: int | None = None, questions: int | None = None) -> Dataset:
        """The first `size` documents (the file alternates updated and unchanged ones, so about
        half of any prefix changes in phase 2), their updates and up to `questions` of their
        questions, taken round-robin over the documents."""
        docs = self.documents[: size or len(self.documents)]
        ids = {d.id for d in docs}
        per_doc: dict[str, list[Question]] = {d.id: [] for d in docs}
        for q in self.questions:
            if q.doc_id in ids:
                per_doc[q.doc_id].append(q)
        chosen: list[Question] = []
        limit = questions if questions is not None else len(self.questions)
        depth = 0
        while len(chosen) < limit and any(len(v) > depth for v in per_doc.values()):
            for d in docs:
                if len(per_doc[d.id]) > depth and len(chosen) < limit:
                    chosen.append(per_doc[d.id][depth])
            depth += 1
        order = {q.id: i for i, q in enumerate(self.questions)}
        chosen.sort(key=lambda q: order[q.id])
        return Dataset(docs, tuple(u for u in self.updates if u.id in ids), tuple(chosen))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load(data_dir: Path = DATA) -> Dataset:
    def doc(row: Mapping[str, Any]) -> Document:
        return Document(str(row["id"]), str(row.get("title", "")), str(row["text"]))

    questions = tuple(
        Question(
            id=str(r["id"]),
            doc_id=str(r["doc_id"]),
            question=str(r["question"]),
            answer=tuple(str(a) for a in r["answer"]),
            answer_after=tuple(str(a) for a in r.get("answer_after", ())),
            superseded=tuple(str(a) for a in r.get("superseded", ())),
        )
        for r in _jsonl(data_dir / "questions.jsonl")
    )
    return Dataset(
        tuple(doc(r) for r in _jsonl(data_dir / "documents.jsonl")),
        tuple(doc(r) for r in _jsonl(data_dir / "updates.jsonl")),
        questions,
    )


def check_dataset(data: Dataset) -> list[str]:
    """What the data promises, as a list of violations (empty when it holds):

    - ids are unique; every document has 3-6 sentences; every question names a document;
    - an accepted form of every answer is in its document, and in the update too when the fact
      does not change; for a changed fact the new form is in the update, and neither the old
      one (`superseded`, equal to `answer`) nor any of its forms is;
    - every update changes at least one asked fact, and only updated documents have changes;
    - no accepted form of a question's answers (before or after) is in any other document or
      update: a fact credited to an answer belongs to that document alone."""
    problems: list[str] = []
    docs = {d.id: d for d in data.documents}
    updates = {u.id: u for u in data.updates}
    for kind, rows in (("document", data.documents), ("update", data.updates)):
        ids = [r.id for r in rows]
        if len(set(ids)) != len(ids):
            problems.append(f"duplicate {kind} ids")
    qids = [q.id for q in data.questions]
    if len(set(qids)) != len(qids):
        problems.append("duplicate question ids")
    for u in data.updates:
        if u.id not in docs:
            problems.append(f"update {u.id} has no original document")
    for d in (*data.documents, *data.updates):
        n = len(sentences(d.text))
        if not 3 <= n <= 6:
            problems.append(f"{d.id}: {n} sentences, want 3-6")
    changed: set[str] = set()
    for q in data.questions:
        doc = docs.get(q.doc_id)
        if doc is None:
            problems.append(f"{q.id}: unknown document {q.doc_id}")
            continue
        if not q.answer:
            problems.append(f"{q.id}: no accepted answer")
        if not contains_any(doc.text, q.answer):
            problems.append(f"{q.id}: no accepted answer in {doc.id}")
        update = updates.get(q.doc_id)
        if q.changes:
            changed.add(q.doc_id)
            if update is None:
                problems.append(f"{q.id}: answer_after but {q.doc_id} has no update")
                continue
            if set(q.superseded) != set(q.answer):
                problems.append(f"{q.id}: superseded differs from answer")
            if not contains_any(update.text, q.answer_after):
                problems.append(f"{q.id}: no answer_after form in the update")
            if contains_any(update.text, (*q.superseded, *q.answer)):
                problems.append(f"{q.id}: the update still holds the old fact")
        elif update is not None and not contains_any(update.text, q.answer):
            problems.append(f"{q.id}: unchanged fact missing from the update")
        elif q.superseded:
            problems.append(f"{q.id}: superseded without answer_after")
        others = [
            t for o in (*data.documents, *data.updates) if o.id != q.doc_id for t in (o.text,)
        ]
        for form in (*q.answer, *q.answer_after):
            hits = [t[:40] for t in others if contains_form(t, form)]
            if hits:
                problems.append(f"{q.id}: '{form}' also in another document: {hits[0]}...")
    for u in data.updates:
        if u.id not in changed:
            problems.append(f"update {u.id} changes no asked fact")
    return problems


# --- scoring (pure) -----------------------------------------------------------------------------

# A citation marker as the API's answers write it: [1], [1, 2], [Source 1].
MARKER_RE = re.compile(
    r"\[\s*(?:sources?\s*)?\d{1,4}(?:\s*[,;]\s*(?:sources?\s*)?\d{1,4})*\s*\]", re.IGNORECASE
)
# 1,200 / 1 200 (thin or no-break space) / 1'200: a thousands separator between digit groups.
_THOUSANDS_RE = re.compile(r"(?<=\d)[,\u202f\u00a0\u2009'](?=\d{3}(?!\d))")
_DASHES_RE = re.compile(r"[\u2010-\u2015\u2212]")
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)*")
_WORD_RE = re.compile(r"[^\W\d_][\w'\u2019-]*")
_SENTENCE_RE = re.compile(r"(?<=[.!?])[\"'\u201d)\]]*\s+|\n+")
# Words that start sentences or are capitalised without being a claim.
_COMMON = frozenset(
    """a an the this that these those it its i we you he she they them his her their our my
    your there here yes no not none nothing according based however also and but or so if in
    on at to of for from by with as source sources answer answers question context document
    documents passage text information provided sorry unfortunately note please currently
    today both each every all some many most one two three four five six seven eight nine ten
    what which who whom whose when where why how is are was were be been being has have had
    do does did can could will would should may might must mr mrs ms dr st after before since
    while during about approximately around over under than then thus therefore overall
    finally first second third additionally furthermore moreover total ok okay sure well
    hello hi thank thanks unknown quote quoted extractive monday tuesday wednesday thursday
    friday saturday sunday""".split()
)


def normalise(text: str) -> str:
    """Lower case, one blank between words, thousands separators and dash variants gone."""
    text = _THOUSANDS_RE.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = _DASHES_RE.sub("-", text).replace("\u2019", "'")
    return " ".join(text.lower().split())


def _form_pattern(form: str) -> re.Pattern[str] | None:
    f = normalise(form)
    if not f:
        return None
    before = ""
    if f[0].isdigit():
        before = r"(?<![^\W_])(?<!\d[.,])"
    elif f[0].isalnum():
        before = r"(?<![^\W_])"
    after = ""
    if f[-1].isdigit():
        after = r"(?![0-9])(?![.,][0-9])"
    elif f[-1].isalnum():
        after = r"(?![^\W_])"
    return re.compile(before + re.escape(f) + after)


def contains_form(text: str, form: str) -> bool:
    """`form` in `text`, normalised, as whole words: "47" is in "47 minutes" and "47-minute",
    not in "147", "4,7" or "47.5"."""
    pattern = _form_pattern(form)
    return pattern is not None and pattern.search(normalise(MARKER_RE.sub(" ", text))) is not None


def contains_any(text: str, forms: Sequence[str]) -> bool:
    return any(contains_form(text, f) for f in forms)


def strip_markers(text: str) -> str:
    """The text without citation markers (and the blank each leaves before punctuation)."""
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", MARKER_RE.sub(" ", text))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s and s.strip()]


def _canonical_number(raw: str) -> str:
    head, _, tail = raw.partition(".")
    if tail and "." not in tail:
        tail = tail.rstrip("0")
        return (head.lstrip("0") or "0") + (f".{tail}" if tail else "")
    return raw if tail else (raw.lstrip("0") or "0")


def numbers(text: str) -> set[str]:
    """The numbers a text states, canonical: thousands separators, leading zeros and trailing
    decimal zeros gone (1,200 -> 1200, 9.50 -> 9.5, 05 -> 5); digits inside a word (K7) are
    part of that word, not numbers."""
    clean = _THOUSANDS_RE.sub("", unicodedata.normalize("NFKC", MARKER_RE.sub(" ", text)))
    return {_canonical_number(m.group()) for m in _NUMBER_RE.finditer(clean)}


def _words(text: str) -> list[tuple[str, int, int]]:
    out = []
    for m in _WORD_RE.finditer(text):
        word = re.sub(r"(['\u2019]s|['\u2019-])+$", "", m.group())
        if word:
            out.append((word, m.start(), m.start() + len(word)))
    return out


def names(sentence: str) -> list[str]:
    """The capitalised words of a sentence that can be claims: not a common word, not an
    all-capitals abbreviation of up to 3 letters (units: TB, MW), and not the sentence's first
    word (capitalised anyway: "Ask", "Flight") unless it holds a digit or a hyphen (K7,
    Meridian-3). A made-up "Ilsa Petrov" is caught by its second word."""
    out = []
    for i, (word, _, _) in enumerate(_words(MARKER_RE.sub(" ", sentence))):
        if not word[0].isupper() or word.lower() in _COMMON:
            continue
        if len(word) <= 3 and word.isupper():
            continue
        if i == 0 and not any(c.isdigit() or c == "-" for c in word):
            continue
        out.append(word)
    return out


@dataclass(frozen=True)
class Support:
    """The evidence an answer may draw on: the texts of its sources, and the question."""

    numbers: frozenset[str]
    words: frozenset[str]

    @classmethod
    def of(cls, *texts: str) -> Support:
        nums: set[str] = set()
        words: set[str] = set()
        for t in texts:
            nums |= numbers(t)
            words |= {w.lower() for w, _, _ in _words(normalise(t))}
            words |= {w.lower() for w, _, _ in _words(t)}
        return cls(frozenset(nums), frozenset(words))


def unsupported_claims(
    answer: str, sources: Sequence[str], question: str = ""
) -> list[dict[str, Any]]:
    """Per answer sentence with a claim found in no source text nor in the question: the
    sentence and those claims (numbers canonical, names as written)."""
    support = Support.of(*sources, question)
    out = []
    for sent in sentences(strip_markers(answer)):
        missing = sorted(n for n in numbers(sent) if n not in support.numbers)
        missing += [w for w in names(sent) if w.lower() not in support.words]
        if missing:
            out.append({"sentence": sent, "claims": missing})
    return out


_QUOTE_RE = re.compile(r"[\"\u201c]([^\"\u201c\u201d]+)[\"\u201d]\s*((?:\[[^\]]*\]\s*)*)")


def extractive_quotes_ok(answer: str, cited: Mapping[int, str]) -> bool:
    """An extractive answer quotes its sources: it has at least one quoted passage, and every
    one is in the text of the source its marker names (any cited source when unmarked)."""
    quotes = _QUOTE_RE.findall(answer)
    if not quotes:
        return False
    everything = [normalise(t) for t in cited.values()]
    for passage, markers in quotes:
        wanted = normalise(passage)
        numbers_cited = [int(n) for n in re.findall(r"\d+", markers)]
        pool = [normalise(cited[n]) for n in numbers_cited if n in cited] if numbers_cited else []
        if numbers_cited and not pool:
            return False
        if not any(wanted in t for t in (pool or everything)):
            return False
    return True


@dataclass
class Scored:
    """One question asked in one phase."""

    id: str
    doc_id: str
    phase: int
    changes: bool
    status: int
    latency_ms: float
    answer: str = ""
    answer_type: str = "error"
    answer_type_reported: bool = False
    refused: bool = False
    grounded: bool | None = None
    presented_as_grounded: bool = False
    correct: bool = False
    stale: bool = False
    unsupported: list[dict[str, Any]] = field(default_factory=list)
    server_unsupported: list[str] = field(default_factory=list)
    cited: int = 0
    cited_current: int = 0
    cited_holds_fact: int = 0
    extractive_ok: bool | None = None
    old_version_sources: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def score(
    q: Question,
    phase: int,
    status: int,
    body: Mapping[str, Any] | None,
    latency_ms: float,
    versions: Mapping[str, int],
) -> Scored:
    """Score one `/v1/chat` response (see the module docstring)."""
    out = Scored(q.id, q.doc_id, phase, q.changes, status, round(latency_ms, 1))
    if status != 200 or body is None:
        out.error = json.dumps(body)[:300] if body is not None else "no body"
        return out
    answer = str(body.get("answer", ""))
    out.answer = answer
    out.refused = bool(body.get("refused"))
    reported = body.get("answer_type")
    out.answer_type_reported = isinstance(reported, str)
    if isinstance(reported, str):
        out.answer_type = reported
    else:
        out.answer_type = "refusal" if out.refused else "generated"
    if out.answer_type == "refusal":
        out.refused = True
    grounded = body.get("grounded")
    out.grounded = grounded if isinstance(grounded, bool) else None
    out.presented_as_grounded = (
        out.grounded if out.grounded is not None else not out.refused
    ) and out.answer_type != "refusal"
    out.server_unsupported = [str(s) for s in body.get("unsupported") or []]
    current, old = q.current(phase), q.old(phase)
    out.correct = contains_any(answer, current)
    out.stale = not out.correct and contains_any(answer, old)
    sources = list(body.get("sources") or [])
    citations = list(body.get("citations") or [])
    texts = [f"{s.get('title', '')}\n{s.get('text', '')}" for s in (*sources, *citations)]
    out.unsupported = unsupported_claims(answer, texts, q.question)
    out.old_version_sources = sum(
        1
        for s in (*sources, *citations)
        if s.get("doc_id") in versions and s.get("version") != versions[s["doc_id"]]
    )
    out.cited = len(citations)
    for c in citations:
        if c.get("doc_id") == q.doc_id and c.get("version") == versions.get(q.doc_id):
            out.cited_current += 1
        if contains_any(str(c.get("text", "")), current):
            out.cited_holds_fact += 1
    if out.answer_type == "extractive":
        cited: dict[int, str] = {}
        for s in (*sources, *citations):
            if isinstance(s.get("number"), int):
                cited[s["number"]] = str(s.get("text", ""))
        out.extractive_ok = extractive_quotes_ok(answer, cited)
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-q * len(ordered) // 100))
    return round(ordered[int(rank) - 1], 1)


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def summarise(rows: Sequence[Scored], phase: int) -> dict[str, Any]:
    """The per-phase figures (counts and % of the questions asked)."""
    n = len(rows)
    ok = [r for r in rows if r.ok]
    unsupported = [r for r in ok if r.unsupported]
    cited = sum(r.cited for r in ok)
    reported = [r for r in ok if r.grounded is not None]
    agree = [r for r in reported if r.grounded == (not r.unsupported)]
    changed = [r for r in ok if r.changes]
    by_type: dict[str, dict[str, Any]] = {}
    for t in sorted({r.answer_type for r in ok}, key=lambda t: (t not in ANSWER_TYPES, t)):
        sub = [r for r in ok if r.answer_type == t]
        by_type[t] = {
            "answers": len(sub),
            "correct": sum(r.correct for r in sub),
            "correct_pct": _pct(sum(r.correct for r in sub), len(sub)),
            "stale": sum(r.stale for r in sub),
            "unsupported": sum(bool(r.unsupported) for r in sub),
        }
    latencies = [r.latency_ms for r in ok]
    extractive = [r for r in ok if r.extractive_ok is not None]
    return {
        "phase": phase,
        "questions": n,
        "answered": len(ok),
        "errors": n - len(ok),
        "correct": sum(r.correct for r in ok),
        "correct_pct": _pct(sum(r.correct for r in ok), n),
        "stale": sum(r.stale for r in ok),
        "stale_pct": _pct(sum(r.stale for r in ok), n),
        "changed_questions": len(changed),
        "changed_correct": sum(r.correct for r in changed),
        "changed_stale": sum(r.stale for r in changed),
        "unsupported": len(unsupported),
        "unsupported_pct": _pct(len(unsupported), n),
        "unsupported_presented_as_grounded": sum(r.presented_as_grounded for r in unsupported),
        "stale_presented_as_grounded": sum(r.stale and r.presented_as_grounded for r in ok),
        "refusals": sum(r.refused for r in ok),
        "refusal_pct": _pct(sum(r.refused for r in ok), n),
        "citations": cited,
        "answers_with_citations": sum(r.cited > 0 for r in ok),
        "citation_precision_pct": _pct(sum(r.cited_current for r in ok), cited),
        "citation_holds_fact_pct": _pct(sum(r.cited_holds_fact for r in ok), cited),
        "old_version_sources": sum(r.old_version_sources for r in ok),
        "extractive_answers": len(extractive),
        "extractive_not_quoting_sources": sum(not r.extractive_ok for r in extractive),
        "grounded_flag_reported": len(reported),
        "grounded_flag_agreement_pct": _pct(len(agree), len(reported)),
        "server_grounded_but_unsupported": sum(1 for r in reported if r.grounded and r.unsupported),
        "server_ungrounded_but_supported": sum(
            1 for r in reported if not r.grounded and not r.unsupported and not r.refused
        ),
        "answer_type_reported": sum(r.answer_type_reported for r in ok),
        "by_answer_type": by_type,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_mean_ms": round(sum(latencies) / len(latencies), 1) if latencies else None,
    }


# --- the stack ----------------------------------------------------------------------------------


@contextlib.contextmanager
def llm_server(base_url: str | None = None) -> Iterator[str]:
    """`base_url`, else FRESHRAG_TEST_LLM_BASE_URL, else the bundled LLM (infra/llm/llm.sh)
    on a free port for the run."""
    given = base_url or os.environ.get("FRESHRAG_TEST_LLM_BASE_URL")
    if given:
        yield given.rstrip("/")
        return
    from benchmarks.ingest_throughput import free_port

    script = str(ROOT / "infra/llm/llm.sh")
    data = Path(tempfile.mkdtemp(prefix="bench-qa-llm-"))
    port = free_port()
    proc = subprocess.run(
        [script, "start", "--port", str(port), "--dir", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llm.sh start failed:\n{proc.stdout}\n{proc.stderr}")
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        subprocess.run([script, "stop", "--dir", str(data)], cwd=ROOT, timeout=90)
        shutil.rmtree(data, ignore_errors=True)


def llm_model(base_url: str) -> str | None:
    import httpx

    try:
        models = httpx.get(f"{base_url}/models", timeout=10).json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return str(models[0].get("id")) if models else None


@dataclass
class UpProcess:
    url: str
    proc: subprocess.Popen[bytes]
    startup_s: float
    log: Path

    def peak_rss_mb(self) -> float | None:
        from benchmarks.ingest_throughput import proc_status_kb

        kb = proc_status_kb(self.proc.pid, "VmHWM")
        return None if kb is None else round(kb / 1024, 1)


@contextlib.contextmanager
def up_with_llm(bootstrap: str, llm: str, ready_timeout: float = 300) -> Iterator[UpProcess]:
    """`freshrag up` on a fresh topic, Edge shard and recovery dir, answering with `llm`,
    until /readyz says 200 (benchmarks.freshness.up_server, with an LLM)."""
    import httpx

    from benchmarks.ingest_throughput import (
        base_env,
        create_topic,
        delete_topics,
        free_port,
        log_tail,
        stop_process,
    )

    topic = create_topic(bootstrap, "bench-qa", 4)
    workdir = Path(tempfile.mkdtemp(prefix="bench-qa-"))
    port = free_port()
    log = workdir / "up.log"
    env = base_env(
        bootstrap,
        topic,
        workdir,
        FRESHRAG_API_PORT=str(port),
        FRESHRAG_API_KEYS=f"{API_KEY}={TENANT}",
        FRESHRAG_OPENAI_BASE_URL=llm,
        FRESHRAG_EMBED_MAX_WAIT_MS="50",
        FRESHRAG_CONSISTENCY_TIMEOUT_S="120",
    )
    cmd = [sys.executable, "-m", "freshrag.cli", "up", "-r", str(workdir / "recovery")]
    cmd += ["-s", "0.5"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"freshrag up exited with {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() - started > ready_timeout:
                raise RuntimeError(f"freshrag up not ready in {ready_timeout} s:\n{log_tail(log)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield UpProcess(url, proc, time.monotonic() - started, log)
    finally:
        stop_process(proc)
        delete_topics(bootstrap, topic, f"{topic}.dlq")
        shutil.rmtree(workdir, ignore_errors=True)


def merge_tokens(tokens: Sequence[str]) -> str:
    """One consistency token covering all: the highest offset per partition."""
    wanted: dict[int, int] = {}
    for token in tokens:
        for part in token.split(","):
            p, _, o = part.strip().partition(":")
            wanted[int(p)] = max(int(o), wanted.get(int(p), -1))
    return ",".join(f"{p}:{o}" for p, o in sorted(wanted.items()))


class Client:
    """The API as a user calls it: writes, the token wait, chat."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 180.0) -> None:
        import httpx

        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self.http.close()

    def write(self, docs: Sequence[Document]) -> str:
        tokens = []
        for d in docs:
            r = self.http.post("/v1/documents", json={"id": d.id, "title": d.title, "text": d.text})
            if r.status_code != 202:
                raise RuntimeError(f"write {d.id}: {r.status_code} {r.text[:300]}")
            tokens.append(str(r.json()["consistency_token"]))
        return merge_tokens(tokens)

    def wait(self, token: str, timeout_s: float = 300.0) -> float:
        """Seconds until a search with the token returns (the index holds every write)."""
        started = time.perf_counter()
        while True:
            r = self.http.post(
                "/v1/search", json={"query": "wait", "top_k": 1, "consistency_token": token}
            )
            if r.status_code == 200:
                return time.perf_counter() - started
            if r.status_code not in (429, 504) or time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"token {token} not reached: {r.status_code} {r.text[:300]}")

    def versions(self, ids: Sequence[str]) -> dict[str, int]:
        out = {}
        for doc_id in ids:
            r = self.http.get(f"/v1/documents/{doc_id}")
            if r.status_code != 200:
                raise RuntimeError(f"{doc_id} not indexed: {r.status_code} {r.text[:200]}")
            out[doc_id] = int(r.json()["version"])
        return out

    def chat(
        self, question: str, token: str, top_k: int | None
    ) -> tuple[int, dict[str, Any] | None, float]:
        import httpx

        body: dict[str, Any] = {"question": question, "consistency_token": token}
        if top_k is not None:
            body["top_k"] = top_k
        started = time.perf_counter()
        try:
            r = self.http.post("/v1/chat", json=body)
        except httpx.HTTPError as exc:
            return 0, {"error": f"{type(exc).__name__}: {exc}"}, 0.0
        ms = (time.perf_counter() - started) * 1000
        try:
            parsed = r.json()
        except ValueError:
            parsed = {"error": r.text[:300]}
        return r.status_code, parsed if isinstance(parsed, dict) else None, ms


def ask_all(
    client: Client,
    data: Dataset,
    phase: int,
    token: str,
    versions: Mapping[str, int],
    top_k: int | None,
    log: Log,
) -> list[Scored]:
    rows = []
    for i, q in enumerate(data.questions, 1):
        status, body, ms = client.chat(q.question, token, top_k)
        rows.append(score(q, phase, status, body, ms, versions))
        if i % 10 == 0 or i == len(data.questions):
            done = sum(r.correct for r in rows)
            log(f"phase {phase}: {i}/{len(data.questions)} asked, {done} correct")
    return rows


def run(
    size: int | None = None,
    questions: int | None = None,
    *,
    bootstrap: str | None = None,
    llm_base_url: str | None = None,
    top_k: int | None = None,
    data_dir: Path = DATA,
    log: Log = _print,
    keep_answers: bool = True,
) -> dict[str, Any]:
    """Both phases on one fresh `freshrag up`; plain dicts (see the module docstring).
    `size`: documents (default all), `questions`: questions asked per phase (default all of
    theirs)."""
    from benchmarks.ingest_throughput import kafka_broker

    full = load(data_dir)
    problems = check_dataset(full)
    if problems:
        raise ValueError(f"the QA data set is broken: {problems[:5]}")
    data = full.select(size, questions)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(kafka_broker())
        llm = stack.enter_context(llm_server(llm_base_url))
        up = stack.enter_context(up_with_llm(bootstrap, llm))
        log(f"freshrag up ready in {up.startup_s:.1f}s; LLM {llm}")
        client = Client(up.url, API_KEY)
        stack.callback(client.close)
        ids = [d.id for d in data.documents]

        t0 = time.perf_counter()
        token1 = client.write(data.documents)
        wait1 = client.wait(token1)
        versions1 = client.versions(ids)
        log(f"phase 1: {len(ids)} documents indexed in {time.perf_counter() - t0:.1f}s")
        client.chat("What is this collection about?", token1, top_k)  # warm-up, not scored
        rows1 = ask_all(client, data, 1, token1, versions1, top_k, log)

        t0 = time.perf_counter()
        token2 = client.write(data.updates)
        wait2 = client.wait(token2)
        versions2 = client.versions(ids)
        updated = [u.id for u in data.updates]
        not_newer = [d for d in updated if versions2[d] <= versions1[d]]
        if not_newer:
            raise RuntimeError(f"updates not indexed after the token wait: {not_newer}")
        log(f"phase 2: {len(updated)} updates indexed in {time.perf_counter() - t0:.1f}s")
        rows2 = ask_all(client, data, 2, token2, versions2, top_k, log)
        peak_rss = up.peak_rss_mb()
        model = llm_model(llm)

    phases = [summarise(rows1, 1), summarise(rows2, 2)]
    result: dict[str, Any] = {
        "settings": {
            "documents": len(data.documents),
            "updated_documents": len(data.updates),
            "questions": len(data.questions),
            "changed_questions": sum(q.changes for q in data.questions),
            "top_k": top_k,
            "llm_model": model,
            "llm_base_url": llm,
            "openai_model_setting": os.environ.get("FRESHRAG_OPENAI_MODEL"),
        },
        "phases": phases,
        "phase_2_after_tokens": {
            "phase_1_token": token1,
            "phase_2_token": token2,
            "phase_1_wait_s": round(wait1, 2),
            "phase_2_wait_s": round(wait2, 2),
            "updated_versions_newer": len(updated) - len(not_newer),
        },
        "up_peak_rss_mb": peak_rss,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if keep_answers:
        result["answers"] = [{k: v for k, v in vars(r).items()} for r in (*rows1, *rows2)]
    return result


# --- report -----------------------------------------------------------------------------------

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("phase", "phase"),
    ("questions", "questions"),
    ("correct_pct", "correct %"),
    ("stale_pct", "stale %"),
    ("unsupported_pct", "unsupported %"),
    ("unsupported_presented_as_grounded", "unsupported shown as grounded"),
    ("refusal_pct", "refusals %"),
    ("citation_precision_pct", "citation precision %"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return str(v)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown(result: Mapping[str, Any]) -> str:
    s = result.get("settings", {})
    phases = result.get("phases", [])
    parts = [
        f"{s.get('documents')} documents ({s.get('updated_documents')} updated in phase 2), "
        f"{s.get('questions')} questions ({s.get('changed_questions')} whose fact changes), "
        f"LLM `{s.get('llm_model')}`, top_k {s.get('top_k') or 'default'}.\n\n",
        _table(phases, TABLE_COLUMNS),
    ]
    extra = (
        ("changed_questions", "changed facts asked"),
        ("changed_correct", "of them correct"),
        ("changed_stale", "of them stale"),
        ("stale_presented_as_grounded", "stale shown as grounded"),
        ("old_version_sources", "sources of an old version"),
        ("answers_with_citations", "answers citing"),
        ("citation_holds_fact_pct", "cited text holds the fact %"),
        ("extractive_not_quoting_sources", "extractive not quoting sources"),
        ("grounded_flag_reported", "grounded flag reported"),
        ("grounded_flag_agreement_pct", "flag agrees with check %"),
        ("errors", "HTTP errors"),
    )
    parts.append(
        "\n" + _table([{"phase": p["phase"], **p} for p in phases], (("phase", "phase"), *extra))
    )
    type_rows = [
        {"phase": p["phase"], "answer_type": t, **v}
        for p in phases
        for t, v in p.get("by_answer_type", {}).items()
    ]
    if type_rows:
        parts.append(
            "\nBy `answer_type`:\n\n"
            + _table(
                type_rows,
                (
                    ("phase", "phase"),
                    ("answer_type", "answer_type"),
                    ("answers", "answers"),
                    ("correct_pct", "correct %"),
                    ("stale", "stale"),
                    ("unsupported", "unsupported"),
                ),
            )
        )
    return "".join(parts)


def headline(result: Mapping[str, Any]) -> dict[str, float]:
    """The summary row of `make bench`: figures that are positive when the section worked
    (zero rates, such as the stale and unsupported targets, are in the section's table)."""
    out: dict[str, float] = {}
    for p in result.get("phases", []):
        n = p["phase"]
        for key, label in (
            ("answered", "answers"),
            ("correct_pct", "correct %"),
            ("citation_precision_pct", "citation precision %"),
            ("latency_p50_ms", "chat p50 ms"),
            ("latency_p99_ms", "chat p99 ms"),
        ):
            value = p.get(key)
            if isinstance(value, int | float) and value > 0:
                out[f"phase {n} {label}"] = value
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="documents (default: all)")
    ap.add_argument("--questions", type=int, default=None, help="questions (default: all)")
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the result (with answers)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    result = run(args.size, args.questions, top_k=args.top_k)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
