"""The scale-out topology end to end, on real parts: Kafka with 4 partitions, `freshrag ingest`
as 2 processes x 2 workers (one bytewax cluster), 2 `freshrag serve` replicas (each request
goes to one at random), and a 2-peer Qdrant cluster holding the collection as 2 shards x 2
replicas.

While mixed events stream in (grow, shrink, delete, replay, out-of-order, bad records):
- one ingest process is SIGKILLed: the other must not stall, it exits (code 75) and both are
  restarted, as a supervisor would;
- one Qdrant peer is SIGKILLed and restarted: searches keep answering from the surviving
  replica, and ingest retries rather than skipping;
- read-your-writes across replicas: a write's `consistency_token` from one replica, used on
  the other, never returns the document as it was before the write.
At the end, as soon as the published watermarks pass the log end (the exact multi-process
watermarks), the index must equal the state the log implies.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from freshrag.retrieve.server_store import QdrantServerStore
from tests.conftest import ROOT, QdrantServer, free_port, qdrant_binary
from tests.integration.harness import (
    IngestCli,
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

PARTITIONS = 4
EVENTS = int(os.environ.get("FRESHRAG_CLUSTER_EVENTS", "480"))
DOCS = max(30, EVENTS // 6)
API_KEY = "cluster-test-key-0123456789"
TENANT = "ryw"
PEER_LOST_EXIT = 75


class ServeReplica:
    """`freshrag serve` as a process."""

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freshrag.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Replicas:
    """The two API replicas behind no proxy: each request picks one at random."""

    def __init__(self, replicas: list[ServeReplica], rng: random.Random) -> None:
        self.replicas = replicas
        self.rng = rng
        self.client = httpx.Client(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"})

    def pick(self, avoid: ServeReplica | None = None) -> ServeReplica:
        choices = [r for r in self.replicas if r is not avoid] or self.replicas
        return self.rng.choice(choices)

    def write(self, doc_id: str, text: str, version: int) -> tuple[ServeReplica, str]:
        via = self.pick()
        r = self.client.post(
            f"{via.url}/v1/documents", json={"id": doc_id, "text": text, "version": version}
        )
        assert r.status_code == 202, r.text
        return via, r.json()["consistency_token"]

    def search(
        self, query: str, token: str | None = None, via: ServeReplica | None = None
    ) -> list[dict[str, Any]]:
        target = via or self.pick()
        body: dict[str, Any] = {"query": query, "top_k": 10, "mode": "bm25"}
        if token is not None:
            body["consistency_token"] = token
        r = self.client.post(f"{target.url}/v1/search", json=body)
        assert r.status_code == 200, f"{target.url}: {r.status_code} {r.text}"
        return list(r.json()["hits"])


def read_your_writes(replicas: Replicas, rounds: int, tag: str) -> int:
    """Write v1 then v2 of a document through one replica; read through the other with each
    token. Returns how many reads were checked."""
    checked = 0
    for n in range(rounds):
        doc_id = f"ryw-{tag}-{n}"
        old_word, new_word = f"zq{tag}old{n}x", f"zq{tag}new{n}x"
        via, token1 = replicas.write(doc_id, f"Probe {doc_id} says {old_word}.", 1)
        other = replicas.pick(avoid=via)
        hits = [h for h in replicas.search(old_word, token1, other) if h["doc_id"] == doc_id]
        assert hits and all(h["version"] == 1 for h in hits), (doc_id, hits)
        via, token2 = replicas.write(doc_id, f"Probe {doc_id} now says {new_word}.", 2)
        other = replicas.pick(avoid=via)
        hits = [h for h in replicas.search(new_word, token2, other) if h["doc_id"] == doc_id]
        assert hits and all(h["version"] == 2 for h in hits), (doc_id, hits)
        stale = [h for h in replicas.search(old_word, token2, other) if h["doc_id"] == doc_id]
        assert not stale, f"{doc_id}: version 1 still found after the token of version 2"
        checked += 3
    return checked


def watermarks_passed(store: QdrantServerStore, topic: str, ends: Mapping[int, int]) -> bool:
    marks = store.load_watermarks(topic)
    return all(marks.get(str(p), 0) >= end for p, end in ends.items() if end > 0)


@pytest.mark.timeout(1500)
def test_cluster_end_to_end_with_kills_stays_exact_and_reads_its_writes(
    kafka_bootstrap: str,
    make_topic: Any,
    tmp_path: Path,
    embedder: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int(os.environ.get("FRESHRAG_CLUSTER_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    started = time.monotonic()

    def say(msg: str) -> None:
        with capsys.disabled():
            print(f"\ncluster: t={time.monotonic() - started:.0f}s {msg}", flush=True)

    say(f"seed={seed} events={EVENTS} docs={DOCS} (rerun: FRESHRAG_CLUSTER_SEED={seed})")
    qdrant_binary()
    qdrant = QdrantServer(tmp_path / "qdrant", api_key=uuid.uuid4().hex, nodes=2)
    qdrant.start()
    topic = make_topic("cluster", partitions=PARTITIONS)
    collection = f"cluster_{uuid.uuid4().hex[:8]}"
    store_env = {
        "FRESHRAG_QDRANT_URL": qdrant.url,  # peer 1; peer 2 is the one that crashes
        "FRESHRAG_QDRANT_API_KEY": qdrant.api_key,
        "FRESHRAG_COLLECTION": collection,
    }
    ingest_env = {
        **store_env,
        "FRESHRAG_CLUSTER_PEER_TIMEOUT_S": "5",
        "FRESHRAG_EMBED_BACKGROUND_MIN_CHUNKS": "3",
        "FRESHRAG_STORE_RETRY_BUDGET_S": "300",
    }
    serve_env = {
        **store_env,
        "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHRAG_TOPIC": topic,
        "FRESHRAG_API_KEYS": f"{API_KEY}={TENANT}",
        "FRESHRAG_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # search only: no LLM needed
        "FRESHRAG_CONSISTENCY_TIMEOUT_S": "120",
    }
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    recovery = tmp_path / "recovery"

    def start_ingest(i: int) -> IngestCli:
        return IngestCli(
            kafka_bootstrap,
            topic,
            tmp_path / f"ingest-{i}",
            *("-w", "2", "-i", str(i), "-a", addresses, "-r", str(recovery), "-s", "1"),
            env=ingest_env,
        )

    records = mixed_events(rng, EVENTS, DOCS)
    waves = [records[i::4] for i in range(4)]
    ingest = [start_ingest(0), start_ingest(1)]
    serve = [ServeReplica(serve_env, tmp_path / "serve-a"), ServeReplica(serve_env, tmp_path / "b")]
    replicas = Replicas(serve, rng)
    store = QdrantServerStore.from_url(qdrant.url, qdrant.api_key, collection)
    checked = 0
    try:
        for replica in serve:
            wait_for(replica.ready, timeout=180, what="freshrag serve ready")
        produce(kafka_bootstrap, topic, waves[0])
        wait_for(lambda: all(p.flowing() for p in ingest), timeout=300, what="ingest flowing")
        checked += read_your_writes(replicas, 3, "a")
        say(f"phase 1 done; {checked} read-your-writes reads checked")

        # an ingest process dies mid-stream: its peer must exit rather than stall
        produce(kafka_bootstrap, topic, waves[1])
        time.sleep(rng.uniform(0.5, 4.0))
        victim = rng.randrange(2)
        ingest[victim].kill()
        survivor = ingest[1 - victim]
        rc = survivor.proc.wait(timeout=120)
        assert rc == PEER_LOST_EXIT, f"survivor exited with {rc}:\n{survivor.log_tail()}"
        assert "ingest cluster broken" in survivor.log_tail(20_000)
        say(f"killed ingest {victim}; ingest {1 - victim} exited with {rc}; restarting both")
        ingest = [start_ingest(0), start_ingest(1)]
        wait_for(lambda: all(p.flowing() for p in ingest), timeout=300, what="ingest flowing")

        # a Qdrant peer dies mid-stream: searches keep answering, ingest retries
        produce(kafka_bootstrap, topic, waves[2])
        time.sleep(rng.uniform(0.5, 3.0))
        qdrant.kill(node=2)
        outage_searches = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for replica in serve:
                replicas.search("stream index vector", via=replica)  # asserts 200
                outage_searches += 1
        assert all(p.alive for p in ingest), [p.log_tail() for p in ingest]
        qdrant.start()  # restarts only the dead peer, on its storage
        say(f"killed and restarted qdrant peer 2; {outage_searches} searches answered meanwhile")
        checked += read_your_writes(replicas, 3, "b")

        produce(kafka_bootstrap, topic, waves[3])
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        wait_for(
            lambda: all(p.alive for p in ingest) and watermarks_passed(store, topic, ends),
            timeout=600,
            what="published watermarks past the log end",
            show=lambda: (store.load_watermarks(topic), ends),
        )
        # the watermarks say every record is final: the index must already be exact
        payloads = store.scroll_payloads()
        say(f"watermarks passed the log end {ends}; {checked} read-your-writes reads checked")
        # SIGTERM to one process stops the whole cluster cleanly (a bytewax cluster cannot
        # finish without all its processes): both exit 0, neither hangs
        ingest[0].proc.terminate()
        for p in ingest:
            assert p.proc.wait(timeout=120) == 0, p.log_tail()
    finally:
        for p in ingest:
            if p.alive:
                p.kill()
        for replica in serve:
            replica.stop()
        info = None
        try:
            info = store.client.get_collection(collection)
        finally:
            store.close()
            qdrant.stop()

    log = read_log(kafka_bootstrap, topic)
    expected = expected_chunks(expected_documents(log), embedder)
    report = compare_index(expected, payloads)
    dead = dead_letter_positions(log)
    dlq = dlq_sources(kafka_bootstrap, f"{topic}.dlq")
    say(
        f"seed={seed} events={len(log)} {report.figures()} docs={report.documents} "
        f"chunks={report.chunks} points={len(payloads)} dead_letters={len(dead)}"
    )
    assert report.exact, f"seed {seed}: {report.figures()}\n" + "\n".join(report.problems)
    assert set(dlq) == dead, f"seed {seed}: DLQ {sorted(set(dlq) ^ dead)[:10]} differ"
    assert info is not None
    params = info.config.params
    assert (params.shard_number, params.replication_factor) == (2, 2)
