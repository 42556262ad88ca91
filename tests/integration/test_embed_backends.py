"""Embedding backends with the real bundled model: vectors against torch fp32, ranking, the
Embedder's scheduling on top of a backend, and the export cache (reuse, corrupt entry,
killed export)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from freshrag.core import embed_backends
from freshrag.core.embed_backends import check_entry
from freshrag.core.embedder import Embedder

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
SCIFACT = ROOT.parent / "shared/data/scifact/corpus.jsonl"


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


FAST = [
    "onnx",
    "onnx-int8",
    pytest.param(
        "openvino", marks=pytest.mark.skipif(not _available("openvino"), reason="no openvino")
    ),
    pytest.param(
        "openvino-int8",
        marks=[
            pytest.mark.slow,  # NNCF calibration: about a minute to export on 2 busy cores
            pytest.mark.skipif(not _available("nncf"), reason="no nncf"),
        ],
    ),
]
EXACT = {"onnx", "openvino"}  # fp32 exports: the same network, float rounding only


def real_texts(n: int = 36) -> list[str]:
    """Paragraphs of the sample documents, then SciFact abstracts when present: short and long
    (up to and past the 256-token window) real text."""
    texts: list[str] = []
    for doc in sorted((ROOT / "samples/docs").glob("*.md")):
        texts += [p.strip() for p in doc.read_text().split("\n\n") if len(p.strip()) > 40]
    if SCIFACT.exists():
        with SCIFACT.open() as fh:
            for line in fh:
                texts.append(json.loads(line)["text"])
                if len(texts) >= 2 * n:
                    break
    texts = texts[::2][: n // 2] + texts[1::2][: n - n // 2]
    assert len(texts) >= min(n, 24)
    return texts


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    return Embedder(backend="torch", batch_size=16)


@pytest.fixture(scope="session")
def backend_embedders() -> dict[str, Embedder]:
    """One Embedder per backend for the session, built on first use; exports go to the default
    cache (keyed by model files and library versions, so a stale entry is never reused)."""
    return {}


def get_embedder(cache: dict[str, Embedder], backend: str) -> Embedder:
    if backend not in cache:
        cache[backend] = Embedder(backend=backend, batch_size=16, sub_batch_size=8)
    return cache[backend]


@pytest.mark.parametrize("backend", FAST)
def test_vectors_are_unit_384d_and_close_to_torch(
    backend: str, torch_embedder: Embedder, backend_embedders: dict[str, Embedder]
) -> None:
    texts = real_texts()
    embedder = get_embedder(backend_embedders, backend)
    got = np.array(embedder.embed_documents(texts))
    ref = np.array(torch_embedder.embed_documents(texts))
    assert embedder.dim == 384 and got.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    cos = (got * ref).sum(axis=1)
    assert cos.mean() >= 0.97, cos
    assert cos.min() >= 0.93, cos
    if backend in EXACT:
        assert cos.min() >= 0.9999, cos
    # the tokenizer (chunking budget) is the model's, whatever the backend
    assert embedder.max_tokens == torch_embedder.max_tokens == 254
    assert embedder.count_tokens(texts[:5]) == torch_embedder.count_tokens(texts[:5])


RETRIEVAL_DOCS = [
    "Our refund policy: purchases can be returned within 30 days for a full refund.",
    "Emperor penguins breed during the Antarctic winter and incubate eggs on their feet.",
    "Mount Etna on Sicily is one of the most active volcanoes in the world.",
    "The support desk is open Monday to Friday from 9am to 5pm Central European Time.",
    "Mitochondria generate most of the cell's supply of ATP through oxidative phosphorylation.",
    "Kafka consumer groups divide the partitions of a topic among their members.",
]
RETRIEVAL_QUERIES = {
    "can I get my money back after buying?": 0,
    "which birds hatch eggs in the polar winter": 1,
    "volcano in Italy": 2,
    "when can I call customer service": 3,
    "where is cellular energy produced": 4,
    "how are partitions shared between consumers": 5,
}


@pytest.mark.parametrize("backend", FAST)
def test_query_document_ranking_agrees_with_torch(
    backend: str, torch_embedder: Embedder, backend_embedders: dict[str, Embedder]
) -> None:
    embedder = get_embedder(backend_embedders, backend)
    for model in (torch_embedder, embedder):
        docs = np.array(model.embed_documents(RETRIEVAL_DOCS))
        for query, best in RETRIEVAL_QUERIES.items():
            scores = docs @ np.array(model.embed_query(query))
            assert int(np.argmax(scores)) == best, (model.backend, query, scores)
    # the full order of the documents agrees for every query
    docs_t = np.array(torch_embedder.embed_documents(RETRIEVAL_DOCS))
    docs_b = np.array(embedder.embed_documents(RETRIEVAL_DOCS))
    for query in RETRIEVAL_QUERIES:
        order_t = np.argsort(-(docs_t @ np.array(torch_embedder.embed_query(query))))
        order_b = np.argsort(-(docs_b @ np.array(embedder.embed_query(query))))
        assert list(order_t[:3]) == list(order_b[:3]), query


def test_scheduling_and_query_cache_run_on_an_exported_backend(
    backend_embedders: dict[str, Embedder],
) -> None:
    """The backend only replaces the model call: sub-batches, the on_encode observer, the
    input order of the vectors and the query LRU cache behave as with torch."""
    embedder = get_embedder(backend_embedders, "onnx-int8")
    events: list[tuple[str, int]] = []
    embedder.on_encode = lambda kind, n: events.append((kind, n))
    try:
        texts = real_texts(20)
        vectors = embedder.embed_documents(texts)
        singles = [embedder.embed_documents([t])[0] for t in texts[:3]]
        query = embedder.embed_query("a question about refunds")
        again = embedder.embed_query("a question about refunds")
    finally:
        embedder.on_encode = None
    assert [e for e in events if e[0] == "documents"][:3] == [("documents", 8)] * 2 + [
        ("documents", 4)
    ]
    for one, batched in zip(singles, vectors[:3], strict=True):
        # each vector is its own text's, and (one text per int8 run) independent of its batch
        assert np.allclose(one, batched, atol=1e-6)
    assert again is query  # served by the cache, no second model call
    assert events.count(("query", 1)) == 1


# --- the export cache -------------------------------------------------------------------------


def _entries(cache: Path, backend: str) -> list[Path]:
    return [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(f"{backend}-")]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embed-cache")


def test_export_is_reused_by_a_second_embedder(cache_dir: Path) -> None:
    before = embed_backends.export_count.get("onnx-int8", 0)
    first = Embedder(backend="onnx-int8", cache_dir=cache_dir)
    assert embed_backends.export_count.get("onnx-int8", 0) == before + 1
    (entry,) = _entries(cache_dir, "onnx-int8")
    model = entry / "model.onnx"
    stat = model.stat()
    second = Embedder(backend="onnx-int8", cache_dir=cache_dir)
    assert embed_backends.export_count.get("onnx-int8", 0) == before + 1  # no second export
    assert _entries(cache_dir, "onnx-int8") == [entry]
    assert (model.stat().st_ino, model.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    text = "the same text embedded by both instances"
    assert first.embed_query(text) == second.embed_query(text)


def test_a_truncated_cached_model_is_rebuilt(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Embedder(backend="onnx-int8", cache_dir=cache_dir)  # make sure the entry exists
    (entry,) = _entries(cache_dir, "onnx-int8")
    model = entry / "model.onnx"
    size = model.stat().st_size
    with model.open("r+b") as fh:
        fh.truncate(size // 3)
    assert check_entry(entry) is not None
    before = embed_backends.export_count.get("onnx-int8", 0)
    with caplog.at_level(logging.WARNING, logger="freshrag.core.embed_backends"):
        embedder = Embedder(backend="onnx-int8", cache_dir=cache_dir)
    assert embed_backends.export_count.get("onnx-int8", 0) == before + 1
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert check_entry(entry) is None and model.stat().st_size == size
    vector = np.array(embedder.embed_query("volcanoes on Sicily"))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3


# Same-size corruption, a missing file and a broken manifest: tests/unit/test_embed_cache.py.


KILLED_EXPORT = """
import sys
from pathlib import Path
from freshrag.core.embedder import Embedder
Embedder(backend="onnx-int8", cache_dir=Path(sys.argv[1]))
"""


def test_a_killed_export_leaves_a_usable_cache(tmp_path: Path) -> None:
    """kill -9 an exporting process once its temporary directory holds a file; the next start
    exports again, sweeps the dead process's temporary directory and ends with one valid
    entry."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(cache)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            temps = list(cache.glob(".tmp-*")) if cache.exists() else []
            if any(any(t.iterdir()) for t in temps if t.exists()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the export ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert list(cache.glob(".tmp-*")), "the kill should leave a temporary directory"
    assert _entries(cache, "onnx-int8") == []  # nothing half-written under the real name

    before = embed_backends.export_count.get("onnx-int8", 0)
    embedder = Embedder(backend="onnx-int8", cache_dir=cache)
    assert embed_backends.export_count.get("onnx-int8", 0) == before + 1
    (entry,) = _entries(cache, "onnx-int8")
    assert check_entry(entry) is None
    assert list(cache.glob(".tmp-*")) == []  # the dead process's directory was swept
    assert len(embedder.embed_documents(["after the crash"])[0]) == 384
