"""Memory of the ingest flow's recoverable state per million documents.

The version gate keeps one small entry per live (tenant, document) and forgets deletes after
FRESHRAG_DELETE_RETENTION_S; the watermark tracker keeps only offsets in flight. This measures
the gate state as Python objects (tracemalloc) and as snapshot bytes (pickle, what bytewax
writes to its recovery store), for N documents, and prints the figures per million.

    python -m benchmarks.gate_state_memory [N]
"""

from __future__ import annotations

import gc
import json
import pickle
import sys
import tracemalloc
from datetime import UTC, datetime

from freshrag.ingest.events import Delete, RecordOrigin, Upsert
from freshrag.ingest.ordering import gate, prune
from freshrag.ingest.watermarks import WatermarkTracker

NOW_MS = 1_800_000_000_000


def build(n: int, delete_every: int = 0) -> dict[str, object]:
    states: dict[str, object] = {}
    when = datetime(2026, 11, 29, tzinfo=UTC)
    for i in range(n):
        doc = f"doc-{i:08d}"
        origin = RecordOrigin("documents", i % 4, i, NOW_MS)
        event = Upsert("acme", doc, 1_700_000_000_000 + i, "", "x", when, origin)
        state, _ = gate(None, event, NOW_MS)
        if delete_every and i % delete_every == 0:
            later = RecordOrigin("documents", i % 4, n + i, NOW_MS)
            state, _ = gate(state, Delete("acme", doc, None, later), NOW_MS)
        states[doc] = state
    return states


def measure(n: int) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    states = build(n)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    snapshot_bytes = sum(len(pickle.dumps(s)) + len(k) for k, s in states.items())
    with_deletes = build(n, delete_every=2)
    pruned = {
        k: p
        for k, s in with_deletes.items()
        if (p := prune(s, NOW_MS + 86_400_001, 86_400_000)) is not None  # type: ignore[arg-type]
    }
    tracker = WatermarkTracker()
    for batch in range(n // 1000):
        offsets = list(range(batch * 1000, batch * 1000 + 1000))
        tracker.read(0, offsets, offsets[-1] + 1)
        tracker.done_many((0, o) for o in offsets)
    per_million = 1_000_000 / n
    return {
        "documents": n,
        "gate_python_mb_per_million_docs": round(current * per_million / 2**20, 1),
        "gate_snapshot_mb_per_million_docs": round(snapshot_bytes * per_million / 2**20, 1),
        "gate_keys_after_deletes_expire_fraction": round(len(pruned) / n, 3),
        "watermark_offsets_held_after_n_records": tracker.in_flight(),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    figures = measure(n)
    print(json.dumps(figures, indent=2))
    print(
        f"\n| documents | gate state in memory | gate snapshot | keys left once deletes expire "
        f"| watermark offsets held |\n|---:|---:|---:|---:|---:|\n"
        f"| {n:,} | {figures['gate_python_mb_per_million_docs']} MB / 1M docs "
        f"| {figures['gate_snapshot_mb_per_million_docs']} MB / 1M docs "
        f"| {figures['gate_keys_after_deletes_expire_fraction']:.0%} (half deleted) "
        f"| {figures['watermark_offsets_held_after_n_records']} |"
    )


if __name__ == "__main__":
    main()
