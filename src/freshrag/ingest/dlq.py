"""Fit a dead letter into the DLQ's message size limit (pure, no Kafka import).

A dead letter carries the original key and value bytes plus reason headers, so a record that
was dead-lettered for being too large (or any record near the broker's limit) can be larger
than the DLQ producer may send; the producer would then raise MSG_SIZE_TOO_LARGE and stop the
flow. `fit_dead_letter` truncates such a message so that it always fits, and says so in the
headers `freshrag.truncated: true` and `freshrag.original.size: <value bytes>` (plus
`freshrag.original.key.size` when the key had to be cut too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_DLQ_MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's default message.max.bytes
MIN_DLQ_MAX_MESSAGE_BYTES = 16_384  # room for the reason headers, whatever the payload
# Bytes kept free for Kafka's record and record-batch framing (61-byte batch header, varints).
RECORD_OVERHEAD = 512
MAX_HEADER_BYTES = 1_024  # a header value is cut to this only when the headers alone are huge

TRUNCATED_HEADER = "freshrag.truncated"
ORIGINAL_SIZE_HEADER = "freshrag.original.size"
ORIGINAL_KEY_SIZE_HEADER = "freshrag.original.key.size"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class FittedMessage:
    key: bytes | None
    value: bytes | None
    headers: Headers
    truncated: bool


def message_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """Bytes of key, value and headers (names and values): what the producer size check counts,
    less the framing that `RECORD_OVERHEAD` stands for."""
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(name.encode()) + len(data) for name, data in headers)
    )


def fit_dead_letter(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    max_bytes: int = DEFAULT_DLQ_MAX_MESSAGE_BYTES,
) -> FittedMessage:
    """The message unchanged if it fits in `max_bytes` (framing included), else truncated.

    The value is cut first; the key only if it alone leaves no room. Truncation adds the headers
    `freshrag.truncated: true` and `freshrag.original.size` (the value's original byte length).
    """
    if max_bytes < MIN_DLQ_MAX_MESSAGE_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_DLQ_MAX_MESSAGE_BYTES}")
    budget = max_bytes - RECORD_OVERHEAD
    if message_size(key, value, headers) <= budget:
        return FittedMessage(key, value, list(headers), truncated=False)
    out: Headers = [
        *headers,
        (TRUNCATED_HEADER, b"true"),
        (ORIGINAL_SIZE_HEADER, str(len(value or b"")).encode()),
    ]
    if message_size(None, None, out) > budget // 2:  # only if a caller adds huge headers
        out = [(name, data[:MAX_HEADER_BYTES]) for name, data in out]
    room = budget - message_size(key, None, out)
    if room >= 0:
        return FittedMessage(key, None if value is None else value[:room], out, truncated=True)
    # The key alone is too large: keep as much of it as fits and none of the value.
    out.append((ORIGINAL_KEY_SIZE_HEADER, str(len(key or b"")).encode()))
    key_room = max(0, budget - message_size(None, None, out))
    cut_key = None if key is None else key[:key_room]
    return FittedMessage(cut_key, None if value is None else b"", out, truncated=True)
