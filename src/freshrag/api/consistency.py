"""Read-your-writes: a write returns `partition:offset`; a read with that token waits, bounded,
until the flow's indexed watermark of that partition has passed the offset."""

from __future__ import annotations

import time

from fastapi import HTTPException

from freshrag.api.services import Services


def parse_token(token: str) -> dict[int, int]:
    """'p:o' or 'p:o,p:o' -> {partition: offset}."""
    wanted: dict[int, int] = {}
    for part in token.split(","):
        partition, sep, offset = part.strip().partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ValueError("consistency_token must look like 'partition:offset[,...]'")
        p, o = int(partition), int(offset)
        wanted[p] = max(o, wanted.get(p, -1))
    return wanted


def satisfied(wanted: dict[int, int], watermark: dict[str, int]) -> bool:
    return all(watermark.get(str(p), 0) > o for p, o in wanted.items())


def wait_for_token(services: Services, token: str | None, poll_s: float = 0.02) -> None:
    """Block until the index holds every record up to the token, or answer 504 on timeout."""
    if not token:
        return
    try:
        wanted = parse_token(token)
    except ValueError as exc:
        raise HTTPException(
            422, {"type": "invalid", "field": "consistency_token", "message": str(exc)}
        ) from None
    if services.watermarks is None:
        raise HTTPException(
            501,
            {
                "type": "not_supported",
                "field": "consistency_token",
                "message": "this deployment publishes no indexed watermarks",
            },
        )
    deadline = time.monotonic() + services.settings.consistency_timeout_s
    while True:
        watermark = services.watermarks()
        if satisfied(wanted, watermark):
            return
        if time.monotonic() >= deadline:
            raise HTTPException(
                504,
                {
                    "type": "consistency_timeout",
                    "message": f"index has not reached {token} within "
                    f"{services.settings.consistency_timeout_s:g}s",
                    "watermark": watermark,
                },
            )
        time.sleep(poll_s)
