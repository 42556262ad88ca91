"""Helpers for ingest integration tests: run the real flow in-process, produce, wait, read DLQ."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from freshrag.core.settings import Settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.flow import FlowParts, build_flow
from freshrag.ingest.metrics import IngestMetrics
from freshrag.retrieve.contract import Store


class RunningFlow:
    """The real ingest dataflow in a background thread (bytewax run_main / cli_main)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder: Any,
        *,
        workers: int = 1,
        recovery_dir: Path | None = None,
    ) -> None:
        self.stop_event = threading.Event()
        self.metrics = IngestMetrics()
        self.parts = FlowParts(
            settings, store, embedder, Bm25Encoder(), self.metrics, self.stop_event, workers=workers
        )
        self.workers = workers
        self.recovery_dir = recovery_dir
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from bytewax.recovery import RecoveryConfig, init_db_dir
        from bytewax.run import cli_main

        recovery = None
        if self.recovery_dir is not None:
            self.recovery_dir.mkdir(parents=True, exist_ok=True)
            if not any(self.recovery_dir.glob("*.sqlite3")):
                init_db_dir(self.recovery_dir, 1)
            recovery = RecoveryConfig(self.recovery_dir)
        try:
            cli_main(
                build_flow(self.parts),
                workers_per_process=self.workers,
                epoch_interval=timedelta(milliseconds=500),
                recovery_config=recovery,
            )
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> RunningFlow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "flow did not stop within 60 s"
        if self.error is not None:
            raise self.error

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        if partition is None:
            producer.produce(topic, key=key, value=value)
        else:
            producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def event(**fields: Any) -> tuple[bytes, bytes]:
    return str(fields["id"]).encode(), json.dumps(fields).encode()


def wait_for(
    condition: Callable[[], bool],
    timeout: float = 120,
    what: str = "condition",
    show: Callable[[], object] | None = None,
) -> None:
    """Poll until `condition` holds; on timeout say what was awaited and what `show` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    seen = f"; last seen: {show()!r}" if show is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        consumer.close()
    return out


def index_state(store: Store, tenant: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """(tenant, doc_id) -> (version, chunk count), straight from the index payloads."""
    state: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for p in store.scroll_payloads(tenant):
        state.setdefault((p["tenant"], p["doc_id"]), set()).add((p["version"], p["chunk_index"]))
    out = {}
    for key, chunks in state.items():
        versions = {v for v, _ in chunks}
        assert len(versions) == 1, f"{key} has chunks of several versions: {sorted(versions)}"
        out[key] = (versions.pop(), len(chunks))
    return out


class ApiServer:
    """A real uvicorn server for an app, on a free loopback port, in a background thread."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self._thread.start()
        wait_for(lambda: self.server.started, timeout=60, what="API server start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


# --- Crash and outage tests: the log as stored, the index it implies, `freshrag ingest` as a
# process that can be killed. The model below is pure, written from the ordering rules of
# DESIGN.md "Change events" (freshrag.ingest.ordering), for native JSON events:
# - version = the explicit `version`, else the record timestamp; a higher version is newer;
# - equal versions: if both events carry an explicit version, only a later delete of a live
#   document wins (anything else equal is a replay); otherwise the later offset wins;
# - a delete without a version (or a tombstone) deletes what is indexed and keeps the last
#   applied version (0 if none), so a later re-create with a small version is applied;
# - a bare-key tombstone of a native document names the default tenant.

DocKey = tuple[str, str]  # (tenant, doc_id)
MAX_EVENT_VERSION = 2**53
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record as the broker stored it (the model needs its offset and timestamp)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def end_offsets(bootstrap: str, topic: str, partitions: int | None = None) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"offsets-{time.time_ns()}"})
    try:
        if partitions is None:
            meta = consumer.list_topics(topic, timeout=30)
            partitions = len(meta.topics[topic].partitions)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def read_log(bootstrap: str, topic: str, timeout: float = 120) -> list[LogRecord]:
    """Every record of `topic` up to its current end, in (partition, offset) order."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"log-{topic}-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    pending = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)])
    out: list[LogRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while pending:
            assert time.monotonic() < deadline, f"reading {topic}: partitions {pending} unfinished"
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            partition, offset = int(msg.partition()), int(msg.offset())
            headers = tuple((k, v or b"") for k, v in (msg.headers() or []))
            ts = msg.timestamp()[1]
            out.append(LogRecord(partition, offset, ts, msg.key(), msg.value(), headers))
            if offset >= ends[partition] - 1:
                pending.discard(partition)
    finally:
        consumer.close()
    return sorted(out, key=lambda r: (r.partition, r.offset))


@dataclass(frozen=True, slots=True)
class ModelDoc:
    version: int
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class ModelEvent:
    op: str  # "upsert" | "delete"
    tenant: str
    doc_id: str
    version: int | None  # None: a delete without a version
    explicit: bool  # the version came from the event, not from the record timestamp
    doc: ModelDoc | None


def model_event(record: LogRecord) -> ModelEvent | None:
    """What a record means for the index, or None for a record that belongs in the DLQ.

    Covers what `mixed_events` writes: native JSON events and bare-key tombstones."""
    if record.value is None:
        key = (record.key or b"").decode("utf-8", errors="strict")
        if key.startswith("{"):
            raise NotImplementedError("the model covers bare-key tombstones only")
        if not key.strip():
            return None
        return ModelEvent("delete", "default", key, None, False, None)
    try:
        body = json.loads(record.value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(body, dict) and ("payload" in body or body.get("op") in ("c", "r", "u", "d")):
        raise NotImplementedError("the model covers native events only, not Debezium")
    if not isinstance(body, dict) or body.get("op") not in ("upsert", "delete"):
        return None
    doc_id, tenant, version = body.get("id"), body.get("tenant", "default"), body.get("version")
    if not isinstance(doc_id, str) or not doc_id.strip() or len(doc_id) > 512:
        return None
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        return None
    if version is not None and (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 0 <= version <= MAX_EVENT_VERSION
    ):
        return None
    explicit = version is not None
    if body["op"] == "delete":
        return ModelEvent("delete", tenant, doc_id, version, explicit, None)
    text, title = body.get("text"), body.get("title", "")
    if not isinstance(text, str) or not text.strip() or not isinstance(title, str):
        return None
    if version is None:
        version = record.timestamp_ms
    doc = ModelDoc(version, title, text)
    return ModelEvent("upsert", tenant, doc_id, version, explicit, doc)


@dataclass(frozen=True, slots=True)
class _Applied:
    version: int
    offset: int
    explicit: bool
    doc: ModelDoc | None  # None: deleted


def _newer(event: ModelEvent, offset: int, last: _Applied | None) -> bool:
    if last is None:
        return True
    version = last.version if event.version is None else event.version
    if version != last.version:
        return version > last.version
    later = offset > last.offset
    if event.explicit and last.explicit:  # equal explicit versions: a delete of a live doc
        return later and event.op == "delete" and last.doc is not None
    return later


def expected_documents(records: Iterable[LogRecord]) -> dict[DocKey, ModelDoc]:
    """The live documents the log implies: per document, the last applied upsert."""
    last: dict[DocKey, _Applied] = {}
    partition_of: dict[str, int] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = model_event(record)
        if event is None:
            continue
        seen = partition_of.setdefault(event.doc_id, record.partition)
        assert seen == record.partition, f"{event.doc_id} is in partitions {seen} and more"
        key = (event.tenant, event.doc_id)
        prev = last.get(key)
        if _newer(event, record.offset, prev):
            version = event.version if event.version is not None else prev.version if prev else 0
            last[key] = _Applied(version, record.offset, event.explicit, event.doc)
    return {key: a.doc for key, a in last.items() if a.doc is not None}


def dead_letter_positions(records: Iterable[LogRecord]) -> set[tuple[int, int]]:
    """(partition, offset) of every record the model says must end in the DLQ."""
    return {(r.partition, r.offset) for r in records if model_event(r) is None}


def dlq_sources(bootstrap: str, dlq_topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) of each source record in the DLQ -> its error class (duplicates
    from at-least-once delivery merged)."""
    out = {}
    for record in read_log(bootstrap, dlq_topic):
        headers = dict(record.headers)
        part = headers.get("freshrag.source.partition")
        offset = headers.get("freshrag.source.offset")
        if part is not None and offset is not None:
            error = headers.get("freshrag.error.class", b"?").decode(errors="replace")
            out[(int(part), int(offset))] = error
    return out


def expected_chunks(
    docs: Mapping[DocKey, ModelDoc], counter: Any, max_tokens: int = 200, overlap: int = 32
) -> dict[DocKey, tuple[int, int]]:
    """(tenant, doc_id) -> (version, chunk count), chunked like the flow (default settings)."""
    from freshrag.ingest.chunking import chunk_document

    counts: dict[tuple[str, str], int] = {}
    out = {}
    for key, doc in docs.items():
        n = counts.get((doc.title, doc.text))
        if n is None:
            n = len(chunk_document(doc.text, doc.title, counter, max_tokens, overlap))
            counts[(doc.title, doc.text)] = n
        out[key] = (doc.version, n)
    return out


@dataclass(frozen=True)
class IndexReport:
    documents: int
    chunks: int
    missing: int  # expected chunks absent (at the expected version)
    stale: int  # points that should not be there: deleted docs, other versions, tail chunks
    duplicates: int  # more than one point for one (tenant, doc_id, chunk_index)
    regressed: int  # documents visible only at an older version than expected
    problems: list[str]

    @property
    def exact(self) -> bool:
        return not (self.missing or self.stale or self.duplicates or self.regressed)

    def figures(self) -> str:
        return (
            f"missing={self.missing} stale={self.stale} duplicates={self.duplicates} "
            f"regressed={self.regressed}"
        )


def compare_index(
    expected: Mapping[DocKey, tuple[int, int]], payloads: Iterable[Mapping[str, Any]]
) -> IndexReport:
    """Compare index payloads with the expected (version, chunk count) per document."""
    seen: dict[tuple[str, str, int], int] = {}
    versions: dict[DocKey, set[int]] = {}
    problems: list[str] = []
    stale = 0
    rows = list(payloads)
    for p in rows:
        key = (str(p["tenant"]), str(p["doc_id"]))
        index, version, count = int(p["chunk_index"]), int(p["version"]), int(p["chunk_count"])
        seen[(*key, index)] = seen.get((*key, index), 0) + 1
        versions.setdefault(key, set()).add(version)
        want = expected.get(key)
        if want is None or version != want[0] or index >= want[1] or count != want[1]:
            stale += 1
            if len(problems) < 20:
                problems.append(f"stale {key} chunk {index} v{version}/{count}, expected {want}")
    duplicates = sum(n - 1 for n in seen.values())
    missing = regressed = 0
    at_version: dict[DocKey, set[int]] = {}
    for p in rows:
        key = (str(p["tenant"]), str(p["doc_id"]))
        if key in expected and int(p["version"]) == expected[key][0]:
            at_version.setdefault(key, set()).add(int(p["chunk_index"]))
    for key, (version, n) in expected.items():
        absent = n - len(at_version.get(key, set()) & set(range(n)))
        missing += absent
        if absent and len(problems) < 40:
            problems.append(f"missing {absent}/{n} chunks of {key} v{version}")
        have = versions.get(key)
        if have and max(have) < version:
            regressed += 1
            if len(problems) < 40:
                problems.append(f"regressed {key}: index has v{sorted(have)}, expected v{version}")
    return IndexReport(
        len(expected),
        sum(n for _, n in expected.values()),
        missing,
        stale,
        duplicates,
        regressed,
        problems,
    )


_WORDS = (
    "stream index vector chunk replica tenant version offset delete upsert shard raft query "
    "token embed batch crash replay order kafka qdrant partition broker snapshot recovery "
    "latency search ranking answer citation document fresh river mountain garden kitchen"
).split()


def _text(seed: str, chunks: int) -> str:
    rng = random.Random(seed)
    words = rng.randint(12, 30) if chunks == 1 else chunks * 160
    sentences, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(_WORDS))
        if len(sentence) >= 12:
            sentences.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        sentences.append(" ".join(sentence).capitalize() + ".")
    return f"Document {seed}. " + " ".join(sentences)


def _size(seed: str) -> int:
    r = random.Random(f"size:{seed}").random()
    return 1 if r < 0.88 else 2 if r < 0.97 else 4


Record = tuple[bytes | None, bytes | None]


def mixed_events(rng: random.Random, count: int, documents: int) -> list[Record]:
    """`count` records over `documents` documents in 3 tenants, keyed by document id: grow,
    shrink, delete (with and without a version), tombstones, re-creates, replays of old
    records, out-of-order versions, version-less (timestamp-ordered) documents, bad records."""
    tenants = ("default", "acme", "globex")
    top = [0] * documents  # highest explicit version written per document
    history: list[list[Record]] = [[] for _ in range(documents)]
    out: list[Record] = []

    def emit(d: int, record: Record, keep: bool = True) -> None:
        out.append(record)
        if keep:
            history[d].append(record)

    def upsert(d: int, version: int | None, seq: int | None = None) -> Record:
        doc_id = f"doc-{d:05d}"
        seed = f"{doc_id}:{version if version is not None else f's{seq}'}"
        fields: dict[str, Any] = {
            "op": "upsert",
            "id": doc_id,
            "tenant": tenants[d % 3],
            "title": f"Title {doc_id}",
            "text": _text(seed, _size(seed)),
        }
        if version is not None:
            fields["version"] = version
        return event(**fields)

    def delete(d: int, version: int | None) -> Record:
        fields: dict[str, Any] = {"op": "delete", "id": f"doc-{d:05d}", "tenant": tenants[d % 3]}
        if version is not None:
            fields["version"] = version
        return event(**fields)

    def bad(d: int) -> Record:
        doc_id = f"doc-{d:05d}"
        key = doc_id.encode()
        body: Any = rng.choice(
            [
                b"{not json",
                b"\xff\xfe\x00 not utf-8",
                json.dumps([1, 2, 3]).encode(),
                json.dumps({"id": doc_id, "text": "no op"}).encode(),
                json.dumps({"op": "upsert", "id": doc_id, "version": "7", "text": "x"}).encode(),
                json.dumps({"op": "upsert", "id": doc_id, "version": 3, "text": 42}).encode(),
                json.dumps({"op": "upsert", "id": doc_id, "version": -1, "text": "x"}).encode(),
                json.dumps({"op": "upsert", "id": doc_id, "version": 2**60, "text": "x"}).encode(),
                json.dumps({"op": "upsert", "id": doc_id, "text": "   "}).encode(),
                json.dumps(
                    {"op": "upsert", "id": doc_id, "tenant": "no spaces!", "text": "x"}
                ).encode(),
                json.dumps({"op": "delete", "id": 5}).encode(),
            ]
        )
        return key, body

    seq = 0
    while len(out) < count:
        d = rng.randrange(documents)
        r = rng.random()
        seq += 1
        if d % 10 == 9:  # a version-less document: its upserts are ordered by record timestamp
            if r < 0.6:
                emit(d, upsert(d, None, seq))
            elif r < 0.72:
                emit(d, delete(d, None))
            elif r < 0.78:
                emit(d, (f"doc-{d:05d}".encode(), None))  # tombstone
            elif r < 0.9 and history[d]:
                emit(d, rng.choice(history[d]), keep=False)  # replay
            elif r < 0.95:
                emit(d, upsert(d, rng.randint(1, 5)))  # explicit small version: stale here
            else:
                emit(d, bad(d), keep=False)
            continue
        if r < 0.45:  # the next version (sometimes with a gap): grow, shrink or re-create
            top[d] += rng.choice((1, 1, 1, 2))
            emit(d, upsert(d, top[d]))
        elif r < 0.55:  # out of order: v+2 arrives before v+1, which is then stale
            emit(d, upsert(d, top[d] + 2))
            emit(d, upsert(d, top[d] + 1))
            top[d] += 2
        elif r < 0.65:  # delete with the current version (wins the tie) or the next one
            top[d] += rng.choice((0, 1))
            emit(d, delete(d, top[d]))
        elif r < 0.68:
            emit(d, delete(d, None))
        elif r < 0.70:
            emit(d, (f"doc-{d:05d}".encode(), None))  # tombstone, bare key
        elif r < 0.85 and history[d]:
            emit(d, rng.choice(history[d]), keep=False)  # replay of an older record
        elif r < 0.88:
            emit(d, bad(d), keep=False)
        elif top[d] > 1:  # an old version, late
            emit(d, upsert(d, rng.randint(1, top[d] - 1)))
        else:
            top[d] += 1
            emit(d, upsert(d, top[d]))
    return out


class IngestCli:
    """`freshrag ingest` as a real process, on the Edge index or a Qdrant server (`env`)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        workdir: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        from tests.conftest import ROOT, free_port

        self.port = free_port()
        full_env = {
            **os.environ,
            "FRESHRAG_KAFKA_BOOTSTRAP": bootstrap,
            "FRESHRAG_TOPIC": topic,
            "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
            "FRESHRAG_INDEX_PATH": str(workdir / "index"),
            "FRESHRAG_METRICS_PORT": str(self.port),
            "FRESHRAG_EMBED_MAX_WAIT_MS": "50",
        }
        for name in ("FRESHRAG_QDRANT_URL", "QDRANT_URL", "FRESHRAG_QDRANT_API_KEY"):
            full_env.pop(name, None)
        full_env.update(env or {})
        workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.last_metrics: dict[str, Any] = {}
        self._http = httpx.Client(timeout=2)
        self.log = workdir / f"ingest-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freshrag.cli", "ingest", *args],
            cwd=ROOT,
            env=full_env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def metrics(self) -> dict[str, Any]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self._http.get(f"http://127.0.0.1:{self.port}/metrics").text
        except httpx.HTTPError:
            return {}
        read, done, background, offsets = 0.0, 0.0, 0.0, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "freshrag_ingest_records_read_total":
                    read = sample.value
                elif sample.name == "freshrag_ingest_background_records_total":
                    background = sample.value
                elif sample.name == "freshrag_ingest_events_total":
                    done += sample.value
                elif sample.name == "freshrag_ingest_source_offset":
                    offsets[int(sample.labels["partition"])] = int(sample.value)
        self.last_metrics = {
            "read": read,
            "done": done,
            "background": background,
            "offsets": offsets,
        }
        return self.last_metrics

    def flowing(self) -> bool:
        """The dataflow runs: its Kafka source has reported a position."""
        assert self.alive, f"ingest exited with {self.proc.returncode}:\n{self.log_tail()}"
        return bool(self.metrics().get("offsets"))

    def wait_caught_up(self, ends: Mapping[int, int], timeout: float = 300) -> None:
        """The source has read up to `ends` and every record read has an outcome. Outcomes
        can exceed reads after a restart (records restored from a snapshot finish without
        being read again); a clean stop drains whatever is still in flight anyway."""
        wanted = {p: o for p, o in ends.items() if o > 0}  # empty partitions report nothing

        def caught_up() -> bool:
            assert self.alive, f"ingest exited with {self.proc.returncode}:\n{self.log_tail()}"
            m = self.metrics()
            read_all = bool(m) and all(m["offsets"].get(p) == o for p, o in wanted.items())
            return read_all and m["done"] >= m["read"]

        wait_for(caught_up, timeout=timeout, what="ingest caught up", show=self.metrics)

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._http.close()

    def terminate(self, timeout: float = 300) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self._http.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"ingest did not stop within {timeout} s of SIGTERM") from None


def verify_cli(
    bootstrap: str,
    topic: str,
    index: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, dict[str, Any]]:
    """`freshrag verify --json [args]` as a real process on the Edge index at `index` (or the
    Qdrant server `env` names): its exit code and its JSON report."""
    from tests.conftest import ROOT

    full_env = {
        **os.environ,
        "FRESHRAG_KAFKA_BOOTSTRAP": bootstrap,
        "FRESHRAG_TOPIC": topic,
        "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
        "FRESHRAG_INDEX_PATH": str(index),
    }
    for name in ("FRESHRAG_QDRANT_URL", "QDRANT_URL", "FRESHRAG_QDRANT_API_KEY"):
        full_env.pop(name, None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "freshrag.cli", "verify", "--json", "--examples", "1000", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode in (0, 1), f"verify failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(proc.stdout)


def launch_chromium(pw: Any) -> Any:
    """The system Chromium under Playwright, headless, with nothing that reaches the network."""
    import shutil

    return pw.chromium.launch(
        executable_path=shutil.which("chromium") or "/usr/bin/chromium",
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
