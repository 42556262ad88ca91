"""The ``openai`` embedding backend against a scripted local HTTP server (the real openai client,
a fake endpoint): response parsing (property-based and fuzzed), retries only on transient
failures, bounded calls, the dimension check, and no key in any message."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from freshrag.core.embed_backends import BackendError, BackendUnavailableError, RemoteEmbedConfig
from freshrag.core.embed_remote import (
    EmbedRequestError,
    EmbedResponseError,
    OpenAIEmbedBackend,
    endpoint_identity,
    parse_embeddings,
    redact_url,
)
from freshrag.core.embedder import Embedder, EmbedderError, bundled_model_path
from freshrag.core.settings import load_settings

DIM = 8
KEY = "sk-test-secret-0123456789"


def fake_vector(text: str, dim: int = DIM) -> list[float]:
    """Deterministic, not unit length (the backend must normalise)."""
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    return [float(x) for x in rng.normal(size=dim) * 3.0]


def answer(inputs: list[str], dim: int = DIM) -> bytes:
    data = [
        {"object": "embedding", "index": i, "embedding": fake_vector(t, dim)}
        for i, t in enumerate(inputs)
    ]
    return json.dumps({"object": "list", "data": data, "model": "m"}).encode()


@dataclass
class Reply:
    status: int = 200
    body: bytes | None = None  # None: a valid answer for the request's inputs
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    trickle_s: float = 0.0  # seconds between single bytes of the body


class Endpoint:
    """A scripted /v1/embeddings: replies from `script` in order, then valid answers."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.dim = DIM
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                request = json.loads(self.rfile.read(length))
                endpoint.requests.append(request)
                endpoint.auth.append(self.headers.get("authorization"))
                reply = endpoint.script.popleft() if endpoint.script else Reply()
                body = reply.body
                if body is None:
                    inputs = request["input"]
                    body = answer([inputs] if isinstance(inputs, str) else inputs, endpoint.dim)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply.trickle_s:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.trickle_s)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.script.clear()
        self.requests.clear()
        self.auth.clear()
        self.dim = DIM

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.close()


@pytest.fixture(scope="module")
def tokenizer_path() -> Path:
    return bundled_model_path()


def config(url: str, **changes: Any) -> RemoteEmbedConfig:
    base: dict[str, Any] = {
        "base_url": url,
        "model": "m",
        "api_key": SecretStr(KEY),
        "batch_size": 4,
        "timeout_s": 2.0,
        "max_retries": 3,
        "deadline_s": 10.0,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
    }
    base.update(changes)
    return RemoteEmbedConfig(**base)


def make_backend(endpoint: Endpoint, path: Path, **changes: Any) -> OpenAIEmbedBackend:
    endpoint.reset()
    backend = OpenAIEmbedBackend(config(endpoint.url, **changes), path)
    endpoint.requests.clear()
    endpoint.auth.clear()
    return backend


@pytest.fixture
def backend(endpoint: Endpoint, tokenizer_path: Path) -> OpenAIEmbedBackend:
    return make_backend(endpoint, tokenizer_path)


def unit(rows: list[list[float]]) -> np.ndarray[Any, Any]:
    m = np.asarray(rows, dtype=np.float64)
    out: np.ndarray[Any, Any] = m / np.linalg.norm(m, axis=1)[:, None]
    return out


# --- the parser ----------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: abs(x) > 1e-3)


@st.composite
def valid_answers(draw: st.DrawFn) -> tuple[bytes, np.ndarray[Any, Any], bool]:
    count = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 12))
    rows = [draw(st.lists(finite, min_size=dim, max_size=dim)) for _ in range(count)]
    order = draw(st.permutations(range(count)))
    as_base64 = draw(st.booleans())
    with_index = as_base64 or draw(st.booleans()) or order != list(range(count))
    data = []
    for i in order:
        vector: Any = rows[i]
        if as_base64:
            vector = base64.b64encode(np.asarray(rows[i], dtype="<f4").tobytes()).decode()
        item: dict[str, Any] = {"embedding": vector}
        if with_index:
            item["index"] = i
        data.append(item)
    expected = unit(
        [list(np.asarray(r, dtype="<f4").astype(np.float64)) for r in rows] if as_base64 else rows
    )
    return json.dumps({"data": data}).encode(), expected, as_base64


@given(valid_answers())
def test_valid_answers_parse_in_input_order_to_unit_vectors(
    case: tuple[bytes, np.ndarray[Any, Any], bool],
) -> None:
    body, expected, _ = case
    got = parse_embeddings(body, len(expected), expected.shape[1])
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=30,
)


def mutated(body: dict[str, Any], draw: st.DrawFn) -> dict[str, Any]:
    """A valid answer with one thing broken (or left as is)."""
    data = body["data"]
    kind = draw(st.sampled_from(["drop", "dup", "index", "value", "length", "field", "none"]))
    i = draw(st.integers(0, len(data) - 1))
    if kind == "drop":
        del data[i]
    elif kind == "dup":
        data.append(dict(data[i]))
    elif kind == "index":
        data[i]["index"] = draw(json_values)
    elif kind == "value":
        vec = data[i]["embedding"]
        vec[draw(st.integers(0, len(vec) - 1))] = draw(json_values)
    elif kind == "length":
        data[i]["embedding"] = data[i]["embedding"][: draw(st.integers(0, DIM - 1))]
    elif kind == "field":
        data[i] = {draw(st.text(max_size=6)): data[i]["embedding"]}
    return body


@st.composite
def broken_answers(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return json.dumps(draw(json_values), allow_nan=True).encode()
    body = json.loads(answer(["a", "b", "c"]))
    return json.dumps(mutated(body, draw), allow_nan=True).encode()


def check_outcome(call: Callable[[], np.ndarray[Any, Any]], count: int) -> None:
    """Either `count` finite unit vectors of DIM, or a BackendError: never anything else."""
    try:
        got = call()
    except BackendError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert got.shape == (count, DIM)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@settings(max_examples=300)
@given(broken_answers())
def test_any_answer_is_vectors_of_the_dimension_or_a_backend_error(body: bytes) -> None:
    check_outcome(lambda: parse_embeddings(body, 3, DIM), 3)


@pytest.mark.parametrize(
    ("body", "count", "message"),
    [
        (b"<html>bad gateway</html>", 1, "not JSON"),
        (b"[]", 1, "not an object"),
        (b'{"error": {"message": "overloaded"}}', 1, "no 'data' list (error: "),
        (b'{"data": [{"embedding": [1.0]}]}', 2, "1 embeddings for 2 inputs"),
        (
            b'{"data": [{"embedding": [1.0], "index": 0}, {"embedding": [2.0], "index": 0}]}',
            2,
            "two embeddings for input 0",
        ),
        (b'{"data": [{"embedding": [1.0], "index": 3}]}', 1, "index '3'"),
        (b'{"data": [{"embedding": [1.0], "index": true}]}', 1, "index 'True'"),
        (b'{"data": [{"embedding": [1.0, NaN]}]}', 1, "NaN or infinity"),
        (b'{"data": [{"embedding": [1.0, 1e999]}]}', 1, "NaN or infinity"),
        (b'{"data": [{"embedding": [1.0, "2"]}]}', 1, "holds a str"),
        (b'{"data": [{"embedding": [1.0, true]}]}', 1, "holds a bool"),
        (b'{"data": [{"embedding": [1.0, null]}]}', 1, "holds a NoneType"),
        (b'{"data": [{"embedding": []}]}', 1, "not a non-empty list"),
        (b'{"data": [{"embedding": [0.0, 0]}]}', 1, "all zeros"),
        (b'{"data": [{"embedding": "AAA"}]}', 1, "not valid base64"),
        (b'{"data": [{"embedding": "AAAAAA=="}]}', 1, "all zeros"),
        (b'{"data": [{"embedding": "AAAAAAA="}]}', 1, "not float32s"),
        (b'{"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]}', 2, "mixes"),
        (b'{"data": [{"embedding": [1' + b"0" * 400 + b"]}]}", 1, "out of range"),
        (b"[" * 100_000, 1, "not JSON"),
    ],
)
def test_bad_answers_name_what_is_wrong(body: bytes, count: int, message: str) -> None:
    with pytest.raises(EmbedResponseError, match=None) as info:
        parse_embeddings(body, count)
    assert message in str(info.value)


def test_huge_values_are_normalised_without_overflow() -> None:
    got = parse_embeddings(b'{"data": [{"embedding": [1e300, 1e300, 0]}]}', 1)
    np.testing.assert_allclose(got, [[2**-0.5, 2**-0.5, 0.0]], rtol=1e-6)


def test_a_wrong_dimension_is_an_outage_not_a_bad_input() -> None:
    with pytest.raises(BackendUnavailableError, match="returned 2-d embeddings, expected 3"):
        parse_embeddings(b'{"data": [{"embedding": [1.0, 2.0]}]}', 1, 3)


# --- over HTTP, with the openai client -----------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=broken_answers(), status=st.sampled_from([200, 200, 200, 201]))
def test_any_answer_over_http_is_vectors_or_a_backend_error(
    endpoint: Endpoint, tokenizer_path: Path, body: bytes, status: int
) -> None:
    backend = _shared_backend(endpoint, tokenizer_path)
    endpoint.script.append(Reply(status=status, body=body))
    check_outcome(lambda: backend.encode(["a", "b", "c"], 16), 3)
    assert not endpoint.script


_BACKENDS: dict[str, OpenAIEmbedBackend] = {}


def _shared_backend(endpoint: Endpoint, path: Path) -> OpenAIEmbedBackend:
    if endpoint.url not in _BACKENDS:
        _BACKENDS[endpoint.url] = make_backend(endpoint, path, max_retries=0)
    return _BACKENDS[endpoint.url]


def test_probe_sets_the_dimension_and_batches_split_requests(
    backend: OpenAIEmbedBackend, endpoint: Endpoint
) -> None:
    assert backend.dim == DIM and backend.max_seq_length == 256
    texts = [f"text {i}" for i in range(10)]
    got = backend.encode(texts, 64)
    assert [len(r["input"]) for r in endpoint.requests] == [4, 4, 2]
    assert [r["model"] for r in endpoint.requests] == ["m"] * 3
    assert all(r["encoding_format"] == "float" for r in endpoint.requests)
    assert all("dimensions" not in r for r in endpoint.requests)
    assert endpoint.auth == [f"Bearer {KEY}"] * 3
    np.testing.assert_allclose(got, unit([fake_vector(t) for t in texts]), atol=1e-6)


def test_the_dimensions_parameter_is_sent_and_must_be_honoured(
    endpoint: Endpoint, tokenizer_path: Path
) -> None:
    backend = make_backend(endpoint, tokenizer_path, dimensions=DIM)
    backend.encode(["x"], 16)
    assert endpoint.requests[-1]["dimensions"] == DIM
    endpoint.reset()
    with pytest.raises(EmbedderError, match=f"returned {DIM}-d embeddings, expected 4"):
        Embedder(
            backend="openai",
            remote=config(endpoint.url, dimensions=4),
        )


def test_a_dimension_change_after_the_probe_is_refused(
    backend: OpenAIEmbedBackend, endpoint: Endpoint
) -> None:
    endpoint.dim = DIM + 1
    with pytest.raises(BackendUnavailableError, match=f"{DIM + 1}-d embeddings, expected {DIM}"):
        backend.encode(["x"], 16)


def test_503_then_ok_is_retried_and_429_honours_retry_after(
    backend: OpenAIEmbedBackend, endpoint: Endpoint
) -> None:
    endpoint.script.extend([Reply(503, b"{}"), Reply(500, b"oops")])
    assert backend.encode(["a"], 16).shape == (1, DIM)
    assert len(endpoint.requests) == 3
    endpoint.requests.clear()
    endpoint.script.append(Reply(429, b"{}", {"retry-after": "0.3"}))
    started = time.monotonic()
    assert backend.encode(["a"], 16).shape == (1, DIM)
    assert time.monotonic() - started >= 0.3 and len(endpoint.requests) == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, EmbedRequestError),
        (413, EmbedRequestError),
        (422, EmbedRequestError),
        (408, EmbedRequestError),
        (401, BackendUnavailableError),
        (403, BackendUnavailableError),
        (404, BackendUnavailableError),
    ],
)
def test_4xx_is_never_retried(
    backend: OpenAIEmbedBackend, endpoint: Endpoint, status: int, error: type[Exception]
) -> None:
    endpoint.script.append(Reply(status, json.dumps({"error": {"message": "no"}}).encode()))
    with pytest.raises(error, match=f"HTTP {status}") as info:
        backend.encode(["a"], 16)
    assert len(endpoint.requests) == 1
    assert KEY not in str(info.value)


def test_persistent_5xx_ends_after_the_retries(
    backend: OpenAIEmbedBackend, endpoint: Endpoint
) -> None:
    endpoint.script.extend([Reply(502, b"{}")] * 10)
    with pytest.raises(BackendUnavailableError, match=r"after 4 attempts in [0-9.]+ s: HTTP 502"):
        backend.encode(["a"], 16)
    assert len(endpoint.requests) == 4  # 1 + max_retries


def test_a_slow_endpoint_times_out_and_a_trickling_one_hits_the_deadline(
    endpoint: Endpoint, tokenizer_path: Path
) -> None:
    backend = make_backend(endpoint, tokenizer_path, timeout_s=0.3, deadline_s=1.0)
    endpoint.script.extend([Reply(delay_s=1.0)] * 10)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="timed out"):
        backend.encode(["a"], 16)
    assert time.monotonic() - started < 1.0 + 0.3 + 2.0  # deadline + one read + slack
    endpoint.reset()
    endpoint.script.append(Reply(trickle_s=0.05))  # >10 s for the body, 0.05 s between bytes
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="within 1 s"):
        backend.encode(["a"], 16)
    assert time.monotonic() - started < 1.0 + 0.3 + 2.0  # not the 10 s the body would take


def test_an_unreachable_endpoint_is_unavailable(tokenizer_path: Path) -> None:
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{dead.server_address[1]}/v1"
    dead.server_close()  # nothing listens there any more
    with pytest.raises(BackendUnavailableError, match=r"after 3 attempts .*connection failed"):
        OpenAIEmbedBackend(config(url, max_retries=2), tokenizer_path)


def test_an_oversized_answer_is_refused(backend: OpenAIEmbedBackend, endpoint: Endpoint) -> None:
    huge = json.dumps({"data": [{"embedding": [0.5] * 300_000}]}).encode()
    endpoint.script.append(Reply(body=huge))
    with pytest.raises(EmbedResponseError, match="larger than"):
        backend.encode(["a"], 16)


def test_the_key_stays_secret(endpoint: Endpoint, tokenizer_path: Path) -> None:
    backend = make_backend(endpoint, tokenizer_path)
    assert KEY not in repr(backend) and KEY not in repr(backend.config)
    assert redact_url("http://user:pw@host:8/v1") == "http://host:8/v1"
    assert endpoint_identity("https://user:pw@api.example.com/v1", "e5") == "api.example.com/e5"
    s = load_settings(embed_openai_api_key=KEY)
    assert KEY not in json.dumps(s.safe_summary(), default=str)


def test_embedder_from_settings_uses_the_endpoint(endpoint: Endpoint) -> None:
    endpoint.reset()
    s = load_settings(
        embed_backend="openai",
        embed_openai_base_url=endpoint.url,
        embed_openai_model="m",
        embed_openai_batch_size=3,
    )
    embedder = Embedder.from_settings(s)
    assert embedder.dimension == DIM
    assert embedder.describe() == {
        "backend": "openai",
        "model": f"{endpoint.url.split('/')[2]}/m",
        "dimension": DIM,
        "normalized": "l2",
    }
    endpoint.requests.clear()
    vectors = embedder.embed_documents([f"d{i}" for i in range(7)])
    assert len(vectors) == 7 and all(len(v) == DIM for v in vectors)
    assert sorted(len(r["input"]) for r in endpoint.requests) == [1, 3, 3]
    assert embedder.count_tokens(["hello world"]) == [2]  # the bundled tokenizer
    assert embedder.max_tokens == 254


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embed_openai_base_url": None}, "FRESHRAG_EMBED_OPENAI_BASE_URL"),
        ({"embed_openai_model": None}, "FRESHRAG_EMBED_OPENAI_MODEL"),
    ],
)
def test_missing_settings_are_named(
    endpoint: Endpoint, changes: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {
        "embed_backend": "openai",
        "embed_openai_base_url": endpoint.url,
        "embed_openai_model": "m",
    }
    with pytest.raises(EmbedderError, match=message):
        Embedder.from_settings(load_settings(**{**base, **changes}))
