"""`freshrag search` prints a rich table from the index, scoped to a tenant, with filters."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from freshrag.cli import app
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.events import RecordOrigin, Upsert
from freshrag.ingest.index_writer import apply_writes
from freshrag.ingest.indexing import ChunkingConfig, DocumentIndexer
from freshrag.retrieve.edge_store import EdgeStore

pytestmark = pytest.mark.integration


def test_search_command(embedder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = RecordOrigin("documents", 0, 0, 0)
    now = datetime.now(UTC)
    docs = [
        Upsert(
            "acme",
            "otters",
            1,
            "Sea otters",
            "Sea otters hold hands while sleeping.",
            now,
            origin,
            metadata={"lang": "en"},
        ),
        Upsert(
            "acme",
            "otters-de",
            1,
            "Seeotter",
            "Seeotter halten sich im Schlaf an den Händen.",
            now,
            origin,
            metadata={"lang": "de"},
        ),
        Upsert(
            "globex",
            "otters-b",
            1,
            "Otter secrets",
            "Globex's private notes on sea otters.",
            now,
            origin,
        ),
    ]
    store = EdgeStore(tmp_path / "index", "freshrag")
    store.ensure_collection()
    apply_writes(
        store, DocumentIndexer(embedder, Bm25Encoder(), ChunkingConfig()).process(docs).writes
    )
    store.close()

    monkeypatch.setenv("FRESHRAG_INDEX_PATH", str(tmp_path / "index"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["search", "do otters sleep holding hands?", "--tenant", "acme", "--top-k", "5"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "otters" in result.output and "otters-b" not in result.output
    result = runner.invoke(
        app, ["search", "otters", "--tenant", "acme", "--filter", "lang=de", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"doc_id": "otters-de"' in result.output and '"doc_id": "otters"' not in result.output
    result = runner.invoke(app, ["search", "otters", "--filter", "nonsense"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_optimize_command_keeps_the_index(
    embedder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freshrag.retrieve.contract import SearchFilter

    origin = RecordOrigin("documents", 0, 0, 0)
    now = datetime.now(UTC)
    docs = [
        Upsert("acme", f"d{i}", 1, f"T{i}", f"Document {i} about topic {i % 7}.", now, origin)
        for i in range(40)
    ]
    store = EdgeStore(tmp_path / "index", "freshrag")
    store.ensure_collection()
    apply_writes(
        store, DocumentIndexer(embedder, Bm25Encoder(), ChunkingConfig()).process(docs).writes
    )
    before = store.query_dense(
        embedder.embed_query("Document 12 about topic 5"), SearchFilter("acme"), 3
    )
    store.close()
    monkeypatch.setenv("FRESHRAG_INDEX_PATH", str(tmp_path / "index"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    result = CliRunner().invoke(app, ["optimize"])
    assert result.exit_code == 0 and "optimized" in result.output, result.output
    store = EdgeStore(tmp_path / "index", "freshrag")
    assert store.count() == 40
    after = store.query_dense(
        embedder.embed_query("Document 12 about topic 5"), SearchFilter("acme"), 3
    )
    assert [h.doc_id for h in after] == [h.doc_id for h in before] and after[0].doc_id == "d12"
    store.close()
