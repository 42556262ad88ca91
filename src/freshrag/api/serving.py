"""The index generation requests read: it follows the serving pointer that `freshrag reindex`
switches, so a re-index never needs an API restart.

A background thread polls the pointer; a new generation is opened (its store, and its embedding
model when it was built with another one) before it replaces the current one in a single
assignment. A request takes the current generation once and uses only it, so it never mixes
two generations and never embeds a query with the wrong model. Opening failures (an Edge shard
still locked by the re-index process, a server hiccup) keep the old generation serving and are
retried at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freshrag.retrieve.contract import Store
from freshrag.retrieve.generations import Catalog, IndexManifest
from freshrag.retrieve.search import HybridSearcher

log = logging.getLogger("freshrag.serving")


@dataclass(frozen=True)
class Generation:
    """One generation as requests use it: its store and a searcher with its query model."""

    name: str
    store: Store
    searcher: HybridSearcher
    manifest: IndexManifest | None = None


OpenGeneration = Callable[[str, IndexManifest | None], Generation]


class ServingIndex:
    """The current generation, switched when the serving pointer moves."""

    def __init__(
        self,
        initial: Generation,
        catalog: Catalog | None = None,
        open_generation: OpenGeneration | None = None,
        *,
        poll_s: float = 1.0,
    ) -> None:
        self._current = initial
        self._catalog = catalog
        self._open = open_generation
        self._poll_s = poll_s
        self._opened: dict[str, Generation] = {initial.name: initial}
        self._owned: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.switches = 0
        self.last_error: str | None = None
        self.on_switch: Callable[[str], None] | None = None  # called with the new generation

    def current(self) -> Generation:
        return self._current

    def start(self) -> None:
        if self._catalog is None or self._open is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="serving-pointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.refresh()
            except Exception as exc:  # keep serving the current generation
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("following the serving pointer failed (retrying): %s", exc)

    def refresh(self) -> bool:
        """Follow the pointer once; True when the current generation changed."""
        if self._catalog is None or self._open is None:
            return False
        name = self._catalog.serving()
        if name == self._current.name:
            return False
        generation = self._opened.get(name)
        if generation is None:
            manifest = self._catalog.read_manifest(name)
            generation = self._open(name, manifest)
            self._opened[name] = generation
            self._owned.append(generation.store)
        previous, self._current = self._current, generation
        self.switches += 1
        self.last_error = None
        log.info("serving index generation %s (was %s)", name, previous.name)
        if self.on_switch is not None:
            self.on_switch(name)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for store in reversed(self._owned):
            try:
                store.close()
            except Exception:
                log.exception("closing generation store failed")
        if self._catalog is not None:
            self._catalog.close()
