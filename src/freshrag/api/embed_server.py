"""`freshrag embed-server`: a local embedding model behind an OpenAI-compatible endpoint.

Serves `POST /v1/embeddings` (and `GET /v1/models`, `GET /health`) in OpenAI's request and
response format, so that several freshrag processes on a machine without a GPU share one model
instance (FRESHRAG_EMBED_BACKEND=openai, FRESHRAG_EMBED_OPENAI_BASE_URL=http://host:port/v1),
and so that the ``openai`` backend can be tested against a real endpoint.

- The model is an `Embedder` (any local backend; onnx by default): its scheduling applies, and a
  request with one input goes through `embed_query` (query priority, LRU cache), so a search's
  query is not queued behind another process's ingest batch.
- ``input`` is a string or a list of strings (token arrays are refused); ``encoding_format``
  float or base64; ``dimensions`` must equal the model's (it cannot shorten its vectors);
  ``model`` must be the served name (404 otherwise, as OpenAI and vLLM answer), so an index's
  fingerprint names what really built it.
- Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a
  bad request, 401 for a wrong key (when one is set), 404 for another model.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any, Literal, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"


class LocalEmbedder(Protocol):
    dim: int

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...

    def count_tokens(self, texts: list[str]) -> list[int]: ...


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbedServerError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Any:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status,
    )


def create_embed_app(
    embedder: LocalEmbedder,
    *,
    model_name: str = BUNDLED_MODEL_NAME,
    api_key: str | None = None,
    max_inputs: int = 2048,
    max_input_chars: int = 100_000,
    identity: str | None = None,
) -> FastAPI:
    """The app; `identity` (e.g. `Embedder.describe()["model"]`) is shown by `/health`."""
    app = FastAPI(title="freshrag embed-server", docs_url=None, redoc_url=None)

    @app.exception_handler(EmbedServerError)
    async def _server_error(_: Request, exc: EmbedServerError) -> Any:
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"invalid request: {loc or 'body'}: {first.get('msg', 'invalid')}", loc)

    def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise EmbedServerError(401, "invalid API key", code="invalid_api_key")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "dimension": embedder.dim,
            "identity": identity,
        }

    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "owned_by": "freshrag"}],
        }

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsIn, request: Request) -> dict[str, Any]:
        check_key(request)
        if body.model != model_name:
            raise EmbedServerError(
                404,
                f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                "model",
                "model_not_found",
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise EmbedServerError(400, "input must not be empty", "input")
        if len(texts) > max_inputs:
            raise EmbedServerError(400, f"at most {max_inputs} inputs per request", "input")
        for i, text in enumerate(texts):
            if not text:
                raise EmbedServerError(400, f"input[{i}] is an empty string", "input")
            if len(text) > max_input_chars:
                raise EmbedServerError(
                    400, f"input[{i}] is longer than {max_input_chars} characters", "input"
                )
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise EmbedServerError(
                400,
                f"this model's vectors have {embedder.dim} dimensions; it cannot return "
                f"{body.dimensions}",
                "dimensions",
            )
        if len(texts) == 1:
            vectors = [embedder.embed_query(texts[0])]
        else:
            vectors = embedder.embed_documents(texts)
        tokens = sum(embedder.count_tokens(texts)) + 2 * len(texts)  # [CLS] and [SEP]
        data: list[dict[str, Any]] = []
        for i, vector in enumerate(vectors):
            value: Any = vector
            if body.encoding_format == "base64":
                value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app
