"""Hybrid search end to end: real embedder, real BM25, both store backends.

Documents go in through the ingest path (DocumentIndexer + apply_writes) and come out through
HybridSearcher.search, the function the API and the evaluation call.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.events import RecordOrigin, Upsert
from freshrag.ingest.index_writer import apply_writes
from freshrag.ingest.indexing import ChunkingConfig, DocumentIndexer
from freshrag.retrieve.contract import SearchFilter, Store
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.search import MAX_TOP_K, HybridSearcher, SearchRequest
from freshrag.retrieve.server_store import QdrantServerStore

pytestmark = pytest.mark.integration

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ORIGIN = RecordOrigin("documents", 0, 0, 0)

ONBOARDING = """# First day

Collect your badge at the front desk and meet your buddy, who shows you around.
Your laptop is waiting at the IT counter on the second floor.

# First week

Finish the mandatory security awareness course and the data protection module.
Book a one-to-one with your manager to agree on goals for the probation period.

# First month

Shadow two customer calls, present a short demo to your team, and write down every
question you had so we can improve this checklist for the next new hire.
"""

# (doc_id, title, team, days old, text)
DOCS: list[tuple[str, str, str, int, str]] = [
    (
        "kb-refund",
        "Refund policy",
        "billing",
        40,
        "Customers can request a refund within 30 days of purchase. Refunds are paid back to "
        "the original payment method within five business days after approval.",
    ),
    (
        "kb-password",
        "Resetting your password",
        "it",
        10,
        "If you forgot your password, click 'Forgot password' on the sign-in page and follow "
        "the link we email you. The link expires after one hour.",
    ),
    (
        "kb-shipping",
        "International shipping",
        "logistics",
        100,
        "We ship parcels to 40 countries. Customs duties and import taxes are paid by the "
        "recipient. Delivery abroad usually takes seven to ten days.",
    ),
    (
        "kb-coffee",
        "Office kitchen",
        "facilities",
        300,
        "The espresso machine on floor three is a ZX-81 model. Descale it every Friday with "
        "the blue tablets stored in the left cupboard.",
    ),
    (
        "kb-vacation",
        "Annual leave",
        "hr",
        5,
        "Employees get 28 days of paid holiday per year. Submit leave requests in the HR "
        "portal at least two weeks before your time off.",
    ),
    (
        "kb-ratelimit",
        "API rate limits",
        "platform",
        2,
        "Each API key may send 600 requests per minute. Above that the API answers with HTTP "
        "429 Too Many Requests and a Retry-After header.",
    ),
    (
        "kb-2fa",
        "Two-factor authentication",
        "it",
        60,
        "Protect your account with a second factor: an authenticator app generates a six-digit "
        "code that you enter after your password.",
    ),
    (
        "kb-invoice",
        "Downloading invoices",
        "billing",
        20,
        "Invoices for every order are available as PDF under Account > Billing. Company "
        "details and VAT numbers can be edited before an invoice is issued.",
    ),
    ("kb-onboarding", "New hire onboarding checklist", "hr", 15, ONBOARDING),
    (
        "kb-parking",
        "Parking garage",
        "facilities",
        400,
        "Staff may park in levels minus one and minus two of the garage. Electric cars can "
        "charge at the spots next to the elevator.",
    ),
]


def upsert(
    tenant: str,
    doc_id: str,
    title: str,
    text: str,
    updated_at: datetime,
    metadata: dict[str, Any] | None = None,
    version: int = 1,
) -> Upsert:
    return Upsert(
        tenant=tenant,
        doc_id=doc_id,
        version=version,
        title=title,
        text=text,
        updated_at=updated_at,
        origin=ORIGIN,
        url=f"https://kb.example.com/{doc_id}",
        source="test",
        metadata=metadata or {},
    )


def corpus_events() -> list[Upsert]:
    events = [
        upsert("acme", doc, title, text, NOW - timedelta(days=age), {"team": team, "lang": "en"})
        for doc, title, team, age, text in DOCS
    ]
    # Tenant globex: an identical copy of acme's refund doc (same vectors!) and its own doc.
    doc, title, team, _age, text = DOCS[0]
    events.append(upsert("globex", doc, title, text, NOW, {"team": team}))
    events.append(
        upsert(
            "globex",
            "gx-secret",
            "Globex merger plan",
            "Confidential: Globex will acquire the Initech paper company in the third quarter.",
            NOW,
            {"team": "board"},
        )
    )
    # Tenant fresh: near-duplicates; the old one is worded closer to the query used below.
    events.append(
        upsert(
            "fresh",
            "refund-2023",
            "Refund window for annual subscriptions",
            "Refund window for annual subscriptions: you can get a refund for an annual "
            "subscription within 14 days.",
            datetime(2023, 1, 10, tzinfo=UTC),
        )
    )
    events.append(
        upsert(
            "fresh",
            "refund-2025",
            "Annual plan refunds",
            "Annual plans can be refunded within 30 days of purchase, counted from the renewal.",
            NOW - timedelta(hours=1),
        )
    )
    return events


@pytest.fixture(scope="module", params=["edge", "server"])
def indexed(
    request: pytest.FixtureRequest, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, HybridSearcher]]:
    """The corpus indexed through the ingest path into one backend, plus a searcher on it."""
    store: Store
    if request.param == "edge":
        store = EdgeStore(Path(tmp_path_factory.mktemp("edge")), collection="search_test")
    else:
        store = QdrantServerStore(QdrantClient(":memory:"), collection="search_test")
    store.ensure_collection()
    bm25 = Bm25Encoder()
    # Small chunks so the onboarding checklist spans several chunks (dedupe/group cases).
    indexer = DocumentIndexer(embedder, bm25, ChunkingConfig(max_tokens=48, overlap=8))
    result = indexer.process(corpus_events())
    assert not result.dead_letters
    apply_writes(store, result.writes)
    searcher = HybridSearcher(store, embedder, bm25, clock=lambda: NOW)
    try:
        yield store, searcher
    finally:
        store.close()


def search(searcher: HybridSearcher, query: str, tenant: str = "acme", **kw: Any) -> list[str]:
    flt = kw.pop("filter", None) or SearchFilter(tenant=tenant)
    kw.setdefault("dedupe", True)
    return searcher.search(SearchRequest(query=query, filter=flt, **kw)).doc_ids


def test_onboarding_spans_several_chunks(indexed: tuple[Store, HybridSearcher]) -> None:
    store, _ = indexed
    status = store.document_status("acme", "kb-onboarding")
    assert status is not None and status.chunk_count >= 3


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how do I get my money back for something I bought?", "kb-refund"),
        ("I can't log in because I don't remember my login secret", "kb-password"),
        ("how many vacation days do staff have?", "kb-vacation"),
        ("sending a package to another country", "kb-shipping"),
    ],
)
def test_semantic_queries_find_the_right_document(
    indexed: tuple[Store, HybridSearcher], query: str, expected: str, mode: str
) -> None:
    _, searcher = indexed
    assert search(searcher, query, mode=mode)[0] == expected


@pytest.mark.parametrize("mode", ["hybrid", "bm25"])
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ZX-81 descaling", "kb-coffee"),
        ("HTTP 429 Retry-After", "kb-ratelimit"),
        ("VAT numbers PDF", "kb-invoice"),
    ],
)
def test_keyword_queries_find_the_right_document(
    indexed: tuple[Store, HybridSearcher], query: str, expected: str, mode: str
) -> None:
    _, searcher = indexed
    assert search(searcher, query, mode=mode)[0] == expected


def test_hits_carry_what_a_citation_needs(indexed: tuple[Store, HybridSearcher]) -> None:
    _, searcher = indexed
    result = searcher.search(
        SearchRequest("refund within 30 days", SearchFilter("acme"), top_k=3, dedupe=True)
    )
    top = result.hits[0]
    assert top.doc_id == "kb-refund"
    assert top.title == "Refund policy"
    assert top.url == "https://kb.example.com/kb-refund"
    assert top.version == 1
    assert top.updated_at == NOW - timedelta(days=40)
    assert top.chunk_index == 0 and top.chunk_count == 1
    assert "30 days" in top.text
    assert top.metadata == {"team": "billing", "lang": "en"}
    assert top.score > result.hits[1].score
    assert result.candidates >= 3


def test_dedupe_and_group_collapse_a_multi_chunk_document(
    indexed: tuple[Store, HybridSearcher],
) -> None:
    _, searcher = indexed
    query = "new hire onboarding checklist: badge, laptop, security course, manager goals"
    flt = SearchFilter("acme")
    chunks = searcher.search(SearchRequest(query, flt, top_k=5)).doc_ids
    assert chunks[:2] == ["kb-onboarding", "kb-onboarding"]  # raw chunks: several of one doc
    deduped = searcher.search(SearchRequest(query, flt, top_k=5, dedupe=True)).doc_ids
    assert deduped[0] == "kb-onboarding" and len(deduped) == len(set(deduped)) == 5
    grouped = searcher.search(SearchRequest(query, flt, top_k=3, group=True))
    assert grouped.groups is not None and len(grouped.groups) == 3
    first = grouped.groups[0]
    assert first.doc_id == "kb-onboarding" and len(first.hits) >= 2
    assert [h.score for h in first.hits] == sorted((h.score for h in first.hits), reverse=True)
    assert grouped.doc_ids == [g.doc_id for g in grouped.groups]


def test_freshness_boost_prefers_the_newer_near_duplicate(
    indexed: tuple[Store, HybridSearcher],
) -> None:
    _, searcher = indexed
    query = "refund window for annual subscriptions"
    for mode in ("hybrid", "dense"):
        plain = search(searcher, query, "fresh", mode=mode)
        assert plain == ["refund-2023", "refund-2025"], mode  # relevance order
        boosted = search(searcher, query, "fresh", mode=mode, fresh=True)
        assert boosted == ["refund-2025", "refund-2023"], mode
    # Raw BM25 scores differ a lot here (the old text repeats the query), and the boost is
    # bounded (at most x0.7), so it must not override a clear relevance gap.
    assert search(searcher, query, "fresh", mode="bm25", fresh=True) == [
        "refund-2023",
        "refund-2025",
    ]
    # A very long half-life makes both documents "fresh": relevance wins again.
    assert search(searcher, query, "fresh", fresh=True, half_life_hours=1e9) == [
        "refund-2023",
        "refund-2025",
    ]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_tenant_isolation(indexed: tuple[Store, HybridSearcher], mode: str) -> None:
    _, searcher = indexed
    for query in ("Globex merger plan to acquire Initech", "refund within 30 days"):
        result = searcher.search(
            SearchRequest(query, SearchFilter("acme"), top_k=MAX_TOP_K, mode=mode)  # type: ignore[arg-type]
        )
        assert "gx-secret" not in result.doc_ids
        if mode != "bm25" or "refund" in query:  # BM25 finds nothing without shared terms
            assert result.hits
    globex = searcher.search(
        SearchRequest("refund within 30 days", SearchFilter("globex"), top_k=50, mode=mode)  # type: ignore[arg-type]
    )
    assert set(globex.doc_ids) <= {"gx-secret", "kb-refund"}
    assert globex.doc_ids[0] == "kb-refund"
    # Same doc id and identical vectors in both tenants: each tenant sees only its own point.
    acme = searcher.search(SearchRequest("refund within 30 days", SearchFilter("acme"), top_k=1))
    assert acme.hits[0].doc_id == globex.hits[0].doc_id == "kb-refund"
    assert acme.hits[0].point_id != globex.hits[0].point_id
    assert acme.hits[0].updated_at == NOW - timedelta(days=40)
    assert globex.hits[0].updated_at == NOW
    assert search(searcher, "Initech acquisition", "nobody", mode=mode) == []


def test_metadata_filters(indexed: tuple[Store, HybridSearcher]) -> None:
    _, searcher = indexed
    billing = SearchFilter("acme", metadata_equals={"team": "billing"})
    assert set(search(searcher, "password reset", filter=billing, top_k=20)) == {
        "kb-refund",
        "kb-invoice",
    }
    people = SearchFilter("acme", metadata_any={"team": ["hr", "facilities"]})
    found = search(searcher, "where do I park my car?", filter=people, top_k=20)
    assert found[0] == "kb-parking"
    assert set(found) == {"kb-vacation", "kb-onboarding", "kb-coffee", "kb-parking"}
    nothing = SearchFilter("acme", metadata_equals={"team": "billing", "lang": "de"})
    assert search(searcher, "refund", filter=nothing) == []


def test_doc_id_filter(indexed: tuple[Store, HybridSearcher]) -> None:
    _, searcher = indexed
    flt = SearchFilter("acme", doc_ids=["kb-parking", "kb-2fa"])
    assert search(searcher, "refund within 30 days", filter=flt, top_k=10, mode="hybrid") in (
        ["kb-parking", "kb-2fa"],
        ["kb-2fa", "kb-parking"],
    )
    assert search(searcher, "authenticator app code", filter=flt)[0] == "kb-2fa"


def test_updated_at_range_filter(indexed: tuple[Store, HybridSearcher]) -> None:
    _, searcher = indexed
    recent = SearchFilter("acme", updated_after=NOW - timedelta(days=12))
    assert set(search(searcher, "policy", filter=recent, top_k=20)) == {
        "kb-password",
        "kb-vacation",
        "kb-ratelimit",
    }
    window = SearchFilter(
        "acme", updated_after=NOW - timedelta(days=45), updated_before=NOW - timedelta(days=18)
    )
    assert set(search(searcher, "policy", filter=window, top_k=20)) == {"kb-refund", "kb-invoice"}
    old = SearchFilter("acme", updated_before=NOW - timedelta(days=200))
    assert search(searcher, "where is the coffee machine?", filter=old, top_k=20) == [
        "kb-coffee",
        "kb-parking",
    ]


def test_top_k_is_bounded(indexed: tuple[Store, HybridSearcher]) -> None:
    _, searcher = indexed
    for bad in (0, -1, MAX_TOP_K + 1):
        with pytest.raises(ValueError, match=f"top_k must be between 1 and {MAX_TOP_K}"):
            SearchRequest("refund", SearchFilter("acme"), top_k=bad)
    with pytest.raises(ValueError, match="mode"):
        SearchRequest("refund", SearchFilter("acme"), mode="vector")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        SearchRequest("   ", SearchFilter("acme"))
    result = searcher.search(SearchRequest("refund", SearchFilter("acme"), top_k=MAX_TOP_K))
    assert 0 < len(result.hits) <= MAX_TOP_K
    assert len(searcher.search(SearchRequest("refund", SearchFilter("acme"), top_k=2)).hits) == 2
