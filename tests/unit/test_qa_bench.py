"""The freshness QA benchmark's data set and scoring (pure): what the data promises, and how an
answer is judged correct, stale, unsupported or a faithful extract."""

from __future__ import annotations

from typing import Any

from benchmarks import qa
from hypothesis import given
from hypothesis import strategies as st


def test_shipped_data_set_holds_its_promises() -> None:
    data = qa.load()
    assert qa.check_dataset(data) == []
    assert len(data.documents) >= 44
    assert len(data.updates) * 2 >= len(data.documents) and len(data.updates) >= 22
    assert len(data.questions) >= 88
    changed = [q for q in data.questions if q.changes]
    assert len({q.doc_id for q in changed}) == len(data.updates)
    kinds = {"number": 0, "name": 0}
    for q in data.questions:
        kinds["number" if any(c.isdigit() for c in q.answer[0]) else "name"] += 1
    assert min(kinds.values()) >= 20, kinds


def test_check_dataset_catches_a_shared_fact_and_a_leftover_old_fact() -> None:
    data = qa.load()
    a, b = data.documents[0], data.documents[1]
    q = next(q for q in data.questions if q.doc_id == a.id and q.changes)
    leak = qa.Document(b.id, b.title, f"{b.text} It also mentions {q.answer[0]}.")
    stale = next(u for u in data.updates if u.id == a.id)
    stale = qa.Document(stale.id, stale.title, f"{stale.text} Formerly {q.answer[0]}.")
    broken = qa.Dataset(
        (a, leak, *data.documents[2:]),
        tuple(stale if u.id == a.id else u for u in data.updates),
        data.questions,
    )
    problems = qa.check_dataset(broken)
    assert any("also in another document" in p and q.id in p for p in problems), problems
    assert any("still holds the old fact" in p and q.id in p for p in problems), problems


def test_select_keeps_half_updated_and_questions_round_robin() -> None:
    data = qa.load()
    for size, n in ((6, 12), (8, 16), (24, 48)):
        sub = data.select(size, n)
        assert len(sub.documents) == size and len(sub.questions) == n
        assert len(sub.updates) == size // 2
        assert {q.doc_id for q in sub.questions} == {d.id for d in sub.documents}
        assert any(q.changes for q in sub.questions)
    assert len(data.select(4, 3).questions) == 3
    assert data.select() == data


@given(st.integers(min_value=1, max_value=10**7))
def test_a_number_matches_whole_not_inside_another(n: int) -> None:
    assert qa.contains_form(f"It takes {n} minutes [1].", str(n))
    assert qa.contains_form(f"It takes {n:,} minutes.", f"{n} minutes")
    assert not qa.contains_form(f"It takes {n}1 minutes.", str(n))
    assert not qa.contains_form(f"It takes 1{n} minutes.", str(n))
    assert not qa.contains_form(f"It takes {n}.5 minutes.", str(n))


def test_forms_normalise_case_blanks_and_separators() -> None:
    assert qa.contains_form("Sold 18,600  TICKETS.", "18600 tickets")
    assert qa.contains_form("sold 18\u202f600 tickets", "18600")
    assert qa.contains_form("Launched on October 9th, 2022.", "October 9")
    assert qa.contains_form("Designed by ILSA varnov", "Ilsa Varnov")
    assert not qa.contains_form("Brandhorn", "Brand")
    assert not qa.contains_form("0.47 km", "47")
    assert qa.contains_form("the 47-minute flight", "47")


def test_unsupported_claims_are_numbers_and_names_in_no_source() -> None:
    sources = ["Kestrel K7\nThe Kestrel K7 flies for 47 minutes. Its designer is Ilsa Varnov."]
    question = "How long can the Kestrel K7 fly?"
    assert (
        qa.unsupported_claims("The Kestrel K7 flies for 47 minutes [1].", sources, question) == []
    )
    assert qa.unsupported_claims("It was designed by Ilsa Varnov.", sources, question) == []
    made_up = qa.unsupported_claims(
        "The K7 flies for 7.1 minutes [1]. Its designer is Ilsa Petrov. Yes.", sources, question
    )
    assert made_up == [
        {"sentence": "The K7 flies for 7.1 minutes.", "claims": ["7.1"]},
        {"sentence": "Its designer is Ilsa Petrov.", "claims": ["Petrov"]},
    ]
    # thousands separators and trailing zeros are the same number; question words are given
    assert qa.unsupported_claims("It costs 2890 euros, 9.5 each.", ["2,890 euros; 9.50"]) == []
    assert qa.unsupported_claims("Ask Zora Quint.", [], "Who is Zora Quint?") == []
    assert qa.unsupported_claims(qa_refusal(), []) == []


def qa_refusal() -> str:
    return "The indexed sources do not cover this question."


def test_extractive_answer_must_quote_the_cited_source() -> None:
    cited = {1: "Intro. On a full battery the K7 flies for 47 minutes. More.", 2: "Other text."}
    good = '"On a full battery the K7 flies for 47 minutes." [1]'
    assert qa.extractive_quotes_ok(good, cited)
    assert not qa.extractive_quotes_ok(
        '"On a full battery the K7 flies for 48 minutes." [1]', cited
    )
    assert not qa.extractive_quotes_ok(
        '"On a full battery the K7 flies for 47 minutes." [2]', cited
    )
    assert not qa.extractive_quotes_ok("The K7 flies for 47 minutes.", cited)
    assert not qa.extractive_quotes_ok('"Intro." [7]', cited)


def test_merge_tokens_keeps_the_highest_offset_per_partition() -> None:
    assert qa.merge_tokens(["0:5", "1:3,0:9", "2:1", "1:2"]) == "0:9,1:3,2:1"


def _body(answer: str, **extra: Any) -> dict[str, Any]:
    source = {
        "number": 1,
        "doc_id": "qa-kestrel-k7",
        "version": 7,
        "title": "Kestrel K7",
        "text": "The K7 flies for 53 minutes. Its lead designer is Ilsa Varnov.",
    }
    return {"answer": answer, "citations": [source], "sources": [source], "refused": False, **extra}


def test_score_judges_current_stale_and_grounded_presentation() -> None:
    q = next(q for q in qa.load().questions if q.id == "kestrel-k7-1")
    versions = {"qa-kestrel-k7": 7}
    right = qa.score(q, 2, 200, _body("It flies 53 minutes [1].", grounded=True), 10.0, versions)
    assert right.correct and not right.stale and not right.unsupported
    assert right.cited_current == right.cited == 1 and right.old_version_sources == 0
    old = qa.score(q, 2, 200, _body("It flies 47 minutes [1].", grounded=True), 10.0, versions)
    assert old.stale and not old.correct and old.presented_as_grounded
    assert old.unsupported == [{"sentence": "It flies 47 minutes.", "claims": ["47"]}]
    # before the update, 47 is the current fact, never stale
    assert not qa.score(q, 1, 200, _body("47 minutes"), 1.0, versions).stale
    # no grounded flag: an answer that is not a refusal is presented as grounded
    assert qa.score(q, 2, 200, _body("47 minutes"), 1.0, versions).presented_as_grounded
    flagged = qa.score(q, 2, 200, _body("47 min", grounded=False, answer_type="raw"), 1, versions)
    assert not flagged.presented_as_grounded and flagged.answer_type == "raw"
    behind = qa.score(q, 2, 200, _body("53 minutes"), 1.0, {"qa-kestrel-k7": 8})
    assert behind.cited_current == 0 and behind.old_version_sources == 2
    failed = qa.score(q, 2, 503, {"error": {"type": "upstream_unavailable"}}, 1.0, versions)
    assert not failed.ok and failed.answer_type == "error"


def test_summary_counts_each_guarantee() -> None:
    q = next(q for q in qa.load().questions if q.id == "kestrel-k7-1")
    versions = {"qa-kestrel-k7": 7}
    rows = [
        qa.score(q, 2, 200, _body("53 minutes [1].", grounded=True), 100.0, versions),
        qa.score(q, 2, 200, _body("47 minutes [1].", grounded=True), 300.0, versions),
        qa.score(
            q,
            2,
            200,
            _body('"The K7 flies for 53 minutes." [1]', grounded=True, answer_type="extractive"),
            200.0,
            versions,
        ),
    ]
    s = qa.summarise(rows, 2)
    assert (s["correct"], s["stale"], s["unsupported"]) == (2, 1, 1)
    assert s["unsupported_presented_as_grounded"] == 1 and s["stale_presented_as_grounded"] == 1
    assert s["citation_precision_pct"] == 100.0 and s["extractive_not_quoting_sources"] == 0
    assert s["by_answer_type"]["extractive"]["correct"] == 1
    assert s["grounded_flag_agreement_pct"] == 66.7
    assert (s["latency_p50_ms"], s["latency_p99_ms"]) == (200.0, 300.0)
    assert qa.headline({"phases": [s]})["phase 2 correct %"] == 66.7
    assert "| 2 | 3 | 66.7 | 33.3 |" in qa.markdown({"settings": {}, "phases": [s]})
