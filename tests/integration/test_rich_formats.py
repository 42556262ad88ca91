"""Rich formats at the door (`content_type`) on real Kafka, the real flow and embedder, a real
Qdrant Edge store and the real API: bad content types reach the DLQ with a reason (or a 4xx
from the API), and an HTML document is searchable by its text and never by its scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.kafka_io import dlq_topic_config, ensure_topics
from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import free_port
from tests.integration.harness import (
    ApiServer,
    RunningFlow,
    index_state,
    produce,
    read_topic,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PAGE = """<!doctype html><html><head><title>Kettle manual</title>
<style>.x { content: "zebraglyph" }</style>
<script>var tracker = "quokkasignal"; function track() { return "quokkasignal"; }</script>
</head><body>
<header><a href="/">Appliance Store</a></header>
<nav><ul><li><a href="/toasters">Toasters menu pelicanlink</a></li></ul></nav>
<main>
<h1>Kettle manual</h1>
<p>Fill the kettle with water up to the maximum line before switching it on.</p>
<h2>Descaling</h2>
<p>Descale the kettle every month with citric acid &amp; warm water to remove limescale.</p>
<script>document.write("quokkasignal descaling")</script>
<div hidden>Hidden note marmotsecret about descaling</div>
</main>
<footer>Copyright Appliance Store, footer walrusnote</footer>
</body></html>"""


def make_settings(kafka_bootstrap: str, make_topic: Any, **extra: Any) -> Settings:
    topic = make_topic("formats", partitions=1)
    s = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_batch_size=16,
        embed_max_wait_ms=50,
        metrics_port=0,
        **extra,
    )
    ensure_topics(
        kafka_bootstrap,
        [(s.dlq_topic, 1)],
        configs={s.dlq_topic: dlq_topic_config(s.dlq_max_message_bytes)},
    )
    return s


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    s = EdgeStore(tmp_path / "index", "freshrag")
    s.ensure_collection()
    yield s
    s.close()


def record(doc_id: str, text: str, **extra: Any) -> tuple[bytes, bytes]:
    body = {"op": "upsert", "id": doc_id, "text": text, **extra}
    return doc_id.encode(), json.dumps(body).encode()


def test_bad_content_types_go_to_the_dlq_and_good_formats_are_indexed_converted(
    kafka_bootstrap: str, make_topic: Any, store: EdgeStore, embedder: Any
) -> None:
    s = make_settings(kafka_bootstrap, make_topic)
    bad = [
        (record("pdf", "%PDF-1.7 ...", content_type="application/pdf"), "UnsupportedContentType"),
        (record("empty-type", "hello", content_type=""), "UnsupportedContentType"),
        (record("int-type", "hello", content_type=3), "WrongType"),
        (record("only-script", "<script>x()</script>", content_type="text/html"), "EmptyText"),
        (record("deep", "<div>" * 2000 + "x", content_type="text/html"), "HtmlTooDeep"),
        (
            (
                b"row-9",
                json.dumps(
                    {"op": "c", "after": {"id": 9, "text": "a", "content_type": "image/png"}}
                ).encode(),
            ),
            "UnsupportedContentType",
        ),
    ]
    good = [
        record("html", PAGE, content_type="text/html; charset=utf-8"),
        record(
            "plain", "# not a heading\nJust plain text about kettles.", content_type="TEXT/PLAIN"
        ),
        record("md", "# Kettles\n\nMarkdown about kettles.", content_type="text/markdown"),
        record("none", "# Kettles\n\nNo content type at all."),
        (
            b"row-7",
            json.dumps(
                {
                    "op": "r",
                    "after": {
                        "id": 7,
                        "text": "<h2>Row</h2><p>Kettle row.</p>",
                        "content_type": "text/html",
                    },
                }
            ).encode(),
        ),
    ]
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, (rec, _) in enumerate(bad):  # each bad record between good ones
        records.append(rec)
        if i < len(good):
            records.append(good[i])
    with RunningFlow(s, store, embedder) as flow:
        produce(s.kafka_bootstrap, s.topic, records, partition=0)
        dlq = read_topic(s.kafka_bootstrap, s.dlq_topic, expected=len(bad), timeout=120)
        wanted = {"html", "plain", "md", "none", "7"}
        wait_for(
            lambda: {d for _, d in index_state(store)} == wanted,
            what="the good documents indexed",
            show=lambda: (sorted(d for _, d in index_state(store)), flow.error),
        )
        assert flow.error is None
    assert len(dlq) == len(bad), [m.key() for m in dlq]
    by_key = {m.key(): m for m in dlq}
    for (key, value), error_class in bad:
        headers = dict(by_key[key].headers())
        assert headers["freshrag.error.class"].decode() == error_class, (key, headers)
        assert headers["freshrag.error.step"] == b"parse"
        assert by_key[key].value() == value  # the original bytes, for a replay once fixed
    message = dict(by_key[b"pdf"].headers())["freshrag.error.message"].decode()
    assert "application/pdf" in message and "text/html" in message

    chunks: dict[str, list[dict[str, Any]]] = {}
    for p in store.scroll_payloads("default"):
        chunks.setdefault(p["doc_id"], []).append(p)
    html_text = "\n".join(c["text"] for c in sorted(chunks["html"], key=lambda c: c["chunk_index"]))
    assert "citric acid & warm water" in html_text
    for junk in ("quokkasignal", "zebraglyph", "pelicanlink", "marmotsecret", "walrusnote", "<"):
        assert junk not in html_text, junk
    assert {c["heading"] for c in chunks["html"]} == {"Kettle manual", "Kettle manual > Descaling"}
    assert all(c["metadata"] == {"content_type": "text/html"} for c in chunks["html"])
    assert chunks["plain"][0]["heading"] == ""  # plain text is not split on '#'
    assert chunks["plain"][0]["metadata"] == {"content_type": "text/plain"}
    assert chunks["md"][0]["heading"] == "Kettles"
    assert chunks["none"][0]["metadata"] == {}
    assert chunks["7"][0]["heading"] == "Row"
    assert chunks["7"][0]["metadata"]["content_type"] == "text/html"


def test_api_takes_html_refuses_bad_content_types_and_search_never_sees_scripts(
    kafka_bootstrap: str, make_topic: Any, store: EdgeStore, embedder: Any
) -> None:
    from freshrag.api.app import create_app
    from freshrag.api.services import build_services

    key = "key-formats-0123456789"
    s = make_settings(
        kafka_bootstrap,
        make_topic,
        api_keys={key: "acme"},
        openai_base_url="http://127.0.0.1:9/v1",  # no LLM needed here
    )
    auth = {"Authorization": f"Bearer {key}"}
    refused: list[tuple[dict[str, Any], str]] = [
        ({"id": "pdf", "text": "x", "content_type": "application/pdf"}, "content_type"),
        ({"id": "blank", "text": "x", "content_type": ""}, "content_type"),
        ({"id": "int", "text": "x", "content_type": 5}, "content_type"),
        ({"id": "long", "text": "x", "content_type": "text/html;" + "x" * 300}, "content_type"),
        ({"id": "script", "text": "<script>a()</script>", "content_type": "text/html"}, "text"),
        ({"id": "deep", "text": "<b>" * 1000, "content_type": "text/html"}, "text"),
    ]
    flow = RunningFlow(s, store, embedder)
    services = build_services(s, store=store, embedder=embedder)
    app = create_app(s, services)
    try:
        with (
            flow,
            ApiServer(app, free_port()) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            for body, field in refused:
                r = http.post("/v1/documents", headers=auth, json=body)
                assert r.status_code == 422, (body["id"], r.status_code, r.text[:300])
                assert field in r.text, r.text[:300]
            ok = http.post(
                "/v1/documents",
                headers=auth,
                json={"id": "kettle", "title": "Kettle", "text": PAGE, "content_type": "text/html"},
            )
            assert ok.status_code == 202, ok.text
            wait_for(lambda: ("acme", "kettle") in index_state(store), what="the HTML document")

            def search(query: str, mode: str = "hybrid") -> list[dict[str, Any]]:
                r = http.post(
                    "/v1/search",
                    headers=auth,
                    json={"query": query, "mode": mode},
                )
                assert r.status_code == 200, r.text
                hits: list[dict[str, Any]] = r.json()["hits"]
                return hits

            hits = search("how often to descale the kettle with citric acid")
            assert hits and hits[0]["doc_id"] == "kettle"
            assert "citric acid & warm water" in hits[0]["text"]
            assert hits[0]["heading"] == "Kettle manual > Descaling"
            assert hits[0]["metadata"] == {"content_type": "text/html"}
            for junk in ("quokkasignal", "zebraglyph", "pelicanlink", "walrusnote"):
                assert search(junk, mode="bm25") == [], junk  # the words are nowhere in the index
                assert all(junk not in h["text"] for h in search(junk)), junk
            assert flow.error is None
        assert set(index_state(store)) == {("acme", "kettle")}
    finally:
        services.close()
