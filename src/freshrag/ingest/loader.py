"""Reads documents from a folder of text/markdown/HTML files, a JSONL file or a BEIR corpus,
and turns them into native upsert events (`events.upsert_event`); `produce_events` sends them
to Kafka through `producer.EventProducer.send_many`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshrag.ingest.events import upsert_event
from freshrag.ingest.formats import HTML, FormatError, to_indexable_text

HTML_SUFFIXES = {".html", ".htm"}  # sent with content_type text/html
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".rst", *HTML_SUFFIXES}


class LoadError(ValueError):
    """The input cannot be read as documents; the message names the file and line."""


@dataclass(frozen=True)
class SourceKind:
    kind: str  # "folder" | "jsonl" | "beir"
    path: Path


def detect(path: Path) -> SourceKind:
    if not path.exists():
        raise LoadError(f"{path} does not exist")
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        return SourceKind("beir", path / "corpus.jsonl")
    if path.is_file() and path.suffix == ".jsonl":
        return SourceKind("jsonl", path)
    if path.is_dir():
        return SourceKind("folder", path)
    raise LoadError(f"{path}: expected a folder, a .jsonl file or a BEIR dataset folder")


def count_documents(src: SourceKind) -> int:
    if src.kind == "folder":
        return sum(1 for _ in _text_files(src.path))
    with src.path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def iter_events(src: SourceKind, tenant: str | None = None) -> Iterator[dict[str, Any]]:
    docs = _folder(src.path) if src.kind == "folder" else _jsonl(src.path)
    for doc in docs:
        if tenant is not None:
            doc["tenant"] = tenant
        yield doc


def _text_files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
            yield p


def _folder(root: Path) -> Iterator[dict[str, Any]]:
    for path in _text_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise LoadError(f"{path}: not UTF-8 ({exc.reason})") from None
        title = path.stem.replace("_", " ").replace("-", " ")
        content_type = HTML if path.suffix.lower() in HTML_SUFFIXES else None
        for line in _title_source(text, content_type).splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                break
        stat = path.stat()
        yield upsert_event(
            path.relative_to(root).as_posix(),
            text,
            title=title,
            source="file",
            url=path.resolve().as_uri(),
            # the file's mtime: loading an unchanged file again is a no-op for the index
            version=stat.st_mtime_ns // 1_000_000,
            updated_at=_iso(stat.st_mtime),
            content_type=content_type,
        )


def _title_source(text: str, content_type: str | None) -> str:
    """The text whose first `# ` heading titles the document: an HTML file's converted text."""
    if content_type is None:
        return text
    try:
        return to_indexable_text(text, content_type)
    except FormatError:
        return ""  # sent as is: the flow dead-letters it with the reason


def _iso(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    file_version = path.stat().st_mtime_ns // 1_000_000  # rows without a version
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LoadError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise LoadError(f"{path}:{lineno}: expected a JSON object")
            doc_id = row.get("id", row.get("_id"))
            if doc_id is None:
                raise LoadError(f"{path}:{lineno}: missing 'id' or '_id'")
            meta = row.get("metadata")
            yield upsert_event(
                str(doc_id),
                row.get("text"),
                tenant=row.get("tenant"),
                title=row.get("title") or "",
                url=row.get("url"),
                source=row.get("source", path.stem),
                version=file_version if row.get("version") is None else row["version"],
                updated_at=row.get("updated_at"),
                metadata=meta if isinstance(meta, dict) else None,
                content_type=row.get("content_type"),
                acl=row.get("acl"),  # {"users": [...], "groups": [...]}; checked by the flow
            )


def produce_events(
    bootstrap: str,
    topic: str,
    events: Iterator[dict[str, Any]],
    on_sent: Callable[[], None] = lambda: None,
    limit: int | None = None,
) -> int:
    """Produce events with the idempotent producer, keyed by tenant and document id
    (`events.document_key`, on the document id's partition); returns the count."""
    from freshrag.ingest.producer import EventProducer, ProduceError

    try:
        producer = EventProducer(bootstrap, topic, timeout_s=300, linger_ms=20, compression="lz4")
        return producer.send_many(events, on_sent, limit)
    except ProduceError as exc:
        raise LoadError(str(exc)) from None
