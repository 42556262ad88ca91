"""GET /v1/freshness, provenance on hits and answers, and the web page's freshness panel, on
real components: Kafka, the ingest flow, the bundled embedder, Qdrant Edge and the LLM.

The done-when check: documents produced at a steady rate are polled for in /v1/search exactly
as benchmarks/freshness.py does (its Tracker and PacedProducer), and the API's own percentiles
must lie within the client's poll resolution of what the client measured.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from benchmarks import freshness as bench

from freshrag.api.app import create_app
from freshrag.api.auth import Caller
from freshrag.api.freshness import freshness_report
from freshrag.api.services import Services, build_services
from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.runner import WatermarkPublisher
from freshrag.ingest.searchable import BUCKET_RATIO, freshness_channel
from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import ROOT, free_port
from tests.integration.harness import ApiServer, RunningFlow, launch_chromium, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.llm]

KEY = bench.API_KEY  # tenant bench.TENANT: the benchmark's Tracker polls with this key
KEY_B = "key-freshness-tenant-b-0123456789"
A = {"Authorization": f"Bearer {KEY}"}
B = {"Authorization": f"Bearer {KEY_B}"}
SENTINEL = {"0": 10**12, "1": 10**12}  # a watermark no real retrieval can have read
# Allowed distance, beyond the client's bounds, between an event's client-measured latency
# and the flow's own figure: the flow takes its clock once a whole batch is written, so an
# event may be searchable (and seen) a little before its figure is taken; and ms timestamps.
BATCH_SLACK_S = 0.25


@dataclass
class Stack:
    settings: Settings
    store: EdgeStore
    flow: RunningFlow
    local: Services  # the flow's window in this process (as under `freshrag up`)
    published: Services  # only what the store holds (as `freshrag serve` beside `ingest`)
    url: str
    published_url: str
    flip: dict[str, bool]

    def http(self, url: str | None = None, key: dict[str, str] = A) -> httpx.Client:
        return httpx.Client(base_url=url or self.url, headers=key, timeout=120)


class FlippingAnswerer:
    """The real answerer; from the LLM call on, the index reports a watermark no retrieval saw,
    so an answer that shows it read the watermark after retrieval."""

    def __init__(self, inner: Any, flip: dict[str, bool]) -> None:
        self._inner, self._flip = inner, flip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def answer(self, *args: Any, **kwargs: Any) -> Any:
        self._flip["on"] = True
        return self._inner.answer(*args, **kwargs)

    def stream_answer(self, *args: Any, **kwargs: Any) -> Any:
        self._flip["on"] = True
        yield from self._inner.stream_answer(*args, **kwargs)


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, llm_base_url: str, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    from confluent_kafka.admin import AdminClient, NewTopic

    tmp = tmp_path_factory.mktemp("freshness")
    topic = f"fresh-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})  # kept until created
    admin.create_topics([NewTopic(topic, 2)])[topic].result(30)
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        openai_base_url=llm_base_url,
        api_keys={KEY: bench.TENANT, KEY_B: "tenant-b"},
        embed_max_wait_ms=50,
        metrics_port=0,
        llm_max_retries=0,
        chat_max_tokens=48,
    )
    store = EdgeStore(tmp / "index", settings.collection)
    store.ensure_collection()
    flow = RunningFlow(settings, store, embedder)
    flip = {"on": False}
    snapshot = flow.parts.watermarks.snapshot

    def watermarks() -> dict[str, int]:
        return dict(SENTINEL) if flip["on"] else snapshot()

    local = build_services(settings, store=store, embedder=embedder, watermarks=watermarks)
    local.searchable = flow.metrics.searchable
    local.answerer = FlippingAnswerer(local.answerer, flip)  # type: ignore[assignment]
    published = build_services(settings, store=store, embedder=embedder)
    publishers = [
        WatermarkPublisher(store, topic, snapshot),
        WatermarkPublisher(
            store,
            freshness_channel(topic),
            lambda: flow.metrics.searchable.channel_snapshot(time.time()),
        ),
    ]
    for p in publishers:
        p.start()
    with (
        flow,
        ApiServer(create_app(settings, local), free_port()) as server,
        ApiServer(create_app(settings, published), free_port()) as second,
    ):
        yield Stack(settings, store, flow, local, published, server.url, second.url, flip)
    for p in publishers:
        p.stop()
    local.close()
    published.close()
    store.close()


def freshness(client: httpx.Client, **params: Any) -> dict[str, Any]:
    r = client.get("/v1/freshness", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_api_percentiles_match_the_benchmarks_measured_freshness(stack: Stack) -> None:
    """N documents at a steady rate, polled for in /v1/search like benchmarks/freshness.py:
    for every event the client knows its latency lies between the last search that missed it
    and the first that showed it. The API's figure per event lies in the same bounds (give or
    take BATCH_SLACK_S), so its percentiles lie between the bounds' percentiles."""
    docs = bench.DocFactory()
    producer = bench.PacedProducer(stack.settings.kafka_bootstrap, stack.settings.topic)
    tracker = bench.Tracker(stack.url, visible_timeout_s=60, poll_interval_s=0.05).start()
    try:
        bench.warm_up(None, producer, tracker, docs)  # type: ignore[arg-type]
        assert tracker.outstanding() == 0, "warm-up documents never became visible"
        started = time.time()
        probes = producer.paced(tracker, docs, rate=3, duration_s=8, size=600)
        tracker.wait_drained(70)
    finally:
        tracker.stop()
    assert producer.failed == [] and tracker.errors == []
    assert all(p.seen_at is not None for p in probes), "a probe never became visible"
    upper = sorted((p.seen_at - p.produced_at) for p in probes if p.seen_at is not None)
    lower = sorted(
        (p.last_miss_sent - p.produced_at) if p.last_miss_sent is not None else 0.0 for p in probes
    )
    time.sleep(0.3)  # the flow observes a write right after it is searchable
    with stack.http() as http:  # only this phase's writes (the warm-up was written before)
        f = freshness(http, window_s=time.time() - started)
    assert f["latency_source"] == "in_process" and f["tenant"] == bench.TENANT
    lat = f["latency"]
    assert lat["count"] == len(probes), (lat, len(probes))  # only this phase's writes
    n = len(probes)
    for q, key in ((0.5, "p50_s"), (0.99, "p99_s")):
        rank = max(1, math.ceil(q * n)) - 1  # nearest rank, as the API computes it
        lo, hi = lower[rank] - BATCH_SLACK_S, upper[rank] + BATCH_SLACK_S
        assert lo <= lat[key] <= hi, (key, lat[key], lo, hi, lat)
    # the client cannot see a write before the flow wrote it: only the slack lets it be lower
    assert lat["p50_s"] <= upper[n // 2] + BATCH_SLACK_S
    print(
        f"\nclient p50 {upper[(n - 1) // 2]:.3f}s (lower bound {lower[(n - 1) // 2]:.3f}s), "
        f"API p50 {lat['p50_s']:.3f}s; client p99 {upper[-1]:.3f}s, API p99 {lat['p99_s']:.3f}s"
    )
    # per partition figures add up to the tenant's
    assert sum(p["latency"]["count"] for p in f["partitions"]) == lat["count"]

    # caught up: no lag, the watermark at the end of each partition, the newest write recent
    def caught_up() -> bool:
        with stack.http() as http:
            g = freshness(http)
        return bool(g["lag_records"] == 0)

    def show() -> object:
        with stack.http() as http:
            return freshness(http)

    wait_for(caught_up, timeout=30, what="lag 0", show=show)
    with stack.http() as http:
        g = freshness(http)
    assert g["lag_error"] is None and g["lag_seconds"] == 0.0
    assert {p["partition"] for p in g["partitions"]} == {0, 1}
    for p in g["partitions"]:
        assert p["watermark"] == p["end_offset"] and p["lag_records"] == 0
    assert sum(p["end_offset"] for p in g["partitions"]) >= len(probes) + 3
    assert g["newest_indexed_age_s"] is not None and 0 <= g["newest_indexed_age_s"] < 60

    # a `freshrag serve` replica reads the window the ingest side publishes through the store:
    # the same samples, percentiles within half a log bucket
    full = g["latency"]

    def published_all() -> bool:
        with stack.http(stack.published_url) as http:
            return bool(freshness(http)["latency"]["count"] == full["count"])

    wait_for(published_all, timeout=30, what="the published window")
    with stack.http(stack.published_url) as http:
        h = freshness(http)
    assert h["latency_source"] == "published"
    tolerance = BUCKET_RATIO**0.5
    for key in ("p50_s", "p90_s", "p99_s"):
        assert full[key] / tolerance <= h["latency"][key] <= full[key] * tolerance, (key, h, full)
    assert h["newest_indexed_at"] is not None
    assert h["lag_records"] == 0 and h["partitions"][0]["watermark"] is not None


def test_tenants_see_only_their_own_latency_and_the_global_lag(stack: Stack) -> None:
    with stack.http() as http:
        w = http.post("/v1/documents", json={"id": "iso-a", "title": "A", "text": "alpha doc"})
        assert w.status_code == 202
        token = w.json()["consistency_token"]
        r = http.post("/v1/search", json={"query": "alpha", "consistency_token": token})
        r.raise_for_status()
        mine = freshness(http)
    with stack.http(key=B) as http:
        theirs = freshness(http)
    assert mine["latency"]["count"] >= 1 and mine["newest_indexed_at"] is not None
    assert theirs["tenant"] == "tenant-b"
    assert theirs["latency"]["count"] == 0 and theirs["newest_indexed_at"] is None
    assert all(p["latency"]["count"] == 0 for p in theirs["partitions"])
    # the watermarks and lags are the shared topic's: the same rows for both
    assert [p["partition"] for p in theirs["partitions"]] == [0, 1]
    with httpx.Client(base_url=stack.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/freshness").status_code == 401


def test_lag_counts_and_ages_records_above_the_watermark(stack: Stack) -> None:
    """With the watermark held at 0 the lag is the whole topic, and its age is the first
    record's; an unreachable broker gives null lags and a reason within the time bound."""
    started = time.time()
    with stack.http() as http:
        w = http.post("/v1/documents", json={"id": "lag-1", "title": "L", "text": "lag doc"})
        assert w.status_code == 202
    caller = Caller(bench.TENANT, authenticated=True)
    behind = replace(stack.local, watermarks=lambda: {"0": 0, "1": 0})
    report = freshness_report(behind, caller)
    assert report.lag_error is None
    ends = {p.partition: p.end_offset for p in report.partitions}
    assert report.lag_records == sum(e or 0 for e in ends.values()) > 0
    assert report.lag_seconds is not None
    # the oldest record is older than this test and not older than the module's first write
    assert report.lag_seconds >= time.time() - started - 0.5
    assert report.lag_seconds < 600
    for p in report.partitions:
        if p.lag_records:
            assert p.lag_seconds is not None and p.lag_seconds > 0

    dead = stack.settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    unreachable = replace(stack.local, settings=dead)
    t0 = time.monotonic()
    report = freshness_report(unreachable, caller)
    first = time.monotonic() - t0
    t0 = time.monotonic()
    again = freshness_report(unreachable, caller)
    cached = time.monotonic() - t0
    assert first < 5 and cached < 0.5, (first, cached)  # bounded, then remembered
    assert report.lag_records is None and report.lag_seconds is None
    assert report.lag_error and again.lag_error
    assert all(p.end_offset is None and p.lag_records is None for p in report.partitions)
    assert report.latency.count >= 1  # what needs no Kafka is still reported
    anonymous = freshness_report(unreachable, Caller(bench.TENANT, authenticated=False))
    assert anonymous.lag_error == "Kafka did not answer"  # no upstream address


def test_metrics_show_lag_and_latency(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        text = http.get("/metrics").text
    topic = stack.settings.topic
    for line in (
        f'freshrag_consumer_lag_records{{partition="0",topic="{topic}"}}',
        f'freshrag_consumer_lag_seconds{{partition="1",topic="{topic}"}}',
        f'freshrag_indexed_watermark{{partition="0",topic="{topic}"}}',
        'freshrag_searchable_latency_window_seconds{quantile="0.99"}',
        "freshrag_searchable_latency_window_records ",
    ):
        assert line in text, line
    assert bench.TENANT not in text  # /metrics names no tenant


def test_hits_and_answers_carry_provenance_and_the_retrieval_watermark(stack: Stack) -> None:
    http = stack.http()
    w = http.post(
        "/v1/documents",
        json={
            "id": "prov-lighthouse",
            "title": "Lighthouse keeper log",
            "text": "The Korrin lighthouse lamp was replaced in March by keeper Odile Brann.",
        },
    ).json()
    token = w["consistency_token"]
    r = http.post(
        "/v1/search",
        json={"query": "Korrin lighthouse lamp", "top_k": 1, "consistency_token": token},
    )
    assert r.status_code == 200, r.text
    (hit,) = r.json()["hits"]
    assert hit["doc_id"] == "prov-lighthouse"
    assert hit["source_position"] == {
        "topic": w["topic"],
        "partition": w["partition"],
        "offset": w["offset"],
    }
    assert hit["indexed_at"] is not None
    index = r.json()["index"]
    assert index["retrieved_at"] is not None
    assert index["watermark"][str(w["partition"])] > w["offset"]  # the write was visible

    provenance: list[dict[str, Any]] = []

    def check_answer(body: dict[str, Any]) -> None:
        assert body["index"]["watermark"] != SENTINEL, "watermark read after the LLM call"
        assert body["index"]["watermark"][str(w["partition"])] > w["offset"]
        assert body["index"]["retrieved_at"] is not None
        for item in [*body["sources"], *body["citations"]]:
            assert item["indexed_at"] is not None and item["source_position"] is not None
            if item["doc_id"] == "prov-lighthouse":
                assert item["source_position"] == hit["source_position"]
                provenance.append(item)

    question = "Who replaced the Korrin lighthouse lamp?"
    try:
        r = http.post("/v1/chat", json={"question": question, "consistency_token": token})
        assert r.status_code == 200, r.text
        assert stack.flip["on"], "the answerer was not called"
        check_answer(r.json())
        stack.flip["on"] = False

        done: dict[str, Any] = {}
        with http.stream(
            "POST", "/v1/chat", json={"question": question, "stream": True}
        ) as response:
            assert response.status_code == 200
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "done":
                    done = json.loads(line[6:])
        check_answer(done)
        stack.flip["on"] = False

        r = http.post(
            "/v1/chat/completions",
            json={"model": "freshrag", "messages": [{"role": "user", "content": question}]},
        )
        assert r.status_code == 200, r.text
        check_answer(r.json())
        assert provenance, "no answer used the document (every one refused?)"
    finally:
        stack.flip["on"] = False
        http.close()


ARTIFACTS = ROOT / "tests" / "artifacts"


def test_web_page_shows_the_freshness_panel(stack: Stack) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(stack.url + "/")
        expect(page.locator("#freshNote")).to_contain_text("enter an API key", timeout=15_000)
        page.fill("#apiKey", KEY)
        page.click("#saveKey")
        page.fill("#docId", "panel-doc")
        page.fill("#docTitle", "Panel check")
        page.fill("#docText", "The freshness panel shows lag, newest write age and p99.")
        page.click("#saveDoc")
        expect(page.locator("#docStatus")).to_contain_text("indexed", timeout=60_000)
        # real figures: a lag in records and seconds, a newest-write age, p50 / p99 of writes
        expect(page.locator("#freshLag")).to_have_text(
            _regex(r"^\d+ records · (\d+ ms|[\d.]+ s|\d+ min)$"), timeout=15_000
        )
        expect(page.locator("#freshNewest")).to_have_text(
            _regex(r"^(\d+ ms|[\d.]+ s|\d+ min) ago$"), timeout=15_000
        )
        expect(page.locator("#freshP99")).to_have_text(
            _regex(r"^(\d+ ms|[\d.]+ s) / (\d+ ms|[\d.]+ s)$"), timeout=15_000
        )
        count = int(page.locator("#freshP99").get_attribute("data-count") or "0")
        with stack.http() as http:
            api = freshness(http)
        assert 1 <= count <= api["latency"]["count"]
        page.screenshot(path=str(ARTIFACTS / "web-freshness-panel.png"), full_page=True)
        browser.close()


def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
