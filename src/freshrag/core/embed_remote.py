"""The ``openai`` embedding backend: any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI,
Hugging Face TEI, vLLM, Ollama, or `freshrag embed-server`), through the official openai client.

A thin adapter behind the same `EncodeBackend` protocol as the local backends, so `Embedder`'s
scheduling (queries first), sub-batching and query cache are unchanged:

- **Batching.** One `encode` call sends its texts in requests of at most
  `RemoteEmbedConfig.batch_size` texts, one request at a time, in order.
- **Retries.** Our own policy (tenacity, exponential backoff, a numeric ``Retry-After`` is
  honoured) on connection errors, timeouts, 429 and 5xx only; any other 4xx is a bad request or
  bad configuration and is never retried. The SDK's own retries are off (``max_retries=0``).
- **Bounded.** Each request has `timeout_s` (connect, and each read of the response). A whole
  `encode` call, every request and retry included, ends by `deadline_s` (plus at most one read
  timeout): the body is read in pieces and the deadline checked between them, so an endpoint
  that trickles bytes cannot hold ingest forever. The body is also capped in size.
- **Checked.** `parse_embeddings` accepts exactly one finite vector per input (JSON floats, or
  base64 little-endian float32), each input's vector once, all of the expected dimension;
  anything else raises `EmbedResponseError` naming what was wrong: never a wrong-length vector.
- **Normalised.** Vectors are L2-normalised here, whether or not the endpoint did (the store
  ranks by cosine, and the local backends return unit vectors too).
- **Dimension.** Probed once when the backend is built, by embedding one short text (with the
  `dimensions` request parameter when set, which the answer must then honour); every later
  answer must have the same dimension.
- **Tokens.** Chunking counts tokens with the bundled model's tokenizer: a remote model's
  tokenizer is unknown here, so chunks are sized in bundled-model (WordPiece) tokens and capped
  at its 256-token window, which every common embedding model accepts.

Errors: `BackendUnavailableError` when the endpoint cannot serve anything right now (unreachable,
timing out, 429/5xx after the retries, 401/403/404, wrong dimension): not the input's fault.
`EmbedRequestError` when it rejected this input (another 4xx), `EmbedResponseError` when its
answer was malformed. The API key is never logged nor put in a message; user:password in the
base URL is redacted.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import openai
from openai import OpenAI
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from freshrag.core.embed_backends import (
    BackendError,
    BackendUnavailableError,
    RemoteEmbedConfig,
    Vectors,
    _max_seq_length,
    _offline,
)
from freshrag.core.urls import redact_url

log = logging.getLogger(__name__)

PROBE_TEXT = "freshrag embedding dimension probe"
# Room for one vector's JSON: up to ~24 characters a float, plus the envelope.
BYTES_PER_VALUE = 32
MAX_PROBE_DIM = 65_536
RETRY_AFTER_MAX_S = 30.0


class EmbedResponseError(BackendError):
    """The endpoint answered 2xx with something that is not one finite vector per input."""


class EmbedRequestError(BackendError):
    """The endpoint rejected the request (a 4xx other than 401/403/404/429): not retried."""


def _http_errors(name: str) -> tuple[type[Exception], ...]:
    try:
        mod = importlib.import_module(name)
    except ImportError:
        return ()
    return (mod.TransportError,)


# openai 1.x talks through httpx, newer releases through httpx2; a body read in pieces raises
# their transport errors unwrapped.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = _http_errors("httpx") + _http_errors("httpx2")
CONNECTION_ERRORS: tuple[type[Exception], ...] = (openai.APIConnectionError, *TRANSPORT_ERRORS)


def endpoint_identity(base_url: str, model: str) -> str:
    """`host[:port]/model`: which endpoint and model built an index (no scheme, path or key)."""
    parts = urlsplit(base_url)
    host = parts.hostname or base_url
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{host}/{model}"


def is_transient(exc: BaseException) -> bool:
    """Worth retrying unchanged: connection errors, timeouts, 429 and 5xx."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True  # APITimeoutError is an APIConnectionError
    return isinstance(exc, openai.APIStatusError) and (
        exc.status_code == 429 or exc.status_code >= 500
    )


def retry_after_s(exc: BaseException | None) -> float | None:
    """A numeric Retry-After header of an HTTP error, in seconds (dates are ignored)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = float(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, TRANSPORT_ERRORS):
        return f"connection failed ({type(exc).__name__})"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection failed ({type(cause).__name__ if cause else 'no response'})"
    if isinstance(exc, openai.APIStatusError):
        message = str(getattr(exc, "message", "") or "").strip()
        prefix = f"Error code: {exc.status_code}"
        if message.startswith(prefix):  # the SDK's own wording: keep only the body
            message = message[len(prefix) :].lstrip(" -")
        return f"HTTP {exc.status_code}" + (f": {message[:200]}" if message else "")
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# --- the response --------------------------------------------------------------------------


def _vector(value: object, index: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    if isinstance(value, str):  # encoding_format=base64: little-endian float32
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise EmbedResponseError(f"embedding {index} is not valid base64") from None
        if not raw or len(raw) % 4:
            raise EmbedResponseError(f"embedding {index}: {len(raw)} base64 bytes, not float32s")
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if not isinstance(value, list) or not value:
        raise EmbedResponseError(f"embedding {index} is not a non-empty list of numbers")
    if not all(type(x) is float or type(x) is int for x in value):
        bad = next(x for x in value if type(x) is not float and type(x) is not int)
        raise EmbedResponseError(f"embedding {index} holds a {type(bad).__name__}, not a number")
    try:
        return np.array(value, dtype=np.float64)
    except OverflowError:
        raise EmbedResponseError(f"embedding {index} holds a number out of range") from None


def parse_embeddings(body: bytes | str, count: int, dim: int | None = None) -> Vectors:
    """The `count` vectors of an OpenAI embeddings response, in input order, unit length.

    Raises `EmbedResponseError` unless the body is a JSON object whose `data` holds exactly
    `count` items, each with an `embedding` (a list of numbers, or base64 float32) and an
    optional `index` (each of 0..count-1 once; the list order otherwise), all vectors finite,
    non-zero and of one length; `BackendUnavailableError` when that length is not `dim`.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise EmbedResponseError("the response is not JSON") from None
    if not isinstance(payload, dict):
        raise EmbedResponseError(f"the response is a JSON {type(payload).__name__}, not an object")
    data = payload.get("data")
    if not isinstance(data, list):
        error = payload.get("error")
        detail = f" (error: {str(error)[:200]})" if error is not None else ""
        raise EmbedResponseError(f"the response has no 'data' list{detail}")
    if len(data) != count:
        raise EmbedResponseError(f"the response has {len(data)} embeddings for {count} inputs")
    rows: list[np.ndarray[Any, np.dtype[np.float64]] | None] = [None] * count
    for pos, item in enumerate(data):
        if not isinstance(item, dict):
            raise EmbedResponseError(f"data[{pos}] is a {type(item).__name__}, not an object")
        index = item.get("index", pos)
        if type(index) is not int or not 0 <= index < count:
            raise EmbedResponseError(
                f"data[{pos}] has index {str(index)[:40]!r}, not 0..{count - 1}"
            )
        if rows[index] is not None:
            raise EmbedResponseError(f"the response has two embeddings for input {index}")
        rows[index] = _vector(item.get("embedding"), index)
    vectors = [row for row in rows if row is not None]
    lengths = sorted({len(row) for row in vectors})
    if len(lengths) != 1:
        raise EmbedResponseError(f"the response mixes embedding lengths {lengths[:4]}")
    if dim is not None and lengths[0] != dim:
        raise BackendUnavailableError(
            f"the endpoint returned {lengths[0]}-d embeddings, expected {dim}"
        )
    matrix = np.stack(vectors)
    if not np.isfinite(matrix).all():
        bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise EmbedResponseError(f"embedding {bad} holds NaN or infinity")
    scale = np.abs(matrix).max(axis=1)
    if (scale == 0).any():
        raise EmbedResponseError(f"embedding {int(np.flatnonzero(scale == 0)[0])} is all zeros")
    matrix = matrix / scale[:, None]  # no overflow in the norm below
    matrix /= np.linalg.norm(matrix, axis=1)[:, None]
    unit: Vectors = matrix.astype(np.float32)
    return unit


# --- the backend ---------------------------------------------------------------------------


class _DeadlineExceeded(Exception):
    pass


class OpenAIEmbedBackend:
    """`EncodeBackend` over an OpenAI-compatible endpoint; see the module docstring."""

    name = "openai"

    def __init__(
        self,
        config: RemoteEmbedConfig,
        tokenizer_path: Path,
        *,
        client: OpenAI | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not config.base_url:
            raise BackendError(
                "FRESHRAG_EMBED_BACKEND=openai needs FRESHRAG_EMBED_OPENAI_BASE_URL "
                "(e.g. https://api.openai.com/v1 or http://127.0.0.1:8090/v1)"
            )
        if not config.model:
            raise BackendError("FRESHRAG_EMBED_BACKEND=openai needs FRESHRAG_EMBED_OPENAI_MODEL")
        _offline()
        from transformers import AutoTokenizer

        self.config = config
        self.model = config.model
        self.upstream = redact_url(config.base_url)
        self.model_identity = endpoint_identity(config.base_url, config.model)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(
            str(tokenizer_path), local_files_only=True
        )
        self.max_seq_length = _max_seq_length(tokenizer_path, self.tokenizer)
        key = config.api_key.get_secret_value()
        self._client = client or OpenAI(
            base_url=config.base_url,
            api_key=key or "none",
            timeout=config.timeout_s,
            max_retries=0,
        )
        self._sleep = sleep
        self._backoff = wait_exponential(multiplier=config.backoff_s, max=config.backoff_max_s)
        self.requests = 0  # HTTP requests sent (attempts included), for tests and metrics
        self.dim = 0
        probe = self._embed_batch([PROBE_TEXT], time.monotonic() + config.deadline_s)
        self.dim = int(probe.shape[1])
        log.info("embedding endpoint %s, model %s: %d-d", self.upstream, self.model, self.dim)

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEmbedBackend(upstream={self.upstream!r}, model={self.model!r})"

    def encode(self, texts: Sequence[str], batch_size: int) -> Vectors:
        """Unit vectors for `texts`, in requests of at most `config.batch_size` texts (the
        Embedder's `batch_size` is for local models and is ignored here)."""
        deadline = time.monotonic() + self.config.deadline_s
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = self.config.batch_size
        for start in range(0, len(texts), step):
            part = list(texts[start : start + step])
            out[start : start + len(part)] = self._embed_batch(part, deadline)
        return out

    # -- one request, retried ---------------------------------------------------------------

    def _expected_dim(self) -> int | None:
        return self.dim or self.config.dimensions

    def _byte_limit(self, count: int) -> int:
        return (1 << 20) + count * (self._expected_dim() or MAX_PROBE_DIM) * BYTES_PER_VALUE

    def _wait(self, state: RetryCallState) -> float:
        wait = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome is not None else None
        after = retry_after_s(exc)
        return max(wait, min(after, RETRY_AFTER_MAX_S)) if after is not None else wait

    def _embed_batch(self, texts: list[str], deadline: float) -> Vectors:
        started = time.monotonic()
        attempts = 0

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self.config.max_retries:
                return True
            return time.monotonic() + (state.upcoming_sleep or 0.0) >= deadline

        def attempt() -> bytes:
            nonlocal attempts
            attempts += 1
            return self._post(texts, deadline)

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop,
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            body = retrying(attempt)
        except _DeadlineExceeded:
            raise BackendUnavailableError(
                f"embedding endpoint {self.upstream} unavailable: no complete answer within "
                f"{self.config.deadline_s:g} s ({attempts} attempts)"
            ) from None
        except openai.APIStatusError as exc:
            reason = _reason(exc)
            if is_transient(exc) or exc.status_code in (401, 403, 404):
                raise BackendUnavailableError(
                    f"embedding endpoint {self.upstream} (model {self.model}) unavailable after "
                    f"{attempts} attempts in {time.monotonic() - started:.1f} s: {reason}"
                ) from None
            raise EmbedRequestError(
                f"embedding endpoint {self.upstream} (model {self.model}) rejected "
                f"{len(texts)} texts: {reason}"
            ) from None
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailableError(
                f"embedding endpoint {self.upstream} unavailable after {attempts} attempts in "
                f"{time.monotonic() - started:.1f} s: {_reason(exc)}"
            ) from None
        except openai.OpenAIError as exc:
            reason = _reason(exc)
            raise EmbedResponseError(f"embedding endpoint {self.upstream}: {reason}") from None
        except BackendError as exc:
            raise type(exc)(f"embedding endpoint {self.upstream}: {exc}") from None
        try:
            return parse_embeddings(body, len(texts), self._expected_dim())
        except BackendError as exc:
            raise type(exc)(
                f"embedding endpoint {self.upstream} (model {self.model}): {exc}"
            ) from None

    def _post(self, texts: list[str], deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceeded
        self.requests += 1
        extra: dict[str, object] = {}
        if self.config.dimensions:
            extra["dimensions"] = self.config.dimensions
        limit = self._byte_limit(len(texts))
        pieces: list[bytes] = []
        size = 0
        with self._client.embeddings.with_streaming_response.create(
            input=texts,
            model=self.model,
            encoding_format="float",
            extra_body=extra or None,
            timeout=min(self.config.timeout_s, remaining),
        ) as response:
            for piece in response.iter_bytes():
                size += len(piece)
                if size > limit:
                    raise EmbedResponseError(f"the response is larger than {limit} bytes")
                pieces.append(piece)
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded
        return b"".join(pieces)
