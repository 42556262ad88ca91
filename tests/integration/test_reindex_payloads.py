"""`freshrag reindex` when only the model changes, on a real Qdrant server: the serving
generation's stored chunks are re-embedded (no parsing, no chunking), then the topic replay
catches up with what came after. Here the model changes from fp32 ONNX to the int8 export of
the bundled model (`FRESHRAG_EMBED_BACKEND=onnx-int8`), which is a different build to the index.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from freshrag.core.settings import load_settings
from freshrag.ingest.events import delete_event, upsert_event
from freshrag.ingest.producer import EventProducer
from freshrag.retrieve.stores import open_catalog
from tests.conftest import ROOT
from tests.integration.harness import IngestCli, end_offsets, verify_cli

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 2
KEPT = ("tenant", "doc_id", "version", "chunk_index", "chunk_count", "text", "title", "acl")


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i % 89} reactor{i % 11} coolant" for i in range(n))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def chunks(client: Any, collection: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(tenant, doc, chunk_index) -> the payload fields a payload copy must keep, plus the
    dense vector."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    offset = None
    while True:
        page, offset = client.scroll(
            collection, limit=256, offset=offset, with_payload=True, with_vectors=True
        )
        for point in page:
            p = point.payload
            vector = point.vector["dense"] if isinstance(point.vector, dict) else point.vector
            row = {k: p.get(k) for k in KEPT}
            row["dense"] = list(vector)
            out[(p["tenant"], p["doc_id"], p["chunk_index"])] = row
        if offset is None:
            return out


@pytest.mark.timeout(900)
def test_only_the_model_changes_so_the_stored_chunks_are_re_embedded(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, qdrant_server: tuple[str, str | None]
) -> None:
    url, key = qdrant_server
    topic = make_topic("reindex-payloads", partitions=PARTITIONS)
    collection = f"payloads_{uuid.uuid4().hex[:8]}"
    server = {"FRESHRAG_QDRANT_URL": url, "FRESHRAG_COLLECTION": collection}
    if key:
        server["FRESHRAG_QDRANT_API_KEY"] = key
    events = [
        upsert_event(f"doc-{i}", words(f"w{i}x", 60 + 90 * (i % 3)), title=f"Manual {i}", version=1)
        for i in range(8)
    ]
    events.append(
        upsert_event("secret", words("s", 40), tenant="acme", version=2, acl={"users": ["ann"]})
    )
    events.append(delete_event("doc-7", version=2))
    producer = EventProducer(kafka_bootstrap, topic)
    try:
        producer.send_many(events)
        work = tmp_path / "ingest"
        ingest = IngestCli(kafka_bootstrap, topic, work, "-r", str(work / "r"), env=server)
        try:
            ingest.wait_caught_up(end_offsets(kafka_bootstrap, topic, PARTITIONS), timeout=300)
            assert ingest.terminate() == 0, ingest.log_tail()
        finally:
            if ingest.alive:
                ingest.kill()
        # written while no ingest runs: only the topic catch-up after the copy can index it
        producer.send(upsert_event("late", words("late", 50), title="Late", version=1))
    finally:
        producer.close()

    from qdrant_client import QdrantClient

    settings = load_settings(kafka_bootstrap=kafka_bootstrap, topic=topic, **_lower(server))
    catalog = open_catalog(settings)
    client = QdrantClient(url=url, api_key=key, check_compatibility=False)
    old_generation = catalog.serving()
    before = chunks(client, old_generation)
    assert before and ("acme", "secret", 0) in before and ("default", "doc-7", 0) not in before

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FRESHRAG_", "QDRANT_"))},
        **server,
        "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHRAG_TOPIC": topic,
        "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
        "FRESHRAG_INDEX_PATH": str(work / "index"),
        "FRESHRAG_EMBED_BACKEND": "onnx-int8",
    }
    run = subprocess.run(
        [sys.executable, "-m", "freshrag.cli", "reindex", "-r", str(tmp_path / "reindex")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert f"source: payloads (only the model changed: {len(before)} stored chunks" in out, out
    new_generation = catalog.serving()
    assert new_generation != old_generation
    manifest = catalog.read_manifest(new_generation)
    assert manifest is not None and manifest.build["precision"] != "fp32"

    after = chunks(client, new_generation)
    late = {k: v for k, v in after.items() if k[1] == "late"}
    assert late, "the record written after the old generation was built is missing"
    copied = {k: v for k, v in after.items() if k[1] != "late"}
    assert set(copied) == set(before)
    for k, row in copied.items():
        old = before[k]
        assert {f: row[f] for f in KEPT} == {f: old[f] for f in KEPT}, k
        similarity = cosine(row["dense"], old["dense"])
        assert 0.9 < similarity < 1 - 1e-7, (k, similarity)  # re-embedded, by a close model

    code, report = verify_cli(kafka_bootstrap, topic, work / "index", env=env)
    assert code == 0 and report["clean"], json.dumps(report)[:3000]


def _lower(env: dict[str, str]) -> dict[str, Any]:
    """FRESHRAG_QDRANT_URL -> qdrant_url, as `load_settings` takes them."""
    return {k.removeprefix("FRESHRAG_").lower(): v for k, v in env.items()}
