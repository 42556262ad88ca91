"""Pick a `Store` backend from plain arguments or from the settings: the one place stores are built.

Backends are imported inside `open_store` so the Edge-only path never imports the server client
(and vice versa). The pure helpers both backends share live in `retrieve.payloads`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from freshrag.core.settings import Settings
from freshrag.retrieve.contract import DEFAULT_COLLECTION, DENSE_DIM, Store
from freshrag.retrieve.generations import (
    Catalog,
    IndexManifest,
    IndexSettingsMismatch,
    WriterChoice,
    choose_writer_generation,
    differences,
)

log = logging.getLogger("freshrag.stores")


def open_store(
    qdrant_url: str | None,
    index_path: Path,
    collection: str = DEFAULT_COLLECTION,
    api_key: str | None = None,
    *,
    shards: int | None = None,
    replication_factor: int | None = None,
    write_consistency: int = 1,
    dense_dim: int = DENSE_DIM,
) -> Store:
    """Qdrant server when a URL is configured, else the embedded Edge shard under `index_path`.

    The store is returned unopened: call `ensure_collection()` before use (Edge also opens
    lazily on first use).
    """
    if qdrant_url:
        from freshrag.retrieve.server_store import ClusterLayout, QdrantServerStore

        layout = ClusterLayout(shards, replication_factor, write_consistency)
        return QdrantServerStore.from_url(qdrant_url, api_key, collection, layout, dense_dim)
    from freshrag.retrieve.edge_store import EdgeStore

    return EdgeStore(Path(index_path), collection=collection, dense_dim=dense_dim)


def open_catalog(settings: Settings) -> Catalog:
    """The generations of the settings' logical index (`retrieve.generations`)."""
    if settings.qdrant_url:
        from freshrag.retrieve.catalog import ServerCatalog

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerCatalog.from_url(settings.qdrant_url, key, settings.collection)
    from freshrag.retrieve.catalog import EdgeCatalog

    return EdgeCatalog(settings.index_path, settings.collection)


def open_settings_store(
    settings: Settings, generation: str | None = None, *, dense_dim: int = DENSE_DIM
) -> Store:
    """The store of `generation` (default: the physical collection the settings name), with its
    collection created (or checked). Readers that follow re-indexes use `api.serving`."""
    store = open_store(
        settings.qdrant_url,
        settings.index_path,
        generation or settings.collection,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        shards=settings.qdrant_shards,
        replication_factor=settings.qdrant_replication_factor,
        write_consistency=settings.qdrant_write_consistency,
        dense_dim=dense_dim,
    )
    store.ensure_collection()
    return store


def open_writer_store(
    settings: Settings, manifest: IndexManifest, generation: str | None = None
) -> tuple[Store, str]:
    """The store an ingest process with `manifest`'s build settings writes to, and its
    generation; IndexSettingsMismatch (saying what differs) when no generation matches.
    `generation` names one explicitly (`freshrag reindex`: created when missing)."""
    catalog = open_catalog(settings)
    try:
        if generation is None:
            choice = choose_writer_generation(catalog, manifest)
        else:
            recorded = catalog.read_manifest(generation) if catalog.exists(generation) else None
            if recorded is not None and differences(recorded, manifest):
                raise IndexSettingsMismatch(
                    f"generation {generation!r} was built with other settings: "
                    f"{'; '.join(differences(recorded, manifest))}"
                )
            choice = WriterChoice(generation, adopted=recorded is None)
        dim = int(manifest.build["dimension"])
        store = open_settings_store(settings, choice.generation, dense_dim=dim)
        if choice.adopted:
            recorded = catalog.read_manifest(choice.generation)  # a racing writer's, maybe
            if recorded is None:
                catalog.write_manifest(choice.generation, manifest)
            elif differences(recorded, manifest):
                store.close()
                raise IndexSettingsMismatch(
                    f"index {choice.generation!r} was just claimed by a writer with other "
                    f"settings: {'; '.join(differences(recorded, manifest))}"
                )
        log.info("writing index generation %s (%s)", choice.generation, manifest.fingerprint)
        return store, choice.generation
    finally:
        catalog.close()


def open_serving_store(settings: Settings) -> Store:
    """The generation readers are pointed at (the collection itself before any re-index)."""
    catalog = open_catalog(settings)
    try:
        name = catalog.serving()
        manifest = catalog.read_manifest(name) if catalog.exists(name) else None
    finally:
        catalog.close()
    dim = int(manifest.build["dimension"]) if manifest is not None else DENSE_DIM
    return open_settings_store(settings, name, dense_dim=dim)


def serving_settings(settings: Settings) -> Settings:
    """`settings` with the serving generation's build settings (its model and chunking), for
    readers that embed queries themselves."""
    catalog = open_catalog(settings)
    try:
        name = catalog.serving()
        manifest = catalog.read_manifest(name) if catalog.exists(name) else None
    finally:
        catalog.close()
    return settings if manifest is None else settings.model_copy(update=manifest.settings_update())
