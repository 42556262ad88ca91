"""The embed server's route (`freshrag embed-server`): OpenAI's request and response format,
errors in OpenAI's shape, and any body answered with 200/400/401/404, never a 500 (hypothesis).
A deterministic stand-in model: the real one is served in tests/integration/test_embed_openai."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.api.embed_server import create_embed_app

DIM = 6


class StandIn:
    dim = DIM

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def _vector(self, text: str) -> list[float]:
        v = np.array([len(text), text.count("a"), 1, 2, 3, 4], dtype=np.float64)
        return list(v / np.linalg.norm(v))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(("documents", len(texts)))
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.calls.append(("query", 1))
        return self._vector(text)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]


@pytest.fixture(scope="module")
def model() -> StandIn:
    return StandIn()


@pytest.fixture(scope="module")
def client(model: StandIn) -> TestClient:
    return TestClient(create_embed_app(model, model_name="m", api_key="k", max_inputs=8))


AUTH = {"Authorization": "Bearer k"}


def test_openai_format_floats_and_base64(client: TestClient, model: StandIn) -> None:
    model.calls.clear()
    r = client.post("/v1/embeddings", json={"model": "m", "input": ["aa", "b c"]}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "m"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["embedding"] == pytest.approx(model._vector("aa"))
    assert body["usage"] == {"prompt_tokens": 3 + 4, "total_tokens": 3 + 4}
    r = client.post(
        "/v1/embeddings",
        json={"model": "m", "input": "aa", "encoding_format": "base64", "dimensions": DIM},
        headers=AUTH,
    )
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert np.frombuffer(raw, "<f4") == pytest.approx(model._vector("aa"), rel=1e-6)
    assert model.calls == [("documents", 2), ("query", 1)]  # one input: the query lane


@pytest.mark.parametrize(
    ("body", "headers", "status", "param"),
    [
        ({"model": "m", "input": "x"}, {}, 401, None),
        ({"model": "m", "input": "x"}, {"Authorization": "Bearer nope"}, 401, None),
        ({"model": "other", "input": "x"}, AUTH, 404, "model"),
        ({"model": "m", "input": []}, AUTH, 400, "input"),
        ({"model": "m", "input": [""]}, AUTH, 400, "input"),
        ({"model": "m", "input": ["x"] * 9}, AUTH, 400, "input"),
        ({"model": "m", "input": [[1, 2, 3]]}, AUTH, 400, None),
        ({"model": "m", "input": "x", "dimensions": 3}, AUTH, 400, "dimensions"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, AUTH, 400, None),
        ({"input": "x"}, AUTH, 400, "model"),
    ],
)
def test_errors_have_openai_shape(
    client: TestClient, body: dict[str, Any], headers: dict[str, str], status: int, param: Any
) -> None:
    r = client.post("/v1/embeddings", json=body, headers=headers)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.sampled_from(["m", "x"]), "input": json_values},
        optional={
            "encoding_format": st.sampled_from(["float", "base64", "x"]),
            "dimensions": st.integers(-2, 10),
        },
    ),
)


@settings(max_examples=150, deadline=None)
@given(body=bodies)
def test_any_body_is_answered_without_a_server_error(client: TestClient, body: Any) -> None:
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity sent as such
    r = client.post(
        "/v1/embeddings", content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert r.json()["error"]["message"]
        return
    data = r.json()["data"]
    inputs = body["input"]
    assert len(data) == (1 if isinstance(inputs, str) else len(inputs))
    for item in data:
        vector = item["embedding"]
        if isinstance(vector, str):
            vector = np.frombuffer(base64.b64decode(vector), "<f4")
        assert len(vector) == DIM
