"""kill -9 soak: `freshrag ingest` (Edge index, recovery on) is SIGKILLed at seeded random
moments while mixed events stream in, restarted on the same recovery directory each time; at
the end the index must equal the state the log implies (tests.integration.harness model).

Size by environment: FRESHRAG_SOAK_EVENTS (2000), FRESHRAG_SOAK_KILLS (5), FRESHRAG_SOAK_DOCS
(events / 7), FRESHRAG_SOAK_SEED (random; printed). `make soak` runs it big.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from freshrag.retrieve.edge_store import EdgeStore
from tests.integration.harness import (
    IngestCli,
    compare_index,
    dead_letter_positions,
    end_offsets,
    expected_chunks,
    expected_documents,
    mixed_events,
    produce,
    read_log,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

EVENTS = int(os.environ.get("FRESHRAG_SOAK_EVENTS", "2000"))
KILLS = int(os.environ.get("FRESHRAG_SOAK_KILLS", "5"))
DOCS = int(os.environ.get("FRESHRAG_SOAK_DOCS", str(max(40, EVENTS // 7))))
PARTITIONS = 4


def soak_seed() -> int:
    given = os.environ.get("FRESHRAG_SOAK_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**31)


def dlq_positions(bootstrap: str, topic: str) -> set[tuple[int, int]]:
    """(partition, offset) of the source records that reached the DLQ (duplicates merged)."""
    out = set()
    for record in read_log(bootstrap, topic):
        headers = dict(record.headers)
        part = headers.get("freshrag.source.partition")
        offset = headers.get("freshrag.source.offset")
        if part is not None and offset is not None:
            out.add((int(part), int(offset)))
    return out


@pytest.mark.timeout(max(600, EVENTS // 10 + KILLS * 60))
def test_kill9_at_random_moments_leaves_the_index_exact(
    kafka_bootstrap: str,
    make_topic: Any,
    tmp_path: Path,
    embedder: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = soak_seed()
    with capsys.disabled():
        print(
            f"\ncrash soak: seed={seed} events={EVENTS} kills={KILLS} docs={DOCS} "
            f"(rerun: FRESHRAG_SOAK_SEED={seed})"
        )
    started = time.monotonic()
    records = mixed_events(random.Random(seed), EVENTS, DOCS)
    topic = make_topic("soak", partitions=PARTITIONS)
    moments = random.Random(seed + 1)

    # One wave of events per ingest process, produced as it starts: every kill lands with
    # work in flight (reading, embedding, writing, or recovering).
    waves = KILLS + 1
    size = -(-len(records) // waves)
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    work = tmp_path / "ingest"
    recovery = ["-r", str(tmp_path / "recovery"), "-s", "1"]
    kills, kill_after = 0, []
    proc = IngestCli(kafka_bootstrap, topic, work, *recovery)
    try:
        for wave in range(waves):
            if wave < len(chunks):
                produce(kafka_bootstrap, topic, chunks[wave])
            if kills == KILLS:
                break
            if moments.random() < 0.2:  # during start-up or recovery
                when = "start-up"
                delay = moments.uniform(0.5, 8.0)
            else:  # while the flow runs
                wait_for(proc.flowing, timeout=180, what="ingest flowing")
                when = f"flowing after {time.monotonic() - proc.started:.1f} s"
                delay = moments.uniform(0.2, 12.0)
            time.sleep(delay)
            assert proc.alive, f"ingest died on its own:\n{proc.log_tail()}"
            proc.kill()
            kills += 1
            kill_after.append(round(delay, 1))
            with capsys.disabled():
                print(
                    f"crash soak: t={time.monotonic() - started:.0f}s kill {kills}/{KILLS} "
                    f"{delay:.1f} s into {when}; metrics before: {proc.last_metrics}"
                )
            proc = IngestCli(kafka_bootstrap, topic, work, *recovery)
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        proc.wait_caught_up(ends, timeout=600)
        assert proc.terminate() == 0, proc.log_tail()
    finally:
        if proc.alive:
            proc.kill()

    log = read_log(kafka_bootstrap, topic)
    assert len(log) == len(records)
    expected = expected_chunks(expected_documents(log), embedder)
    store = EdgeStore(work / "index", "freshrag")
    try:
        payloads = store.scroll_payloads()
    finally:
        store.close()
    report = compare_index(expected, payloads)
    dead = dead_letter_positions(log)
    dlq = dlq_positions(kafka_bootstrap, f"{topic}.dlq")
    with capsys.disabled():
        print(
            f"crash soak: seed={seed} events={len(log)} kills={kills} {report.figures()} "
            f"docs={report.documents} chunks={report.chunks} points={len(payloads)} "
            f"dead_letters={len(dead)} kill_after_s={kill_after} "
            f"duration_s={time.monotonic() - started:.0f}"
        )
    assert report.exact, f"seed {seed}: {report.figures()}\n" + "\n".join(report.problems)
    # every bad record reached the DLQ (at least once), and no good one did
    assert dlq == dead, f"seed {seed}: not dead-lettered {sorted(dead - dlq)[:10]}, " + (
        f"dead-lettered but valid {sorted(dlq - dead)[:10]}"
    )
