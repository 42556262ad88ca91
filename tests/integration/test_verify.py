"""`freshrag verify [--repair]` on real parts: the real `freshrag ingest` process indexes a topic
on real Kafka into an Edge index, the index is then corrupted behind its back, and the real CLI
must name every corruption in its category; `--repair` replays those keys, the restarted ingest
(resuming from its recovery snapshot, so its version gate remembers every document) applies
them, and verify is clean with the index exactly as it was before the corruption.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from freshrag.core.settings import load_settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.events import delete_event, upsert_event
from freshrag.ingest.producer import EventProducer
from freshrag.retrieve.contract import ChunkPoint, Store
from freshrag.retrieve.stores import open_serving_store, open_settings_store
from tests.integration.harness import IngestCli, end_offsets, produce, verify_cli

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 2


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i % 97} lorem{i % 13}" for i in range(n))


def contents(store: Store) -> dict[tuple[str, str], list[tuple[int, int, int, str, str]]]:
    """(tenant, doc) -> its points as (chunk_index, chunk_count, version, title, text)."""
    out: dict[tuple[str, str], list[tuple[int, int, int, str, str]]] = {}
    for p in store.scroll_payloads():
        row = (p["chunk_index"], p["chunk_count"], p["version"], p["title"], p["text"])
        out.setdefault((p["tenant"], p["doc_id"]), []).append(row)
    return {k: sorted(v) for k, v in out.items()}


def categories(report: dict[str, Any]) -> dict[str, set[str]]:
    return {
        c: {f"{d['tenant']}/{d['doc_id']}" for d in report["examples"][c]}
        for c in ("missing", "stale", "deleted")
    }


def points(
    embedder: Any, tenant: str, doc: str, version: int, texts: list[str]
) -> list[ChunkPoint]:
    """Chunk points written straight to the store, as a buggy or older writer would."""
    now = datetime.now(UTC)
    dense = embedder.embed_documents(texts)
    sparse = Bm25Encoder().embed_documents(texts)
    return [
        ChunkPoint(
            tenant=tenant,
            doc_id=doc,
            version=version,
            chunk_index=i,
            chunk_count=len(texts),
            text=text,
            title=f"{doc} v{version}",
            url=None,
            source=None,
            updated_at=now,
            indexed_at=now,
            metadata={},
            dense=dense[i],
            sparse=sparse[i],
            offset=0,
            partition=0,
        )
        for i, text in enumerate(texts)
    ]


def ingest_until_caught_up(bootstrap: str, topic: str, work: Path) -> None:
    proc = IngestCli(bootstrap, topic, work, "-r", str(work / "recovery"), "-s", "1")
    try:
        proc.wait_caught_up(end_offsets(bootstrap, topic, PARTITIONS), timeout=300)
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        if proc.alive:
            proc.kill()


@pytest.mark.timeout(900)
def test_verify_finds_every_corruption_and_repair_fixes_it(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, embedder: Any
) -> None:
    topic = make_topic("verify", partitions=PARTITIONS)
    long = words("w", 420)  # several chunks at the default 200 tokens
    events = [
        upsert_event("keep", long, tenant="acme", title="keep", version=1),
        upsert_event("gone", "a document whose points are dropped", title="gone", version=1),
        upsert_event("partial", words("p", 420), tenant="acme", title="partial", version=2),
        upsert_event("old", "the first version of old", title="old", version=1),
        upsert_event("old", "the second version of old, the one to keep", title="old", version=2),
        upsert_event("removed", "deleted at the source", tenant="acme", version=1),
        delete_event("removed", tenant="acme", version=2),
        upsert_event("vless", "a document versioned by its record timestamp", title="vless"),
    ]
    producer = EventProducer(kafka_bootstrap, topic)
    try:
        producer.send_many(events)
    finally:
        producer.close()
    produce(kafka_bootstrap, topic, [(b"junk", b"{not json")])  # skipped and counted
    work = tmp_path / "ingest"
    index = work / "index"
    ingest_until_caught_up(kafka_bootstrap, topic, work)

    code, report = verify_cli(kafka_bootstrap, topic, index)
    assert code == 0 and report["clean"], report
    assert report["bad_records"] == 1 and report["records"] == len(events) + 1

    settings = load_settings(kafka_bootstrap=kafka_bootstrap, topic=topic, index_path=index)
    store = open_serving_store(settings)
    try:
        before = contents(store)
        assert len(before[("acme", "partial")]) >= 2 and ("acme", "removed") not in before
        store.delete_document("default", "gone")  # all its points lost
        store.delete_document("default", "vless")
        partial = len(before[("acme", "partial")])
        store.delete_versions_below("acme", "partial", 2, keep_chunks=partial - 1)  # last chunk
        store.delete_document("default", "old")  # v2 replaced by a full v1
        store.upsert_chunks(points(embedder, "default", "old", 1, ["the first version of old"]))
        store.upsert_chunks(points(embedder, "acme", "removed", 1, ["deleted at the source"]))
        store.upsert_chunks(points(embedder, "ghost", "never", 3, ["no event ever named me"]))
    finally:
        store.close()

    code, report = verify_cli(kafka_bootstrap, topic, index)
    assert code == 1 and not report["clean"]
    assert categories(report) == {
        "missing": {"default/gone", "default/vless"},
        "stale": {"acme/partial", "default/old"},
        "deleted": {"acme/removed", "ghost/never"},
    }, report
    assert report["counts"] == {"missing": 2, "stale": 2, "deleted": 2, "in_flight": 0}
    reasons = {d["doc_id"]: d["reason"] for d in report["examples"]["stale"]}
    assert "older version 1" in reasons["old"] and "incomplete" in reasons["partial"]

    code, repaired = verify_cli(kafka_bootstrap, topic, index, "--tenant", "acme")
    assert code == 1 and categories(repaired) == {
        "missing": set(),
        "stale": {"acme/partial"},
        "deleted": {"acme/removed"},
    }

    code, repaired = verify_cli(kafka_bootstrap, topic, index, "--repair")
    assert code == 1
    replayed = {f"{r['tenant']}/{r['doc_id']}": r["events"] for r in repaired["replayed"]}
    assert replayed == {
        "default/gone": ["upsert"],
        "default/vless": ["upsert"],
        "acme/partial": ["upsert"],
        "default/old": ["upsert"],
        "acme/removed": ["delete"],
        "ghost/never": ["delete"],
    }

    ingest_until_caught_up(kafka_bootstrap, topic, work)  # resumes from its snapshot
    code, report = verify_cli(kafka_bootstrap, topic, index)
    assert code == 0 and report["clean"], report
    store = open_serving_store(settings)
    try:
        after = contents(store)
    finally:
        store.close()
    assert after == before


def test_verify_exits_2_and_says_why_when_the_topic_does_not_exist(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from freshrag.cli import app

    env = {
        "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHRAG_TOPIC": f"never-created-{tmp_path.name}",
        "FRESHRAG_INDEX_PATH": str(tmp_path / "index"),
    }
    result = CliRunner().invoke(app, ["verify"], env=env)
    assert result.exit_code == 2, result.output
    assert "cannot read topic" in result.output and "never-created" in result.output


@pytest.mark.timeout(900)
def test_verify_next_to_a_live_ingest_counts_unfinished_work_as_in_flight_never_as_drift(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, qdrant_server: tuple[str, str | None]
) -> None:
    """Events stream in while the real ingest writes to a real Qdrant server and verify runs
    beside it, again and again: whatever the ingest has not finished yet is in flight, and no
    run reports drift. Once the ingest has caught up, verify is clean with nothing in flight."""
    import random
    import threading
    import uuid

    url, key = qdrant_server
    server = {"FRESHRAG_QDRANT_URL": url, "FRESHRAG_COLLECTION": f"verify_{uuid.uuid4().hex[:8]}"}
    if key:
        server["FRESHRAG_QDRANT_API_KEY"] = key
    topic = make_topic("verify-live", partitions=PARTITIONS)
    work = tmp_path / "ingest"
    rng = random.Random(15)
    docs = [f"doc-{i}" for i in range(40)]
    version = dict.fromkeys(docs, 0)

    hot = docs[:10]  # the stream changes these only: the others must be compared, and match

    def change(among: list[str] = docs) -> dict[str, Any]:
        doc = rng.choice(among)
        tenant = "acme" if docs.index(doc) % 2 else None
        draw = rng.random()
        if draw < 0.15 and version[doc]:
            return delete_event(doc, tenant=tenant, version=version[doc])
        if draw < 0.2:
            return delete_event(doc, tenant=tenant)  # version-less: a re-create may follow
        version[doc] += 1
        size = 420 if draw > 0.9 else 12  # now and then a document of several chunks
        return upsert_event(
            doc, words(f"{doc}v{version[doc]}x", size), tenant=tenant, version=version[doc]
        )

    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        qdrant_url=url,
        qdrant_api_key=key,
        collection=server["FRESHRAG_COLLECTION"],
    )
    open_settings_store(settings).close()  # the collection exists before the ingest starts
    producer = EventProducer(kafka_bootstrap, topic)
    producer.send_many([change() for _ in range(80)])
    proc = IngestCli(kafka_bootstrap, topic, work, "-r", str(work / "recovery"), env=server)
    stop = threading.Event()

    def stream() -> None:
        while not stop.wait(0.1):
            producer.send_many([change(hot) for _ in range(rng.randint(1, 3))])

    runs: list[dict[str, Any]] = []
    try:
        proc.wait_caught_up(end_offsets(kafka_bootstrap, topic, PARTITIONS), timeout=300)
        streaming = threading.Thread(target=stream, daemon=True)
        streaming.start()
        try:
            for _ in range(4):
                code, report = verify_cli(kafka_bootstrap, topic, work / "none", env=server)
                runs.append(report)
                assert code == 0 and report["clean"], report
                flying = {f"{f['doc_id']}" for f in report["in_flight"]}
                assert flying <= set(hot), flying - set(hot)
        finally:
            stop.set()
            streaming.join(timeout=30)
        proc.wait_caught_up(end_offsets(kafka_bootstrap, topic, PARTITIONS), timeout=300)
        code, report = verify_cli(kafka_bootstrap, topic, work / "none", env=server)
        assert code == 0 and report["clean"] and report["counts"]["in_flight"] == 0, report
        assert report["source_documents"] == report["index_documents"] > 0
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        stop.set()
        producer.close()
        if proc.alive:
            proc.kill()
    # the runs really overlapped the stream: they read ever more records
    assert runs[-1]["records"] > runs[0]["records"], [r["records"] for r in runs]
    in_flight = [r["counts"]["in_flight"] for r in runs]
    print("in flight per run:", in_flight)
    assert any(in_flight), "no run saw unfinished work: the race was not exercised"


def test_repair_leaves_alone_a_document_written_to_since_verify_read_it(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """No ingest runs: the index is empty, so both documents are missing. One is written to
    after verify read the topic: repair must not replay its old version over the new one."""
    from freshrag.ingest.verify import repair_drift, verify
    from freshrag.retrieve.edge_store import EdgeStore
    from tests.integration.harness import read_log

    topic = make_topic("verify-race", partitions=PARTITIONS)
    producer = EventProducer(kafka_bootstrap, topic)
    try:
        producer.send_many([upsert_event("a", "a one", version=1), upsert_event("b", "b one")])
        store = EdgeStore(tmp_path / "index", "freshrag")
        store.ensure_collection()
        try:
            result = verify(store, kafka_bootstrap, topic)
        finally:
            store.close()
        assert sorted(d.doc_id for d in result.report.drift) == ["a", "b"]
        producer.send(upsert_event("a", "a two", version=2))  # a live writer, meanwhile
    finally:
        producer.close()
    replayed, skipped = repair_drift(kafka_bootstrap, topic, result.report.drift, result.read_to)
    assert [d.doc_id for d in skipped] == ["a"]
    assert [(r.drift.doc_id, [e["op"] for e in r.events]) for r in replayed] == [("b", ["upsert"])]
    log = sorted(read_log(kafka_bootstrap, topic), key=lambda r: (r.partition, r.offset))
    of_b = [r for r in log if json.loads(r.key or b"{}").get("id") == "b"]
    # the real event under the document's key; the replay and its tombstone under the replay key
    assert [(json.loads(r.key or b""), r.value is None) for r in of_b] == [
        ({"id": "b", "tenant": "default"}, False),
        ({"id": "b", "replay": True, "tenant": "default"}, False),
        ({"id": "b", "replay": True, "tenant": "default"}, True),
    ]
    replay = json.loads(of_b[1].value or b"")
    assert (replay["text"], replay["replay"], replay["replay_of"]) == (
        "b one",
        True,
        of_b[0].offset,
    )
    assert len({r.partition for r in of_b}) == 1  # one partition orders them for the gate
    texts = [json.loads(r.value).get("text") for r in log if r.value and b'"a"' in (r.key or b"")]
    assert texts == ["a one", "a two"]


@pytest.mark.timeout(900)
def test_a_repair_that_races_live_writers_never_undoes_their_writes(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, embedder: Any
) -> None:
    """The window `repair_drift`'s re-check cannot close: live writes land after verify read
    the topic and before the repair's records (here the re-check is skipped, `read_to=None`, to
    make that window as wide as a test needs). The real ingest then applies everything: a newer
    version stays, a re-create stays, a delete stays, and the untouched drift is repaired. (The
    repair of before, a version-less delete plus the old version, lost "newer" and "recreated".)"""
    from freshrag.ingest.verify import repair_drift, verify

    topic = make_topic("verify-racing", partitions=PARTITIONS)
    base = [
        upsert_event("newer", "newer one", version=1),  # a live v2 lands after verify
        upsert_event("recreated", "recreated one", version=1),
        delete_event("recreated", version=2),  # a live re-create lands after verify
        upsert_event("deleted", "deleted one", version=1),  # a live delete lands after verify
        upsert_event("quiet", "quiet one", version=1),  # nobody touches it: repaired
    ]
    producer = EventProducer(kafka_bootstrap, topic)
    try:
        producer.send_many(base)
        work = tmp_path / "ingest"
        ingest_until_caught_up(kafka_bootstrap, topic, work)
        settings = load_settings(
            kafka_bootstrap=kafka_bootstrap, topic=topic, index_path=work / "index"
        )
        store = open_serving_store(settings)
        try:
            for doc in ("newer", "deleted", "quiet"):
                store.delete_document("default", doc)  # lost: all three are missing now
            # and points of a document the source deleted
            store.upsert_chunks(points(embedder, "default", "recreated", 1, ["recreated one"]))
            result = verify(store, kafka_bootstrap, topic)
        finally:
            store.close()
        assert {(d.doc_id, d.category) for d in result.report.drift} == {
            ("newer", "missing"),
            ("deleted", "missing"),
            ("quiet", "missing"),
            ("recreated", "deleted"),
        }
        producer.send_many(
            [
                upsert_event("newer", "newer two", version=2),
                upsert_event("recreated", "recreated three", version=3),
                delete_event("deleted", version=2),
            ]
        )
    finally:
        producer.close()
    replayed, skipped = repair_drift(kafka_bootstrap, topic, result.report.drift, None)
    assert not skipped and len(replayed) == 4
    ingest_until_caught_up(kafka_bootstrap, topic, work)
    store = open_serving_store(settings)
    try:
        held = {doc: rows for (_, doc), rows in contents(store).items()}
    finally:
        store.close()
    assert {doc: {(r[2], r[4]) for r in rows} for doc, rows in held.items()} == {
        "newer": {(2, "newer two")},
        "recreated": {(3, "recreated three")},
        "quiet": {(1, "quiet one")},
    }
