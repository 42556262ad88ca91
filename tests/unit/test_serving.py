"""ServingIndex: requests follow the serving pointer, and a generation that cannot be opened yet
never takes the current one away."""

from __future__ import annotations

from typing import Any

import pytest

from freshrag.api.serving import Generation, ServingIndex
from freshrag.retrieve.generations import IndexManifest
from tests.unit.test_generations import MemoryCatalog


class NamedStore:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def generation(name: str) -> Generation:
    return Generation(name, NamedStore(name), None)  # type: ignore[arg-type]


def test_follows_the_pointer_and_keeps_serving_when_opening_fails() -> None:
    catalog = MemoryCatalog(manifests={"kb": None, "kb-g1": None})
    attempts: list[str] = []
    fail = {"kb-g1": 2}

    def open_generation(name: str, manifest: IndexManifest | None) -> Generation:
        attempts.append(name)
        if fail.get(name, 0) > 0:
            fail[name] -= 1
            raise RuntimeError(f"{name} is locked by another process")
        return generation(name)

    serving = ServingIndex(generation("kb"), catalog, open_generation)
    switched: list[str] = []
    serving.on_switch = switched.append
    assert serving.refresh() is False and serving.current().name == "kb"
    catalog.switch("kb-g1")
    for _ in range(2):  # locked twice: the old generation keeps answering
        with pytest.raises(RuntimeError, match="locked"):
            serving.refresh()
        assert serving.current().name == "kb"
    assert serving.refresh() is True and serving.current().name == "kb-g1"
    assert switched == ["kb-g1"] and attempts == ["kb-g1"] * 3
    catalog.switch("kb")  # roll back: the generation opened first is reused, not reopened
    assert serving.refresh() is True and serving.current().name == "kb"
    assert attempts == ["kb-g1"] * 3
    opened: Any = serving._opened["kb-g1"].store
    serving.close()
    assert opened.closed  # what it opened it closes; the initial store belongs to the caller
    assert not serving._opened["kb"].store.closed  # type: ignore[attr-defined]
