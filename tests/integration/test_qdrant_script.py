"""infra/qdrant/qdrant.sh and the `qdrant_server` fixture: a real server with an API key, a Raft
cluster that keeps a replicated collection across a peer crash, and a clear message when no
binary can be found or fetched."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import QDRANT_SCRIPT, QdrantServer, qdrant_binary
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration


def test_session_server_requires_its_api_key(qdrant_server: tuple[str, str | None]) -> None:
    url, api_key = qdrant_server
    headers = {"api-key": api_key} if api_key else {}
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{url}/collections", headers=headers, timeout=5).status_code == 200
    if api_key:
        assert httpx.get(f"{url}/collections", timeout=5).status_code == 401


def test_no_binary_and_no_download_fails_with_how_to(tmp_path: Path) -> None:
    """A checkout without ../shared/bin/qdrant, offline: the fetch fails and says what to do."""
    repo = tmp_path / "repo"
    (repo / "infra/qdrant").mkdir(parents=True)
    shutil.copy(QDRANT_SCRIPT, repo / "infra/qdrant/qdrant.sh")
    env = {k: v for k, v in os.environ.items() if k != "QDRANT_BIN"}
    env["QDRANT_RELEASE_URL"] = "http://127.0.0.1:9/unreachable"  # offline, deterministically
    proc = subprocess.run(
        [str(repo / "infra/qdrant/qdrant.sh"), "start", "--dir", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot download the Qdrant server" in proc.stderr
    assert "QDRANT_BIN=" in proc.stderr and "QDRANT_URL=" in proc.stderr
    assert not list((repo / ".cache/qdrant").glob("v*/qdrant"))  # nothing half-downloaded kept

    env["QDRANT_BIN"] = str(tmp_path / "missing")
    proc = subprocess.run(
        [str(repo / "infra/qdrant/qdrant.sh"), "bin"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "is not an executable file" in proc.stderr


def _get(server: QdrantServer, node: int, path: str) -> Any:
    response = httpx.get(
        f"{server.node_url(node)}{path}", headers={"api-key": server.api_key}, timeout=10
    )
    response.raise_for_status()
    return response.json()["result"]


def test_two_peer_cluster_keeps_a_replicated_collection_across_a_peer_crash(
    tmp_path: Path,
) -> None:
    qdrant_binary()
    server = QdrantServer(tmp_path / "cluster", api_key=uuid.uuid4().hex, nodes=2)
    server.start()
    try:
        cluster = _get(server, 1, "/cluster")
        assert cluster["status"] == "enabled" and len(cluster["peers"]) == 2
        httpx.put(
            f"{server.url}/collections/c",
            headers={"api-key": server.api_key},
            json={
                "vectors": {"size": 4, "distance": "Cosine"},
                "shard_number": 2,
                "replication_factor": 2,
            },
            timeout=30,
        ).raise_for_status()

        def active_on(node: int) -> list[Any]:
            info = _get(server, node, "/collections/c/cluster")
            return [s for s in info["local_shards"] if s["state"] == "Active"]

        wait_for(lambda: len(active_on(2)) == 2, timeout=60, what="both shards on peer 2")
        peer_two = _get(server, 2, "/cluster")["peer_id"]

        server.kill(node=2)
        assert server.pid(2) is None
        server.start()  # restarts only the dead peer, same ports and storage
        assert _get(server, 2, "/cluster")["peer_id"] == peer_two
        wait_for(lambda: len(active_on(2)) == 2, timeout=60, what="shards active again")
    finally:
        server.stop()
    assert server.pid(1) is None and server.pid(2) is None
