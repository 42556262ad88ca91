"""`freshrag load` produces folder, JSONL and BEIR documents into the real Kafka topic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from freshrag.cli import app
from freshrag.ingest.events import document_key
from tests.integration.harness import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def run_load(monkeypatch: pytest.MonkeyPatch, bootstrap: str, topic: str, *args: str) -> Any:
    monkeypatch.setenv("FRESHRAG_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("FRESHRAG_TOPIC", topic)
    return CliRunner().invoke(app, ["load", *args])


def test_load_folder_jsonl_and_beir(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = make_topic("load")
    docs = tmp_path / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "guides/setup.md").write_text("# Setup guide\n\nInstall it.")
    (docs / "notes.txt").write_text("plain notes")
    (docs / "image.png").write_bytes(b"\x89PNG")  # ignored
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"id": "r1", "text": "row one", "metadata": {"lang": "en"}}) + "\n")
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"b{i}", "title": f"T{i}", "text": f"abstract {i}"}) + "\n"
            for i in range(3)
        )
    )

    for path, expected in ((docs, 2), (jsonl, 1), (beir, 2)):
        extra = ["--limit", "2"] if path == beir else []
        result = run_load(
            monkeypatch, kafka_bootstrap, topic, str(path), "--tenant", "acme", *extra
        )
        assert result.exit_code == 0, result.output
        assert f"produced {expected} documents" in result.output

    messages = read_topic(kafka_bootstrap, topic, expected=5)
    # keyed by tenant and document id (issue 15): {"id":"guides/setup.md","tenant":"acme"}
    keys = [json.loads(m.key()) for m in messages]
    assert all(k["tenant"] == "acme" and set(k) == {"id", "tenant"} for k in keys)
    assert [m.key() for m in messages] == [document_key("acme", k["id"]) for k in keys]
    events = {k["id"]: json.loads(m.value()) for k, m in zip(keys, messages, strict=True)}
    assert set(events) == {"guides/setup.md", "notes.txt", "r1", "b0", "b1"}
    setup = events["guides/setup.md"]
    assert setup["title"] == "Setup guide" and setup["tenant"] == "acme" and setup["op"] == "upsert"
    assert isinstance(setup["version"], int) and setup["updated_at"]
    assert events["r1"]["metadata"] == {"lang": "en"} and events["b1"]["title"] == "T1"


def test_load_rejects_bad_input_with_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "ok", "text": "x"}\n{broken\n')
    result = run_load(monkeypatch, kafka_bootstrap, "unused", str(bad))
    assert result.exit_code == 1 and f"{bad}:2: invalid JSON" in result.output
    result = run_load(monkeypatch, kafka_bootstrap, "unused", str(tmp_path / "missing"))
    assert result.exit_code == 1 and "does not exist" in result.output
