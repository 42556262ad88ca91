"""Outages of the parts around `freshrag ingest`, recovered with nothing lost:

- the Kafka broker stopped for 30 s while events are produced (a dedicated broker);
- the Qdrant server SIGKILLed mid-stream and restarted on the same storage ~10 s later;
- a Qdrant outage longer than the store retry budget: ingest exits non-zero and says why, and a
  restart after Qdrant is back resumes with nothing skipped.

Every case ends with the index compared to the state the log implies (harness model).
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import ROOT, QdrantServer, free_port, qdrant_binary
from tests.integration.harness import (
    IngestCli,
    Record,
    compare_index,
    dead_letter_positions,
    dlq_sources,
    end_offsets,
    expected_chunks,
    expected_documents,
    mixed_events,
    produce,
    read_log,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

KAFKA_SCRIPT = str(ROOT / "infra/kafka/kafka.sh")
OUTAGE_S = 30


def _kafka(*args: str) -> str:
    proc = subprocess.run(
        [KAFKA_SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"kafka.sh {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Kafka broker for one test (it gets stopped), as (bootstrap, data dir)."""
    port = free_port(pairs=2)
    data = tmp_path / "kafka"
    _kafka("start", "--port", str(port), "--dir", str(data))
    try:
        yield f"127.0.0.1:{port}", data
    finally:
        subprocess.run([KAFKA_SCRIPT, "stop", "--dir", str(data)], cwd=ROOT, timeout=60)


def _create_topic(bootstrap: str, prefix: str, partitions: int = 4) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(timeout=30)
    return name


class PacedProducer(threading.Thread):
    """Produces records at a steady pace with an idempotent, acks=all producer that keeps
    retrying through an outage (long message timeout); collects delivery errors."""

    def __init__(self, bootstrap: str, topic: str, records: Sequence[Record], seconds: float):
        super().__init__(daemon=True)
        self.records = records
        self.pause = seconds / max(1, len(records))
        self.topic = topic
        self.errors: list[str] = []
        self.delivered = 0
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": 300_000,
                "linger.ms": 5,
            }
        )

    def _report(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.delivered += 1

    def run(self) -> None:
        for key, value in self.records:
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=key, value=value, on_delivery=self._report
                    )
                    break
                except BufferError:  # local queue full during the outage: wait for room
                    self.producer.poll(0.5)
            self.producer.poll(0)
            time.sleep(self.pause)
        left = self.producer.flush(300)
        if left:
            self.errors.append(f"{left} records still unsent after 300 s")


def _index_report(records: list[Any], payloads: list[dict[str, Any]], embedder: Any) -> Any:
    return compare_index(expected_chunks(expected_documents(records), embedder), payloads)


def _edge_payloads(index: Path) -> list[dict[str, Any]]:
    store = EdgeStore(index, "freshrag")
    try:
        return store.scroll_payloads()
    finally:
        store.close()


def test_broker_outage_of_30s_while_producing_loses_nothing(
    own_broker: tuple[str, Path],
    tmp_path: Path,
    embedder: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap, data = own_broker
    started = time.monotonic()
    topic = _create_topic(bootstrap, "broker-outage")
    records = mixed_events(random.Random(91), 600, 90)
    work = tmp_path / "ingest"
    produce(bootstrap, topic, records[:100])  # the source reports a position once it reads
    proc = IngestCli(bootstrap, topic, work, "-r", str(tmp_path / "recovery"), "-s", "1")
    try:
        wait_for(proc.flowing, timeout=180, what="ingest flowing")
        feeder = PacedProducer(bootstrap, topic, records[100:], seconds=60)
        feeder.start()
        wait_for(lambda: feeder.delivered >= 100, timeout=120, what="first deliveries")

        _kafka("stop", "--dir", str(data))
        down_at = time.monotonic()
        while time.monotonic() - down_at < OUTAGE_S:
            assert proc.alive, f"ingest died during the broker outage:\n{proc.log_tail()}"
            time.sleep(1)
        _kafka("start", "--port", bootstrap.rsplit(":", 1)[1], "--dir", str(data))
        outage = time.monotonic() - down_at
        delivered_before = feeder.delivered

        feeder.join(timeout=400)
        assert not feeder.is_alive() and not feeder.errors, feeder.errors[:5]
        proc.wait_caught_up(end_offsets(bootstrap, topic, 4), timeout=300)
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        if proc.alive:
            proc.kill()

    log = read_log(bootstrap, topic)
    assert len(log) == len(records)  # idempotent producer: no loss, no duplicates
    report = _index_report(log, _edge_payloads(work / "index"), embedder)
    dlq = dlq_sources(bootstrap, f"{topic}.dlq")
    dead = dead_letter_positions(log)
    with capsys.disabled():
        print(
            f"\nbroker outage: events={len(log)} outage_s={outage:.0f} "
            f"delivered_before_restart={delivered_before} {report.figures()} "
            f"docs={report.documents} duration_s={time.monotonic() - started:.0f}"
        )
    assert report.exact, report.figures() + "\n" + "\n".join(report.problems)
    # the outage itself is not a bad record: the DLQ holds exactly the bad records
    assert set(dlq) == dead, [(k, dlq.get(k)) for k in sorted(set(dlq) ^ dead)][:10]


def _server_env(server: QdrantServer, collection: str, **extra: str) -> dict[str, str]:
    return {
        "FRESHRAG_QDRANT_URL": server.url,
        "FRESHRAG_QDRANT_API_KEY": server.api_key,
        "FRESHRAG_COLLECTION": collection,
        **extra,
    }


def _server_payloads(server: QdrantServer, collection: str) -> list[dict[str, Any]]:
    from qdrant_client import QdrantClient

    from freshrag.retrieve.server_store import QdrantServerStore

    with warnings.catch_warnings():  # an API key over plain http: loopback only, on purpose
        warnings.filterwarnings("ignore", "Api key is used with an insecure connection")
        client = QdrantClient(url=server.url, api_key=server.api_key, check_compatibility=False)
    try:
        return QdrantServerStore(client, collection).scroll_payloads()
    finally:
        client.close()


@pytest.fixture
def own_qdrant(tmp_path: Path) -> Iterator[QdrantServer]:
    """A Qdrant server for one test (it gets killed), with an API key."""
    qdrant_binary()
    server = QdrantServer(tmp_path / "qdrant", api_key=uuid.uuid4().hex)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_qdrant_killed_and_restarted_mid_stream_loses_nothing(
    kafka_bootstrap: str,
    make_topic: Any,
    own_qdrant: QdrantServer,
    tmp_path: Path,
    embedder: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    topic = make_topic("store-outage", partitions=4)
    records = mixed_events(random.Random(92), 600, 90)
    env = _server_env(own_qdrant, "outage")
    produce(kafka_bootstrap, topic, records[:100])
    proc = IngestCli(
        kafka_bootstrap, topic, tmp_path / "ingest", "-r", str(tmp_path / "rec"), env=env
    )
    try:
        wait_for(proc.flowing, timeout=180, what="ingest flowing")
        feeder = PacedProducer(kafka_bootstrap, topic, records[100:], seconds=30)
        feeder.start()
        wait_for(lambda: proc.metrics().get("done", 0) >= 100, timeout=120, what="writes")
        own_qdrant.kill()
        down_at = time.monotonic()
        while time.monotonic() - down_at < 10:
            assert proc.alive, f"ingest died during a 10 s store outage:\n{proc.log_tail()}"
            time.sleep(0.5)
        own_qdrant.start()  # same ports, same storage
        outage = time.monotonic() - down_at

        feeder.join(timeout=120)
        assert not feeder.is_alive() and not feeder.errors, feeder.errors[:5]
        proc.wait_caught_up(end_offsets(kafka_bootstrap, topic, 4), timeout=300)
        payloads = _server_payloads(own_qdrant, "outage")
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        if proc.alive:
            proc.kill()

    log = read_log(kafka_bootstrap, topic)
    report = _index_report(log, payloads, embedder)
    with capsys.disabled():
        print(
            f"\nqdrant outage: events={len(log)} outage_s={outage:.0f} {report.figures()} "
            f"docs={report.documents} duration_s={time.monotonic() - started:.0f}"
        )
    assert report.exact, report.figures() + "\n" + "\n".join(report.problems)


# The line that says the store stayed unreachable past the retry budget (and for how long).
GAVE_UP = re.compile(
    r"(?i)^.*\b(store|qdrant)\b.*\b(unavailable|unreachable)\b.*\d+(\.\d+)?\s*s\b.*$", re.M
)


def test_qdrant_outage_past_retry_budget_exits_loudly_then_resumes(
    kafka_bootstrap: str,
    make_topic: Any,
    own_qdrant: QdrantServer,
    tmp_path: Path,
    embedder: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    topic = make_topic("store-budget", partitions=4)
    records = mixed_events(random.Random(93), 400, 60)
    first, second = records[:200], records[200:]
    env = _server_env(own_qdrant, "budget", FRESHRAG_STORE_RETRY_BUDGET_S="5")
    args = ("-r", str(tmp_path / "rec"), "-s", "1")
    work = tmp_path / "ingest"

    produce(kafka_bootstrap, topic, first)
    proc = IngestCli(kafka_bootstrap, topic, work, *args, env=env)
    try:
        proc.wait_caught_up(end_offsets(kafka_bootstrap, topic, 4), timeout=300)
        own_qdrant.kill()
        produce(kafka_bootstrap, topic, second)
        down_at = time.monotonic()
        wait_for(lambda: not proc.alive, timeout=180, what="ingest to give up on the store")
        gave_up_after = time.monotonic() - down_at
    finally:
        if proc.alive:
            proc.kill()
    rc = proc.proc.returncode
    output = proc.log_tail(20_000)
    assert rc != 0, f"ingest exited 0 with the store down:\n{output[-3000:]}"
    said = ([None, *GAVE_UP.finditer(output)])[-1]  # the last such line

    own_qdrant.start()
    again = IngestCli(kafka_bootstrap, topic, work, *args, env=env)
    try:
        again.wait_caught_up(end_offsets(kafka_bootstrap, topic, 4), timeout=300)
        payloads = _server_payloads(own_qdrant, "budget")
        assert again.terminate() == 0, again.log_tail()
    finally:
        if again.alive:
            again.kill()

    log = read_log(kafka_bootstrap, topic)
    report = _index_report(log, payloads, embedder)
    with capsys.disabled():
        print(
            f"\nqdrant past budget: events={len(log)} rc={rc} gave_up_after_s={gave_up_after:.0f} "
            f"line={said.group(0)[:160] if said else None!r} {report.figures()} "
            f"docs={report.documents} "
            f"duration_s={time.monotonic() - started:.0f}"
        )
    assert report.exact, report.figures() + "\n" + "\n".join(report.problems)
    assert said, f"no clear log line about the store retry budget:\n{output[-3000:]}"
    # it retried through the budget (5 s) before giving up, rather than dying at once
    assert gave_up_after >= 4, f"ingest gave up after {gave_up_after:.1f} s, before its budget"
