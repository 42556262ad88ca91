"""Pick a `Store` backend from plain arguments or from the settings: the one place stores are built.

Backends are imported inside `open_store` so the Edge-only path never imports the server client
(and vice versa). The pure helpers both backends share live in `retrieve.payloads`.
"""

from __future__ import annotations

from pathlib import Path

from freshrag.core.settings import Settings
from freshrag.retrieve.contract import DEFAULT_COLLECTION, Store


def open_store(
    qdrant_url: str | None,
    index_path: Path,
    collection: str = DEFAULT_COLLECTION,
    api_key: str | None = None,
    *,
    shards: int | None = None,
    replication_factor: int | None = None,
    write_consistency: int = 1,
) -> Store:
    """Qdrant server when a URL is configured, else the embedded Edge shard under `index_path`.

    The store is returned unopened: call `ensure_collection()` before use (Edge also opens
    lazily on first use).
    """
    if qdrant_url:
        from freshrag.retrieve.server_store import ClusterLayout, QdrantServerStore

        layout = ClusterLayout(shards, replication_factor, write_consistency)
        return QdrantServerStore.from_url(qdrant_url, api_key, collection, layout)
    from freshrag.retrieve.edge_store import EdgeStore

    return EdgeStore(Path(index_path), collection=collection)


def open_settings_store(settings: Settings) -> Store:
    """The store the settings name, with its collection created (or checked)."""
    store = open_store(
        settings.qdrant_url,
        settings.index_path,
        settings.collection,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        shards=settings.qdrant_shards,
        replication_factor=settings.qdrant_replication_factor,
        write_consistency=settings.qdrant_write_consistency,
    )
    store.ensure_collection()
    return store
