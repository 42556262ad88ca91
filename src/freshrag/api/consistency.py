"""Read-your-writes: a write returns `partition:offset`; a read with that token waits, bounded,
until the flow's indexed watermark of that partition has passed the offset. The wait is async
(see api.limits): waiting requests hold no thread."""

from __future__ import annotations

from freshrag.api.errors import api_error, invalid_input
from freshrag.api.limits import WAIT_RETRY_AFTER_S, Limits, too_many
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


async def wait_for_token(services: Services, limits: Limits, token: str | None) -> None:
    """Wait, without holding a pool thread, until the index holds every record up to the
    token; 504 on timeout, 429 when `max_consistency_waits` requests are already waiting."""
    if not token:
        return
    try:
        wanted = parse_token(token)
    except ValueError as exc:
        raise invalid_input("consistency_token", str(exc)) from None
    if services.watermarks is None or limits.watch is None:
        raise api_error(
            501,
            "not_supported",
            "this deployment publishes no indexed watermarks",
            field="consistency_token",
        )
    full = limits.waits.try_acquire()
    if full is not None:
        raise too_many(
            f"too many requests are waiting on consistency tokens (limit {limits.waits.total}); "
            "retry shortly",
            WAIT_RETRY_AFTER_S,
            limit=limits.waits.total,
            scope=full,
            openai=False,
        )
    try:
        timeout = services.settings.consistency_timeout_s
        if await limits.watch.wait_until(lambda wm: satisfied(wanted, wm), timeout):
            return
    finally:
        limits.waits.release()
    raise api_error(
        504,
        "consistency_timeout",
        f"index has not reached {token} within {timeout:g}s",
        watermark=limits.watch.latest or {},
    )
