"""Session fixtures that start the real services once per test run, on free loopback ports.

Set FRESHRAG_KAFKA_BOOTSTRAP or FRESHRAG_TEST_LLM_BASE_URL to reuse running services instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def free_port(pairs: int = 1) -> int:
    """A free 127.0.0.1 port; with pairs=2 the next port is free too (Kafka's controller)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if pairs == 1 or _is_free(port + 1):
            return port
    raise RuntimeError("no free port pair found")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_script(*args: str) -> None:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Apache Kafka broker (KRaft) for the whole session, or the one given by env."""
    given = os.environ.get("FRESHRAG_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    port = free_port(pairs=2)
    data = tmp_path_factory.mktemp("kafka")
    script = str(ROOT / "infra/kafka/kafka.sh")
    _run_script(script, "start", "--port", str(port), "--dir", str(data))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop", "--dir", str(data)], cwd=ROOT, timeout=60)


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a uniquely named topic for one test (and its partitions)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
        futures[name].result(timeout=30)
        return name

    return create


@pytest.fixture(scope="session")
def llm_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real local LLM server (llama-cpp-python + SmolLM2) for the session."""
    given = os.environ.get("FRESHRAG_TEST_LLM_BASE_URL")
    if given:
        yield given
        return
    port = free_port()
    data = tmp_path_factory.mktemp("llm")
    script = str(ROOT / "infra/llm/llm.sh")
    _run_script(script, "start", "--port", str(port), "--dir", str(data))
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        subprocess.run([script, "stop", "--dir", str(data)], cwd=ROOT, timeout=60)


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real bundled all-MiniLM-L6-v2, loaded once per session."""
    from freshrag.core.embedder import Embedder

    return Embedder(batch_size=64)
