"""LLM adapter over the official `openai` client, for any OpenAI-compatible base URL.

Why it wraps the client:
- Deterministic by default (temperature 0, seed 42), so the same question over the same
  sources gives the same answer; tests and caches rely on that.
- Our own retry policy (tenacity, exponential backoff) on transient failures only: connection
  errors, timeouts, 429 and 5xx. A 4xx is our bug or bad config and retrying cannot fix it. The
  SDK's built-in retries are off (`max_retries=0`) so attempts are counted in one place.
- A stream is retried only before its first token; after that a retry would repeat text the
  client has already shown.
- Every failure surfaces as LLMError naming the upstream, so the API needs no knowledge of
  openai's exception tree: LLMUnavailable (unreachable, timeouts, 429, 5xx after retries) maps
  to 503, any other LLMError (4xx: bad key, unknown model, prompt too long) to 502. The API key
  is never logged or put in messages; user:password in the base URL is redacted.

The client is synchronous; the API calls it from a threadpool (Starlette's `run_in_threadpool`
or `iterate_in_threadpool` for streams), which keeps the event loop free.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import openai
from openai import OpenAI
from pydantic import SecretStr
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from freshrag.core.urls import redact_url
from freshrag.generate.prompt import ChatMessage

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

    from freshrag.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def _http_errors(name: str) -> tuple[type[Exception], ...]:
    """(TransportError, TimeoutException) of an HTTP library, if installed."""
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return ()
    return (mod.TransportError, mod.TimeoutException)


# openai 1.x talks through httpx, newer releases through httpx2. Both raise their transport
# errors unwrapped while a stream body is read, so catch whichever is installed.
_HTTP = {name: _http_errors(name) for name in ("httpx", "httpx2")}
TRANSPORT_ERRORS: tuple[type[Exception], ...] = tuple(
    errors[0] for errors in _HTTP.values() if errors
)
TIMEOUT_ERRORS: tuple[type[Exception], ...] = tuple(
    errors[1] for errors in _HTTP.values() if errors
)
_CALL_ERRORS: tuple[type[Exception], ...] = (openai.OpenAIError, *TRANSPORT_ERRORS)


class LLMError(RuntimeError):
    """The upstream rejected the request (4xx, bad response): not retried; the API answers 502."""

    verb = "failed"

    def __init__(self, upstream: str, reason: str, status_code: int | None = None) -> None:
        self.upstream = upstream
        self.reason = reason
        self.status_code = status_code
        super().__init__(f"LLM upstream {upstream} {self.verb}: {reason}")


class LLMUnavailable(LLMError):
    """Unreachable, timing out, 429 or 5xx after all retries: the API answers 503."""

    verb = "unavailable"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str | None = None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the request may succeed unchanged a moment later.

    HTTP transport errors show up unwrapped while a stream body is being read.
    """
    if isinstance(exc, (openai.APIConnectionError, *TRANSPORT_ERRORS)):
        return True
    if isinstance(exc, openai.RateLimitError | openai.InternalServerError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (openai.APITimeoutError, *TIMEOUT_ERRORS)):
        return "request timed out"
    if isinstance(exc, TRANSPORT_ERRORS):
        return f"connection failed ({type(exc).__name__})"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection failed ({type(cause).__name__ if cause else 'no response'})"
    if isinstance(exc, openai.APIStatusError):
        message = str(getattr(exc, "message", "") or "").strip()
        return f"HTTP {exc.status_code}" + (f": {message[:200]}" if message else "")
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class LLMClient:
    """Chat completions against one OpenAI-compatible endpoint and model."""

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        model: str,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        temperature: float = 0.0,
        seed: int | None = 42,
        stop: Sequence[str] | None = ("<source", "</source"),
        ping_timeout_s: float = 3.0,
        client: OpenAI | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.upstream = redact_url(base_url)
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.temperature = temperature
        self.seed = seed
        # Small models sometimes start echoing the prompt's source blocks: cut the answer there.
        self.stop = list(stop) if stop else None
        self.ping_timeout_s = ping_timeout_s
        self._client = client or OpenAI(
            base_url=base_url, api_key=key or "none", timeout=timeout_s, max_retries=0
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LLMClient:
        """Build from the process settings (the app lifespan does this once)."""
        kwargs: dict[str, Any] = {
            "timeout_s": settings.llm_timeout_s,
            "max_retries": settings.llm_max_retries,
        }
        kwargs.update(overrides)
        return cls(
            settings.openai_base_url, settings.openai_api_key, settings.openai_model, **kwargs
        )

    def __repr__(self) -> str:  # never the key
        return f"LLMClient(upstream={self.upstream!r}, model={self.model!r})"

    # -- calls ---------------------------------------------------------------------------

    def complete(self, messages: Sequence[ChatMessage], max_tokens: int) -> Completion:
        """One non-streamed answer. Raises LLMUnavailable / LLMError."""

        def call() -> Completion:
            resp = self._client.chat.completions.create(
                **self._params(messages, max_tokens), stream=False
            )
            choice = resp.choices[0] if resp.choices else None
            usage = (
                Usage(
                    resp.usage.prompt_tokens,
                    resp.usage.completion_tokens,
                    resp.usage.total_tokens,
                )
                if resp.usage
                else None
            )
            return Completion(
                text=(choice.message.content or "") if choice else "",
                usage=usage,
                finish_reason=choice.finish_reason if choice else None,
                model=resp.model,
            )

        return self._retrying(call)

    def stream(self, messages: Sequence[ChatMessage], max_tokens: int) -> DeltaStream:
        """Token deltas as they arrive. Connects (with retries) before returning.

        Opening is eager: the request is sent and the first delta awaited here, so an
        unreachable upstream raises LLMUnavailable from this call, before the API has
        started its own streamed response. No retry happens after the first delta: it would
        repeat text the client has already shown.
        """

        def open_stream() -> tuple[Any, Iterator[ChatCompletionChunk], str | None]:
            stream = self._client.chat.completions.create(
                **self._params(messages, max_tokens), stream=True
            )
            chunks = iter(stream)
            try:
                for chunk in chunks:
                    delta = _delta(chunk)
                    if delta:
                        return stream, chunks, delta
            except BaseException:
                stream.close()
                raise
            return stream, chunks, None

        stream, chunks, first = self._retrying(open_stream)
        return DeltaStream(stream, chunks, first, self._wrap)

    def ping(self) -> list[str]:
        """Model ids the upstream serves; one quick try (for /readyz). Raises LLMUnavailable."""
        try:
            client = self._client.with_options(timeout=self.ping_timeout_s, max_retries=0)
            return [m.id for m in client.models.list()]
        except _CALL_ERRORS as exc:
            raise LLMUnavailable(self.upstream, _reason(exc), _status(exc)) from exc

    def ready(self) -> bool:
        """True when the upstream answers a model listing quickly."""
        try:
            self.ping()
        except LLMUnavailable:
            return False
        return True

    def close(self) -> None:
        self._client.close()

    # -- internals -----------------------------------------------------------------------

    def _params(self, messages: Sequence[ChatMessage], max_tokens: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": cast("list[ChatCompletionMessageParam]", [dict(m) for m in messages]),
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        if self.seed is not None:
            params["seed"] = self.seed
        if self.stop:
            params["stop"] = self.stop
        return params

    def _retrying(self, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.backoff_max_s),
            retry=retry_if_exception(is_transient),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(fn)
        except _CALL_ERRORS as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            raise self._wrap(exc, attempts=attempts) from exc

    def _wrap(self, exc: Exception, prefix: str = "", attempts: int = 1) -> LLMError:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        reason = f"{prefix}{_reason(exc)}{tries}"
        if is_transient(exc):
            return LLMUnavailable(self.upstream, reason, _status(exc))
        return LLMError(self.upstream, reason, _status(exc))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "LLM upstream %s attempt %d failed (%s); retrying",
            self.upstream,
            state.attempt_number,
            _reason(exc) if exc else "unknown",
        )


class DeltaStream(Iterator[str]):
    """Text deltas of one open completion stream; `close()` ends it upstream.

    Closing (or exhausting) closes the HTTP response, which makes the server stop
    generating: the API closes it when its client disconnects.
    """

    def __init__(
        self,
        stream: Any,
        chunks: Iterator[ChatCompletionChunk],
        first: str | None,
        wrap: Callable[..., LLMError],
    ) -> None:
        self._stream = stream
        self._chunks = chunks
        self._first = first
        self._wrap = wrap
        self._closed = False
        if first is None:
            self.close()

    def __next__(self) -> str:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._closed:
            raise StopIteration
        try:
            for chunk in self._chunks:
                delta = _delta(chunk)
                if delta:
                    return delta
        except _CALL_ERRORS as exc:
            self.close()
            raise self._wrap(exc, "stream interrupted after the first token: ") from exc
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._first = None
            self._stream.close()


def _status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def _delta(chunk: ChatCompletionChunk) -> str:
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""
