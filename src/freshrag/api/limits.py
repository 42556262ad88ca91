"""Admission limits and waiting off the shared threadpool.

Starlette runs sync routes in one pool of 40 threads. Whatever can wait long must not sit
there, or a few dozen slow requests stall every route, `/healthz` included. So:

- consistency-token waits are async: one poller per app reads the watermarks (in a small
  executor of its own) and wakes the waiters when they move; past `max_consistency_waits`
  waiters a request gets 429;
- LLM calls (a whole answer, or each `next()` of a stream) run in a dedicated executor with
  one thread per chat slot; a chat takes a slot for its whole life, per tenant and in total,
  and past either limit gets 429 with `Retry-After`. A slot is given back only when the LLM
  work on its thread has finished (a client that disconnects mid-stream frees it once the
  upstream stream is closed), so the executor never queues.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import Depends, HTTPException, Request

from freshrag.core.settings import Settings

log = logging.getLogger("freshrag.api")
P = ParamSpec("P")
T = TypeVar("T")
CHAT_RETRY_AFTER_S = 2
WAIT_RETRY_AFTER_S = 1
Watermarks = dict[str, int]


class SlotLimiter:
    """Counting limits in total and per key, never blocking: `try_acquire` says yes or no.
    Thread-safe, because slots are given back from executor threads."""

    def __init__(self, total: int, per_key: int | None = None) -> None:
        self.total = total
        self.per_key = per_key
        self._in_use = 0
        self._by_key: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str = "") -> str | None:
        """None when a slot was taken, else the limit that is full ('tenant' or 'total')."""
        with self._lock:
            if self.per_key is not None and self._by_key.get(key, 0) >= self.per_key:
                return "tenant"
            if self._in_use >= self.total:
                return "total"
            self._in_use += 1
            self._by_key[key] = self._by_key.get(key, 0) + 1
            return None

    def release(self, key: str = "") -> None:
        with self._lock:
            self._in_use -= 1
            left = self._by_key.get(key, 0) - 1
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)

    @property
    def in_use(self) -> int:
        return self._in_use


def too_many(
    message: str, retry_after: int, *, limit: int, scope: str, openai: bool
) -> HTTPException:
    """429 in the project's error shape, or OpenAI's (message/type/param/code) for its route."""
    if openai:
        error: dict[str, Any] = {
            "message": message,
            "type": "rate_limit_exceeded",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    else:
        error = {"type": "rate_limited", "code": "too_many_requests", "message": message}
    error.update({"limit": limit, "scope": scope})
    return HTTPException(429, error, headers={"Retry-After": str(retry_after)})


class ChatSlot:
    """One admitted chat: its LLM work runs, one call at a time, in the LLM executor."""

    def __init__(self, limits: Limits, tenant: str) -> None:
        self._limits = limits
        self._tenant = tenant
        self._pending: Future[Any] | None = None
        self._released = False
        self._lock = threading.Lock()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking LLM work off the shared pool; cancelling the await leaves it running
        to its end, and `release` waits for that."""
        future = self._limits.llm_executor.submit(fn, *args, **kwargs)
        self._pending = future
        return await asyncio.wrap_future(future)

    def release(self, cleanup: Callable[[], object] | None = None) -> None:
        """Give the slot back once the running call and `cleanup` (e.g. closing the upstream
        stream) are done. Idempotent; never blocks the event loop."""
        with self._lock:
            if self._released:
                return
            self._released = True

        def finish() -> None:
            try:
                if cleanup is not None:
                    cleanup()
            except Exception:
                log.exception("closing an LLM call failed")
            finally:
                self._limits.chat.release(self._tenant)

        pending = self._pending
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: finish())
        elif cleanup is not None:
            try:
                self._limits.llm_executor.submit(finish)
            except RuntimeError:  # executor shut down (app stopping)
                finish()
        else:
            finish()

    def release_with(self, owner: object, cleanup: Callable[[], object] | None = None) -> None:
        """Release when `owner` (a response's body iterator) is garbage collected, in case it
        is dropped before it ever ran (a client gone before the first byte)."""
        weakref.finalize(owner, self.release, cleanup)


class WatermarkWatch:
    """One poller for all waiters: reads the watermarks every `poll_s` while anyone waits and
    wakes the waiters when they moved. Readers run in a one-thread executor of its own."""

    def __init__(
        self, read: Callable[[], Watermarks], executor: ThreadPoolExecutor, poll_s: float = 0.02
    ) -> None:
        self._read = read
        self._executor = executor
        self.poll_s = poll_s
        self.latest: Watermarks | None = None
        self.waiting = 0
        self._tick: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_polling(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (a test client re-entered): start over
            self._loop, self._tick, self._task = loop, asyncio.Event(), None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._poll())
        assert self._tick is not None
        return self._tick

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while self.waiting > 0:
            try:
                value = dict(await loop.run_in_executor(self._executor, self._read))
            except Exception:
                log.exception("reading the indexed watermarks failed")
            else:
                if value != self.latest:
                    self.latest = value
                    tick, self._tick = self._tick, asyncio.Event()
                    if tick is not None:
                        tick.set()
            await asyncio.sleep(self.poll_s)

    async def wait_until(self, done: Callable[[Watermarks], bool], timeout: float) -> bool:
        """True once `done(watermarks)` holds, False after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while True:
                tick = self._ensure_polling()
                if self.latest is not None and done(self.latest):
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(tick.wait(), remaining)
                except TimeoutError:
                    return self.latest is not None and done(self.latest)
        finally:
            self.waiting -= 1


class Limits:
    """The app's admission limits and its executors; built in the lifespan, closed at its end."""

    def __init__(self, settings: Settings, watermarks: Callable[[], Watermarks] | None) -> None:
        self.chat = SlotLimiter(
            settings.max_concurrent_chat, settings.max_concurrent_chat_per_tenant
        )
        self.waits = SlotLimiter(settings.max_consistency_waits)
        self.llm_executor = ThreadPoolExecutor(
            settings.max_concurrent_chat, thread_name_prefix="freshrag-llm"
        )
        self._watermark_executor = ThreadPoolExecutor(1, thread_name_prefix="freshrag-watermarks")
        self.watch = (
            WatermarkWatch(watermarks, self._watermark_executor) if watermarks is not None else None
        )

    def chat_slot(self, tenant: str, *, openai: bool = False) -> ChatSlot:
        """A slot for one chat, or 429 when the tenant's or the total limit is reached."""
        full = self.chat.try_acquire(tenant)
        if full is None:
            return ChatSlot(self, tenant)
        limit = self.chat.per_key if full == "tenant" else self.chat.total
        who = "for this tenant" if full == "tenant" else "on this server"
        raise too_many(
            f"too many chat requests in flight {who} (limit {limit}); retry shortly",
            CHAT_RETRY_AFTER_S,
            limit=int(limit or 0),
            scope=full,
            openai=openai,
        )

    def close(self) -> None:
        self.llm_executor.shutdown(wait=False, cancel_futures=True)
        self._watermark_executor.shutdown(wait=False, cancel_futures=True)


async def get_limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


LimitsDep = Annotated[Limits, Depends(get_limits)]
