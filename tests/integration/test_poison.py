"""Poison records on real Kafka, the real embedder and a real Qdrant Edge store.

Each poison (NaN, huge numbers, deep or huge metadata, a key that breaks filter paths, a lone
surrogate, an almost-1 MB event just over the limit) must end in the DLQ with a reason, while
the flow stays up and the documents around it are indexed. Before parse-time validation these
either killed the flow in the store sink, or (the 1 MB one) in the DLQ producer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.dlq import ORIGINAL_SIZE_HEADER, TRUNCATED_HEADER
from freshrag.ingest.events import RawRecord, RecordOrigin, Upsert, parse_record
from freshrag.ingest.kafka_io import dlq_topic_config, ensure_topics
from freshrag.retrieve.contract import DENSE_DIM, ChunkPoint, SearchFilter, SparseVector
from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import free_port
from tests.integration.harness import (
    ApiServer,
    RunningFlow,
    index_state,
    read_topic,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def make_settings(kafka_bootstrap: str, make_topic: Any, **extra: Any) -> Settings:
    topic = make_topic("poison", partitions=1)
    s = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_batch_size=16,
        embed_max_wait_ms=50,
        metrics_port=0,
        **extra,
    )
    # the DLQ topic as `freshrag ingest` creates it: max.message.bytes set to the producer's limit
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


def produce_raw(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Produce with a 2 MB client limit, so records near the broker's 1 MB limit get through."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "message.max.bytes": 2_000_000}
    )
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=0)
        producer.poll(0)
    assert producer.flush(30) == 0


def upsert(doc_id: str, text: str, **extra: Any) -> tuple[bytes, bytes]:
    body = {"op": "upsert", "id": doc_id, "text": text, **extra}
    return doc_id.encode(), json.dumps(body).encode()


def raw_upsert(doc_id: str, tail: str) -> tuple[bytes, bytes]:
    """An upsert whose JSON text ends with `tail` verbatim (NaN literals, surrogate escapes)."""
    return doc_id.encode(), f'{{"op":"upsert","id":"{doc_id}","text":"poison",{tail}}}'.encode()


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def assert_flow_alive(flow: RunningFlow) -> None:
    assert flow.error is None, f"the flow died: {flow.error!r}"
    assert flow._thread.is_alive(), "the flow thread stopped"


def test_poison_records_go_to_the_dlq_and_the_flow_stays_up(
    kafka_bootstrap: str, make_topic: Any, store: EdgeStore, embedder: Any
) -> None:
    s = make_settings(kafka_bootstrap, make_topic)
    limit = s.max_document_bytes
    near_limit = "x" * (limit - 40)  # the event around it takes it just over the limit
    poison: list[tuple[tuple[bytes, bytes], str]] = [
        (raw_upsert("p-nan", '"metadata":{"x":NaN}'), "NonFiniteNumber"),
        (raw_upsert("p-inf-list", '"metadata":{"x":[1,-Infinity]}'), "NonFiniteNumber"),
        (raw_upsert("p-float-overflow", '"version":1e400'), "NonFiniteNumber"),
        (upsert("p-huge-int", "poison", metadata={"n": 2**70}), "NumberOutOfRange"),
        (upsert("p-int64-plus-1", "poison", metadata={"n": [1, 2**63]}), "NumberOutOfRange"),
        (upsert("p-huge-version", "poison", version=2**53 + 1), "NumberOutOfRange"),
        (raw_upsert("p-huge-literal", '"version":' + "9" * 5000), "NumberOutOfRange"),
        (upsert("p-deep", "poison", metadata={"k": deep(200)}), "WrongType"),
        (
            upsert("p-many-keys", "poison", metadata={f"k{i}": i for i in range(65)}),
            "MetadataTooLarge",
        ),
        (upsert("p-long-value", "poison", metadata={"k": "v" * 2049}), "MetadataTooLarge"),
        (
            upsert("p-huge-meta", "poison", metadata={f"k{i}": "é" * 2000 for i in range(5)}),
            "MetadataTooLarge",
        ),
        (upsert("p-key-bracket", "poison", metadata={'a["b': 1}), "InvalidMetadataKey"),
        (upsert("p-key-dot", "poison", metadata={"a.b": 1}), "InvalidMetadataKey"),
        (raw_upsert("p-surrogate", '"title":"a\\ud800b"'), "InvalidUnicode"),
        (upsert("p-near-1mb", near_limit), "DocumentTooLarge"),
    ]
    good = [upsert(f"good{i}", f"Good document {i} about rivers and lakes.") for i in range(8)]
    edge_good = [
        upsert("rtl-nul", "a\x00b \u202eevil\u202c shalom עברית", metadata={"lang": "he"}),
        upsert("emoji", "Rivers 😀 and lakes", metadata={"tags": ["a", "b"], "n": 2**63 - 1}),
    ]
    records: list[tuple[bytes, bytes]] = []
    for i, (record, _) in enumerate(poison):  # each poison between good documents
        records.append(record)
        if i < len(good):
            records.append(good[i])
    records += edge_good
    assert len(poison[-1][0][1]) > limit  # just over the limit, and near the DLQ's 1 MB limit
    assert len(poison[-1][0][1]) + 500 > s.dlq_max_message_bytes

    with RunningFlow(s, store, embedder) as flow:
        produce_raw(s.kafka_bootstrap, s.topic, records)
        dlq = read_topic(s.kafka_bootstrap, s.dlq_topic, expected=len(poison), timeout=120)
        expected_docs = {d.decode() for d, _ in good + edge_good}
        wait_for(
            lambda: {d for _, d in index_state(store)} == expected_docs,
            what="good documents indexed",
            show=lambda: (sorted(d for _, d in index_state(store)), flow.error),
        )
        assert_flow_alive(flow)
        # still up: a document sent after all the poison is indexed too
        produce_raw(s.kafka_bootstrap, s.topic, [upsert("after", "Written after the poison.")])
        wait_for(lambda: ("default", "after") in index_state(store), what="late document")
        assert_flow_alive(flow)

    assert len(dlq) == len(poison), [m.key() for m in dlq]
    by_key = {m.key(): m for m in dlq}
    for (key, value), error_class in poison:
        msg = by_key[key]
        headers = dict(msg.headers())
        assert headers["freshrag.error.class"].decode() == error_class, (key, headers)
        assert headers["freshrag.error.step"] == b"parse"
        assert headers["freshrag.error.message"].strip()
        if key == b"p-near-1mb":  # truncated to fit the DLQ producer's limit, and marked so
            assert headers[TRUNCATED_HEADER] == b"true"
            assert int(headers[ORIGINAL_SIZE_HEADER]) == len(value)
            assert value.startswith(msg.value()) and len(msg.value()) < len(value)
        else:
            assert msg.value() == value and TRUNCATED_HEADER not in headers
    payloads = {p["doc_id"]: p for p in store.scroll_payloads("default")}
    assert payloads["rtl-nul"]["text"].startswith("a\x00b \u202eevil")
    assert payloads["emoji"]["metadata"] == {"tags": ["a", "b"], "n": 2**63 - 1}


# -- hypothesis-generated malformed events through the real flow ------------------------------

NOT_KEY_CHARS = st.characters(
    exclude_categories=["Cs", "Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No"],
    exclude_characters="_-",
)


@st.composite
def malformed(draw: st.DrawFn, doc_id: str) -> tuple[bytes, bytes]:
    """One event with exactly one thing the index cannot take (or no valid event at all)."""
    kind = draw(st.sampled_from(range(10)))
    head = f'{{"op":"upsert","id":"{doc_id}","text":"malformed"'
    key = doc_id.encode()
    if kind == 0:
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e309", "-2e400"]))
        where = draw(st.sampled_from(['"metadata":{"x":%s}', '"metadata":{"x":[0,%s]}']))
        return key, f"{head},{where % literal}}}".encode()
    if kind == 1:
        n = draw(st.one_of(st.integers(2**63, 2**200), st.integers(-(2**200), -(2**63) - 1)))
        return key, f'{head},"metadata":{{"n":{n}}}}}'.encode()
    if kind == 2:
        bad = draw(st.text(NOT_KEY_CHARS, min_size=1, max_size=5))
        name = draw(st.text("abc", max_size=3)) + bad
        return key, json.dumps(
            {"op": "upsert", "id": doc_id, "text": "m", "metadata": {name: 1}}
        ).encode()
    if kind == 3:
        depth = draw(st.integers(2, 400))
        nested: Any = 1
        for _ in range(depth):
            nested = [nested] if draw(st.booleans()) else {"a": nested}
        meta: dict[str, Any] = {"k": nested} if isinstance(nested, dict) else {"k": [nested]}
        return key, json.dumps(
            {"op": "upsert", "id": doc_id, "text": "m", "metadata": meta}
        ).encode()
    if kind == 4:
        size = draw(st.sampled_from(["keys", "string", "list", "total"]))
        meta = {  # type: ignore[assignment]
            "keys": {f"k{i}": i for i in range(65)},
            "string": {"k": "s" * 2_049},
            "list": {"k": list(range(257))},
            "total": {f"k{i}": "t" * 2_000 for i in range(9)},
        }[size]
        return key, json.dumps(
            {"op": "upsert", "id": doc_id, "text": "m", "metadata": meta}
        ).encode()
    if kind == 5:
        field = draw(st.sampled_from(["text", "title", "source", "url"]))
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "a\\udc00"]))
        body = {"op": "upsert", "id": doc_id, "text": "m", field: "m@@"}
        return key, json.dumps(body).replace("@@", escape).encode()
    if kind == 6:
        return key, b"\xff" + draw(st.binary(max_size=50))
    if kind == 7:
        text = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none()))
        return key, json.dumps({"op": "upsert", "id": doc_id, "text": text}).encode()
    if kind == 8:
        return key, json.dumps(draw(st.one_of(st.lists(st.integers()), st.text()))).encode()
    version = draw(st.one_of(st.integers(2**53 + 1, 2**64), st.integers(max_value=-1)))
    return key, json.dumps({"op": "upsert", "id": doc_id, "text": "m", "version": version}).encode()


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[bool, tuple[bytes, bytes]]]:
    n_bad = draw(st.integers(20, 30))
    bad = [(False, draw(malformed(f"bad{i}"))) for i in range(n_bad)]
    good = [
        (
            True,
            (f"ok{i}".encode(), json.dumps({"op": "upsert", "id": f"ok{i}", "text": t}).encode()),
        )
        for i, t in enumerate(
            draw(
                st.lists(
                    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60).map(
                        lambda t: f"Note: {t}"
                    ),
                    min_size=6,
                    max_size=10,
                )
            )
        )
    ]
    return draw(st.permutations(bad + good))


@settings(
    max_examples=2,
    derandomize=True,
    deadline=None,
    phases=[Phase.generate],  # no shrinking: each example runs the real flow
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=batches())
def test_generated_malformed_events_all_reach_the_dlq_and_no_good_event_is_lost(
    kafka_bootstrap: str,
    make_topic: Any,
    tmp_path_factory: pytest.TempPathFactory,
    embedder: Any,
    batch: Any,
) -> None:
    s = make_settings(kafka_bootstrap, make_topic)
    store = EdgeStore(tmp_path_factory.mktemp("fuzz") / "index", "freshrag")
    store.ensure_collection()
    records = [r for _, r in batch]
    bad_keys = {r[0] for ok, r in batch if not ok}
    good_keys = {r[0].decode() for ok, r in batch if ok}
    try:
        with RunningFlow(s, store, embedder) as flow:
            produce_raw(s.kafka_bootstrap, s.topic, records)
            dlq = read_topic(s.kafka_bootstrap, s.dlq_topic, expected=len(bad_keys), timeout=90)
            wait_for(
                lambda: {d for _, d in index_state(store)} == good_keys,
                what="every good event indexed",
                show=lambda: (sorted(d for _, d in index_state(store)), flow.error),
            )
            assert_flow_alive(flow)
        assert {m.key() for m in dlq} == bad_keys
        for m in dlq:
            headers = dict(m.headers())
            assert headers["freshrag.error.class"] and headers["freshrag.error.message"].strip()
            assert headers["freshrag.error.step"] == b"parse"
    finally:
        store.close()


# -- every upsert parse_record lets through can be written to a real Edge shard ----------------

EDGE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(st.one_of(st.characters(), st.sampled_from(["\ud800", "\x00", "."])), max_size=8),
)
EDGE_VALUES = st.one_of(
    EDGE_SCALARS,
    st.lists(EDGE_SCALARS, max_size=4),
    st.recursive(  # deep payloads: Qdrant writes them, then cannot read the shard any more
        EDGE_SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3), inner, max_size=2)
        ),
        max_leaves=200,
    ),
)
EDGE_KEYS = st.one_of(st.text(max_size=6), st.sampled_from(["a.b", 'a["b', "a b", "é", "k-1"]))


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStore]:
    s = EdgeStore(tmp_path_factory.mktemp("edge") / "index", "c")
    s.ensure_collection()
    yield s
    s.close()


@settings(max_examples=100, derandomize=True, deadline=None)
@given(
    meta=st.dictionaries(EDGE_KEYS, EDGE_VALUES, max_size=5),
    version=st.integers(0, 2**64),
    ascii_only=st.booleans(),
)
def test_accepted_upserts_are_writable_to_a_real_edge_shard(
    shard: EdgeStore, meta: dict[str, Any], version: int, ascii_only: bool
) -> None:
    """Each upsert parse_record accepts is written to a real shard and read back intact."""
    doc_id = f"d{next(COUNTER)}"
    body = {"op": "upsert", "id": doc_id, "text": "t", "metadata": meta, "version": version}
    raw = json.dumps(body, allow_nan=True, ensure_ascii=ascii_only)
    event = parse_record(RawRecord(b"d", raw.encode("utf-8", "surrogatepass"), ORIGIN))
    if not isinstance(event, Upsert):
        return
    point = ChunkPoint(
        event.tenant, event.doc_id, event.version, 0, 1, event.text, event.title, event.url,
        event.source, event.updated_at, datetime.now(UTC), event.metadata, [0.1] * DENSE_DIM,
        SparseVector([1], [1.0]),
    )  # fmt: skip
    shard.upsert_chunks([point])
    back = shard.scroll_payloads("default")  # a too deep payload breaks this read for good
    mine = [p for p in back if p["doc_id"] == doc_id]
    assert len(mine) == 1 and mine[0]["metadata"] == dict(event.metadata)
    assert mine[0]["version"] == event.version
    for key, value in event.metadata.items():  # and each key works as a filter path
        probe = value[0] if isinstance(value, list) and value else value
        if isinstance(probe, str | int) and not isinstance(probe, bool):  # Edge: bools never match
            flt = SearchFilter("default", metadata_equals={key: probe}, doc_ids=[doc_id])
            hits = shard.query_dense([0.1] * DENSE_DIM, flt, 1)
            assert [h.doc_id for h in hits] == [doc_id], (key, probe)


COUNTER = itertools.count()
ORIGIN = RecordOrigin("t", 0, 0, 1)


# -- the API refuses what the flow would dead-letter -------------------------------------------


def test_api_refuses_poison_documents_and_the_flow_stays_up(
    kafka_bootstrap: str, make_topic: Any, store: EdgeStore, embedder: Any
) -> None:
    from freshrag.api.app import create_app
    from freshrag.api.services import build_services

    key = "key-poison-0123456789"
    s = make_settings(
        kafka_bootstrap,
        make_topic,
        api_keys={key: "acme"},
        openai_base_url="http://127.0.0.1:9/v1",  # no LLM needed here
    )
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies: list[tuple[str, int]] = [
        ('{"id":"nanmeta","text":"hello","metadata":{"x":NaN}}', 422),
        ('{"id":"infmeta","text":"hello","metadata":{"x":[1, Infinity]}}', 422),
        ('{"id":"overflow","text":"hello","metadata":{"x":1e400}}', 422),
        ('{"id":"huge","text":"hello","metadata":{"x":' + str(2**70) + "}}", 422),
        ('{"id":"bigver","text":"hello","version":' + str(2**53 + 1) + "}", 422),
        ('{"id":"key","text":"hello","metadata":{"a[\\"b":1}}', 422),
        ('{"id":"dot","text":"hello","metadata":{"a.b":1}}', 422),
        ('{"id":"deep","text":"hello","metadata":{"k":' + json.dumps(deep(150)) + "}}", 422),
        (json.dumps({"id": "long", "text": "hello", "metadata": {"k": "v" * 2049}}), 422),
        (
            json.dumps(
                {"id": "total", "text": "hi", "metadata": {f"k{i}": "é" * 2000 for i in range(5)}}
            ),
            422,
        ),
        ('{"id":"sur","text":"hello \\ud800"}', 422),
        ('{"id":"sur-id\\udfff","text":"hello"}', 422),
        (json.dumps({"id": "near-1mb", "text": "x" * (s.max_document_bytes - 10)}), 413),
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
            for body, status in bodies:
                r = http.post("/v1/documents", headers=auth, content=body.encode())
                assert r.status_code == status, (body[:80], r.status_code, r.text[:300])
            ok = http.post(
                "/v1/documents",
                headers=auth,
                json={"id": "fine", "text": "Lakes and rivers.", "metadata": {"lang": "en"}},
            )
            assert ok.status_code == 202, ok.text
            wait_for(lambda: ("acme", "fine") in index_state(store), what="good document")
            assert_flow_alive(flow)
        assert set(index_state(store)) == {("acme", "fine")}
    finally:
        services.close()
