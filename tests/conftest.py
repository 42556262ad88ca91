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


QDRANT_SCRIPT = ROOT / "infra/qdrant/qdrant.sh"
QDRANT_HOW_TO = (
    "Provide a Qdrant server for the server-backend tests: set QDRANT_BIN to a qdrant server "
    "binary (https://github.com/qdrant/qdrant/releases), place one at ../shared/bin/qdrant next "
    "to the repository, or set QDRANT_URL (and QDRANT_API_KEY) to a running server."
)


def qdrant_binary() -> str:
    """The server binary that infra/qdrant/qdrant.sh finds; pytest.fail (never skip) if none."""
    proc = subprocess.run(
        [str(QDRANT_SCRIPT), "bin"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"no Qdrant server binary: {proc.stderr.strip()}\n{QDRANT_HOW_TO}")
    return proc.stdout.strip().splitlines()[-1]


class QdrantServer:
    """A Qdrant server (or cluster) started by infra/qdrant/qdrant.sh on free loopback ports."""

    def __init__(self, data: Path, api_key: str, nodes: int = 1) -> None:
        self.data = data
        self.api_key = api_key
        self.nodes = nodes
        self.port = free_port_run(3 * nodes)
        self.url = f"http://127.0.0.1:{self.port}"

    def node_url(self, node: int) -> str:
        return f"http://127.0.0.1:{self.port + 3 * (node - 1)}"

    def _script(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [str(QDRANT_SCRIPT), *args, "--dir", str(self.data)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"qdrant.sh {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        """Start (or restart the stopped peers) on the same ports and storage; wait for /readyz."""
        self._script(
            "start",
            "--port",
            str(self.port),
            "--api-key",
            self.api_key,
            "--cluster",
            str(self.nodes),
        )

    def stop(self, node: int | None = None) -> None:
        self._script("stop", *(("--node", str(node)) if node else ()), check=False)

    def kill(self, node: int | None = None) -> None:
        """SIGKILL: a crash, not a shutdown."""
        self._script("kill", *(("--node", str(node)) if node else ()))

    def pid(self, node: int = 1) -> int | None:
        pidfile = self.data / f"node{node}" / "qdrant.pid"
        return int(pidfile.read_text()) if pidfile.exists() else None

    def log(self, node: int = 1) -> str:
        path = self.data / f"node{node}" / "qdrant.log"
        return path.read_text(errors="replace") if path.exists() else ""


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free 127.0.0.1 ports."""
    for _ in range(100):
        port = free_port()
        if port + count < 65536 and all(_is_free(port + i) for i in range(1, count)):
            return port
    raise RuntimeError(f"no run of {count} free ports found")


@pytest.fixture(scope="session")
def qdrant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str | None]]:
    """(url, api_key) of a real Qdrant server for the session: QDRANT_URL (+ QDRANT_API_KEY)
    when set, else the server binary started on free ports with an API key. Never skips."""
    given = os.environ.get("QDRANT_URL")
    if given:
        yield given.rstrip("/"), os.environ.get("QDRANT_API_KEY") or None
        return
    qdrant_binary()
    server = QdrantServer(tmp_path_factory.mktemp("qdrant"), api_key=uuid.uuid4().hex)
    server.start()
    try:
        yield server.url, server.api_key
    finally:
        server.stop()
