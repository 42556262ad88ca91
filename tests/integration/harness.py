"""Helpers for ingest integration tests: run the real flow in-process, produce, wait, read DLQ."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from freshrag.core.settings import Settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.flow import FlowParts, build_flow
from freshrag.ingest.metrics import IngestMetrics
from freshrag.retrieve.contract import Store


class RunningFlow:
    """The real ingest dataflow in a background thread (bytewax run_main / cli_main)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        embedder: Any,
        *,
        workers: int = 1,
        recovery_dir: Path | None = None,
    ) -> None:
        self.stop_event = threading.Event()
        self.metrics = IngestMetrics()
        self.parts = FlowParts(
            settings, store, embedder, Bm25Encoder(), self.metrics, self.stop_event
        )
        self.workers = workers
        self.recovery_dir = recovery_dir
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from bytewax.recovery import RecoveryConfig, init_db_dir
        from bytewax.run import cli_main

        recovery = None
        if self.recovery_dir is not None:
            self.recovery_dir.mkdir(parents=True, exist_ok=True)
            if not any(self.recovery_dir.glob("*.sqlite3")):
                init_db_dir(self.recovery_dir, 1)
            recovery = RecoveryConfig(self.recovery_dir)
        try:
            cli_main(
                build_flow(self.parts),
                workers_per_process=self.workers,
                epoch_interval=timedelta(milliseconds=500),
                recovery_config=recovery,
            )
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> RunningFlow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "flow did not stop within 60 s"
        if self.error is not None:
            raise self.error

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        if partition is None:
            producer.produce(topic, key=key, value=value)
        else:
            producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def event(**fields: Any) -> tuple[bytes, bytes]:
    return str(fields["id"]).encode(), json.dumps(fields).encode()


def wait_for(
    condition: Callable[[], bool],
    timeout: float = 120,
    what: str = "condition",
    show: Callable[[], object] | None = None,
) -> None:
    """Poll until `condition` holds; on timeout say what was awaited and what `show` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    seen = f"; last seen: {show()!r}" if show is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        consumer.close()
    return out


def index_state(store: Store, tenant: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """(tenant, doc_id) -> (version, chunk count), straight from the index payloads."""
    state: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for p in store.scroll_payloads(tenant):
        state.setdefault((p["tenant"], p["doc_id"]), set()).add((p["version"], p["chunk_index"]))
    out = {}
    for key, chunks in state.items():
        versions = {v for v, _ in chunks}
        assert len(versions) == 1, f"{key} has chunks of several versions: {sorted(versions)}"
        out[key] = (versions.pop(), len(chunks))
    return out


class ApiServer:
    """A real uvicorn server for an app, on a free loopback port, in a background thread."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self._thread.start()
        wait_for(lambda: self.server.started, timeout=60, what="API server start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
