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
    dlq_sources,
    end_offsets,
    expected_chunks,
    expected_documents,
    mixed_events,
    produce,
    read_log,
    verify_cli,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

EVENTS = int(os.environ.get("FRESHRAG_SOAK_EVENTS", "2000"))
KILLS = int(os.environ.get("FRESHRAG_SOAK_KILLS", "5"))
DOCS = int(os.environ.get("FRESHRAG_SOAK_DOCS", str(max(40, EVENTS // 7))))
PARTITIONS = 4
# Multi-chunk documents (about 12% of them) take the background embed lane, so kills also land
# while a large document is embedded there, beside the small-batch lane.
LANES = {"FRESHRAG_EMBED_BACKGROUND_MIN_CHUNKS": "3"}


def soak_seed() -> int:
    given = os.environ.get("FRESHRAG_SOAK_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**31)


@pytest.mark.timeout(max(900, EVENTS // 4 + KILLS * 90))
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

    # One wave of events per ingest process, produced as it starts, so every kill lands with
    # work in flight. Each kill is drawn: during start-up/recovery, while the flow runs (its
    # first epoch may not be snapshotted yet), or "steady": after it caught up and snapshotted,
    # a few seconds into the next wave (the restart then resumes mid-log).
    waves = KILLS + 1
    size = -(-len(records) // waves)
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    work = tmp_path / "ingest"
    recovery = ["-r", str(tmp_path / "recovery"), "-s", "1"]
    kills, kill_after, resumed, background = 0, [], 0, 0.0
    proc = IngestCli(kafka_bootstrap, topic, work, *recovery, env=LANES)
    try:
        for wave in range(KILLS):
            draw = moments.random()
            if draw < 0.2:
                when, delay = "start-up", moments.uniform(0.5, 8.0)
            elif draw < 0.5:
                proc.wait_caught_up(end_offsets(kafka_bootstrap, topic, PARTITIONS), 600)
                time.sleep(1.5)  # an epoch closes: a snapshot covers everything so far
                when, delay = "the next wave after a snapshot", moments.uniform(0.2, 6.0)
            else:
                when, delay = "flowing", moments.uniform(0.2, 12.0)
            produce(kafka_bootstrap, topic, chunks[wave])
            if when == "flowing":
                wait_for(proc.flowing, timeout=180, what="ingest flowing")
            time.sleep(delay)
            assert proc.alive, f"ingest died on its own:\n{proc.log_tail()}"
            seen = proc.metrics()
            background += seen.get("background", 0)
            if seen and sum(seen["offsets"].values()) > seen["read"]:
                resumed += 1  # it started past offset 0: resumed from a recovery snapshot
            proc.kill()
            kills += 1
            kill_after.append(round(delay, 1))
            with capsys.disabled():
                print(
                    f"crash soak: t={time.monotonic() - started:.0f}s kill {kills}/{KILLS} "
                    f"{delay:.1f} s into {when}; metrics at the kill: {seen}"
                )
            proc = IngestCli(kafka_bootstrap, topic, work, *recovery, env=LANES)
        for rest in chunks[KILLS:]:
            produce(kafka_bootstrap, topic, rest)
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        proc.wait_caught_up(ends, timeout=600)
        background += proc.metrics().get("background", 0)
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
    dlq = dlq_sources(kafka_bootstrap, f"{topic}.dlq")
    with capsys.disabled():
        print(
            f"crash soak: seed={seed} events={len(log)} kills={kills} {report.figures()} "
            f"docs={report.documents} chunks={report.chunks} points={len(payloads)} "
            f"dead_letters={len(dead)} kill_after_s={kill_after} resumed_mid_log={resumed} "
            f"background_lane_records={background:.0f} "
            f"duration_s={time.monotonic() - started:.0f}"
        )
    assert report.exact, f"seed {seed}: {report.figures()}\n" + "\n".join(report.problems)
    # `freshrag verify` agrees: nothing missing, stale or left over, nothing still in flight
    code, verified = verify_cli(kafka_bootstrap, topic, work / "index")
    assert code == 0 and verified["clean"], f"seed {seed}: {verified}"
    assert verified["counts"]["in_flight"] == 0 and verified["records"] == len(log), verified
    assert background > 0, "no record took the background embed lane: the soak missed it"
    # every bad record reached the DLQ (at least once), and no good one did
    assert set(dlq) == dead, f"seed {seed}: not dead-lettered {sorted(dead - set(dlq))[:10]}, " + (
        f"dead-lettered but valid {[(k, dlq[k]) for k in sorted(set(dlq) - dead)][:10]}"
    )
