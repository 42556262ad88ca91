"""Which lane a gated record takes on its way to the embedder (pure).

Small records are batched together and embedded in the flow's worker. A large document is
embedded on its own in a background lane, so a small update that arrives after it is not
stuck behind its embedding (seconds for a 100 KB document on 2 cores). Records of one source
key never overtake each other: once a key is in the background lane, its later records follow
it there, and a large record whose key waits in the small buffer flushes that buffer first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from freshrag.ingest.events import ChangeEvent, Upsert

# Characters per model token, a low estimate for English prose (MiniLM's WordPiece averages
# 4-5): it makes the estimate err towards more chunks, so towards the background lane.
CHARS_PER_TOKEN = 4.0

Lane = Literal["small", "background", "flush_then_background"]


def estimated_chunks(record: Sequence[ChangeEvent], max_tokens: int, overlap: int) -> int:
    """Chunks the record's upserts will make, from their length alone (no tokenizer)."""
    stride = max(1, max_tokens - overlap)
    total = 0
    for event in record:
        if isinstance(event, Upsert):
            tokens = (len(event.text) + len(event.title)) / CHARS_PER_TOKEN
            total += max(1, math.ceil(max(0.0, tokens - overlap) / stride))
    return total


def source_keys(record: Iterable[ChangeEvent]) -> set[str]:
    return {event.doc_id for event in record}


@dataclass
class LanePlanner:
    """Tracks which source keys wait in each lane; `route` says where the next record goes."""

    background_min_chunks: int
    small_keys: dict[str, int] = field(default_factory=dict)  # key -> records in the buffer
    background_keys: dict[str, int] = field(default_factory=dict)  # key -> jobs not done

    def route(self, keys: set[str], chunks: int) -> Lane:
        if any(k in self.background_keys for k in keys):
            return "background"  # behind its own earlier record, in order
        if chunks < self.background_min_chunks:
            return "small"
        if any(k in self.small_keys for k in keys):
            return "flush_then_background"  # the earlier small record must be written first
        return "background"

    def add_small(self, keys: set[str]) -> None:
        for k in keys:
            self.small_keys[k] = self.small_keys.get(k, 0) + 1

    def small_flushed(self) -> None:
        self.small_keys.clear()

    def add_background(self, keys: set[str]) -> None:
        for k in keys:
            self.background_keys[k] = self.background_keys.get(k, 0) + 1

    def background_done(self, keys: set[str]) -> None:
        for k in keys:
            left = self.background_keys.get(k, 0) - 1
            if left > 0:
                self.background_keys[k] = left
            else:
                self.background_keys.pop(k, None)
