"""`freshrag ingest` as a real process: SIGTERM + restart with recovery, and several workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import ROOT, free_port
from tests.integration.harness import event, index_state, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


class IngestProcess:
    def __init__(self, bootstrap: str, topic: str, index: Path, *args: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "FRESHRAG_KAFKA_BOOTSTRAP": bootstrap,
            "FRESHRAG_TOPIC": topic,
            "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
            "FRESHRAG_INDEX_PATH": str(index),
            "FRESHRAG_METRICS_PORT": str(self.port),
            "FRESHRAG_EMBED_MAX_WAIT_MS": "50",
        }
        env.pop("FRESHRAG_QDRANT_URL", None)
        env.pop("QDRANT_URL", None)
        self.log = index.parent / f"ingest-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freshrag.cli", "ingest", *args],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def metrics(self) -> dict[str, Any]:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return {}
        read, done, offsets = 0.0, 0.0, {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "freshrag_ingest_records_read_total":
                    read = sample.value
                elif sample.name == "freshrag_ingest_events_total":
                    done += sample.value
                elif sample.name == "freshrag_ingest_source_offset":
                    offsets[int(sample.labels["partition"])] = int(sample.value)
        return {"read": read, "done": done, "offsets": offsets}

    def wait_caught_up(self, end_offsets: dict[int, int], timeout: float = 180) -> None:
        def caught_up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            m = self.metrics()
            return bool(m) and m["offsets"] == end_offsets and m["read"] == m["done"]

        wait_for(caught_up, timeout=timeout, what="ingest caught up", show=self.metrics)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("ingest did not stop within 60 s of SIGTERM") from None


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def expected_state(events: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """Final index state implied by the events, with the version-gate rules of DESIGN.md."""
    last: dict[tuple[str, str], tuple[int, bool]] = {}
    for e in events:
        key = (e.get("tenant", "default"), e["id"])
        prev = last.get(key)
        is_delete = e["op"] == "delete"
        if (
            prev is None
            or e["version"] > prev[0]
            or (is_delete and e["version"] == prev[0] and not prev[1])
        ):
            last[key] = (e["version"], is_delete)
    return {k: (v, 1) for k, (v, deleted) in last.items() if not deleted}


def snapshot(index: Path) -> dict[str, dict[str, Any]]:
    store = EdgeStore(index, "freshrag")
    try:
        return {f"{p['tenant']}/{p['doc_id']}": p for p in store.scroll_payloads()}
    finally:
        store.close()


def state_of(index: Path) -> dict[tuple[str, str], tuple[int, int]]:
    store = EdgeStore(index, "freshrag")
    try:
        return index_state(store)
    finally:
        store.close()


def produce_events(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [event(**e) for e in events])


def test_sigterm_and_restart_resumes_from_recovery(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    topic = make_topic("restart", partitions=4)
    index, recovery = tmp_path / "index", tmp_path / "recovery"
    batch_a = [
        {"op": "upsert", "id": f"d{i}", "version": 1, "text": f"Doc {i} first."} for i in range(24)
    ]
    batch_a += [
        {"op": "upsert", "id": f"d{i}", "version": 2, "text": f"Doc {i} second."}
        for i in range(0, 24, 2)
    ]
    produce_events(kafka_bootstrap, topic, batch_a)

    first = IngestProcess(kafka_bootstrap, topic, index, "-r", str(recovery), "-s", "0.5")
    ends = end_offsets(kafka_bootstrap, topic, 4)
    first.wait_caught_up(ends)
    assert first.terminate() == 0, first.log.read_text()[-3000:]
    before = snapshot(index)
    # the indexed watermarks were published through the store for API processes
    published = EdgeStore(index, "freshrag")
    assert published.load_watermarks(topic) == {str(p): o for p, o in ends.items()}
    published.close()
    assert state_of(index) == expected_state(batch_a)

    # produced while ingest is down: updates, deletes, stale versions, a new tenant
    batch_b = [
        {"op": "upsert", "id": f"d{i}", "version": 3, "text": f"Doc {i} third."}
        for i in range(0, 6)
    ]
    batch_b += [{"op": "delete", "id": f"d{i}", "version": 3} for i in range(6, 10)]
    batch_b += [
        {"op": "upsert", "id": f"d{i}", "version": 1, "text": "stale"} for i in range(10, 14)
    ]
    batch_b += [
        {"op": "upsert", "id": "n1", "tenant": "acme", "version": 1, "text": "New tenant doc."}
    ]
    produce_events(kafka_bootstrap, topic, batch_b)

    second = IngestProcess(kafka_bootstrap, topic, index, "-r", str(recovery), "-s", "0.5")
    second.wait_caught_up(end_offsets(kafka_bootstrap, topic, 4))
    m = second.metrics()
    assert second.terminate() == 0, second.log.read_text()[-3000:]
    # only the events produced meanwhile were read again: offsets resumed from the snapshot
    assert m["read"] == len(batch_b)
    after = snapshot(index)
    assert state_of(index) == expected_state(batch_a + batch_b)
    touched = {f"default/{e['id']}" for e in batch_b}
    for key, payload in before.items():
        if key not in touched:
            assert after[key] == payload  # untouched documents were not re-written
    for i in range(10, 14):  # stale versions did not regress anything
        assert after[f"default/d{i}"] == before[f"default/d{i}"]


def test_two_workers_on_four_partitions_match_one_worker(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    topic = make_topic("workers", partitions=4)
    events: list[dict[str, Any]] = []
    for round_ in range(1, 4):
        for i in range(30):
            if (i + round_) % 7 == 0:
                events.append({"op": "delete", "id": f"w{i}", "version": round_ * 10})
            else:
                events.append(
                    {
                        "op": "upsert",
                        "id": f"w{i}",
                        "tenant": f"t{i % 3}",
                        "version": round_ * 10,
                        "text": f"Worker test document {i} round {round_}.",
                    }
                )
    events += [{"op": "upsert", "id": "w1", "tenant": "t1", "version": 5, "text": "stale"}]
    produce_events(kafka_bootstrap, topic, events)
    ends = end_offsets(kafka_bootstrap, topic, 4)
    assert all(v > 0 for v in ends.values())  # the keys really spread over 4 partitions

    states = []
    for workers in ("1", "2"):
        index = tmp_path / f"index-w{workers}"
        proc = IngestProcess(kafka_bootstrap, topic, index, "-w", workers, "--no-recovery")
        proc.wait_caught_up(ends)
        assert proc.terminate() == 0, proc.log.read_text()[-3000:]
        states.append(state_of(index))
    assert states[0] == states[1] == expected_state(events)
    assert len(states[0]) > 10
