"""The generations of one logical index on each backend: manifests and the serving pointer.

Edge: generation `name` is the shard at `index_path/name`; its manifest is
`index_path/name.manifest.json`; the pointer is `index_path/<collection>.serving`, replaced
atomically (write, fsync, rename). Server: generation `name` is the collection `name`; its manifest
is in the collection's metadata; the pointer is the alias `<collection>_serving`, moved in one
`update_collection_aliases` call (Qdrant applies its operations atomically).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from freshrag.retrieve.generations import GENERATION_MARK, SERVING_SUFFIX, IndexManifest

log = logging.getLogger("freshrag.catalog")
MANIFEST_KEY = "freshrag_manifest"


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_generation(collection: str, name: str) -> bool:
    if name == collection:
        return True
    prefix = f"{collection}{GENERATION_MARK}"
    return name.startswith(prefix) and name[len(prefix) :].isalnum()


class EdgeCatalog:
    """Generations of an embedded index: shard directories under one folder."""

    def __init__(self, index_path: Path, collection: str) -> None:
        self.path = Path(index_path)
        self.collection = collection

    @property
    def pointer(self) -> Path:
        return self.path / f"{self.collection}.serving"

    def _manifest_file(self, name: str) -> Path:
        return self.path / f"{name}.manifest.json"

    def exists(self, name: str) -> bool:
        shard = self.path / name
        return shard.is_symlink() or shard.exists()

    def generations(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(
            e.name
            for e in self.path.iterdir()
            if _is_generation(self.collection, e.name) and (e.is_symlink() or e.is_dir())
        )

    def read_manifest(self, name: str) -> IndexManifest | None:
        try:
            data = json.loads(self._manifest_file(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return IndexManifest.from_json(data)

    def write_manifest(self, name: str, manifest: IndexManifest) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._manifest_file(name), manifest.to_json())

    def serving(self) -> str:
        try:
            data = json.loads(self.pointer.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self.collection
        name = data.get("generation") if isinstance(data, dict) else None
        if not isinstance(name, str) or not _is_generation(self.collection, name):
            raise ValueError(f"{self.pointer} does not name a generation of {self.collection!r}")
        return name

    def switch(self, name: str) -> None:
        if not _is_generation(self.collection, name) or not self.exists(name):
            raise ValueError(f"no generation {name!r} of {self.collection!r} in {self.path}")
        _write_atomically(self.pointer, {"generation": name})

    def close(self) -> None:
        pass


class ServerCatalog:
    """Generations on a Qdrant server: collections, and an alias that readers follow."""

    def __init__(self, client: Any, collection: str, *, owns_client: bool = False) -> None:
        self.client = client
        self.collection = collection
        self.alias = f"{collection}{SERVING_SUFFIX}"
        self._owns = owns_client

    @classmethod
    def from_url(cls, url: str, api_key: str | None, collection: str) -> ServerCatalog:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
        return cls(client, collection, owns_client=True)

    def exists(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def generations(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if _is_generation(self.collection, n))

    def read_manifest(self, name: str) -> IndexManifest | None:
        if not self.client.collection_exists(name):  # a first start: nothing built it yet
            return None
        metadata = self.client.get_collection(name).config.metadata or {}
        data = metadata.get(MANIFEST_KEY)
        return IndexManifest.from_json(data) if isinstance(data, dict) else None

    def write_manifest(self, name: str, manifest: IndexManifest) -> None:
        self.client.update_collection(name, metadata={MANIFEST_KEY: manifest.to_json()})

    def _alias_target(self) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == self.alias:
                return str(alias.collection_name)
        return None

    def serving(self) -> str:
        return self._alias_target() or self.collection

    def switch(self, name: str) -> None:
        from qdrant_client import models

        if not _is_generation(self.collection, name) or not self.exists(name):
            raise ValueError(f"no generation {name!r} of {self.collection!r} on the server")
        ops: list[Any] = []
        if self._alias_target() is not None:
            ops.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias))
            )
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=self.alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def close(self) -> None:
        if self._owns:
            self.client.close()
