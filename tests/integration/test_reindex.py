"""`freshrag reindex` on real components: `freshrag up` (Edge) serves while a re-index with a
new chunk size builds a generation from the topic; a client searching in a loop never fails,
sees the switch at one moment, sees a write made during the build, and a roll-back restores
the old generation."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.harness import wait_for
from tests.integration.test_up import AUTH, UpProcess

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

PARAGRAPH = (
    "The {w} reactor design uses molten salt loops, passive decay heat removal and a graphite "
    "moderator; operators inspect the {w} pumps every quarter and log the coolant temperature. "
)


def document(i: int, word: str) -> dict[str, Any]:
    return {"id": f"doc-{i}", "title": f"Manual {i}", "text": PARAGRAPH.format(w=word) * 12}


class SearchLoop:
    """Searches until stopped; records (status, generation) of every response in order."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, headers=AUTH, timeout=30)
        self.seen: list[tuple[int, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.http.post("/v1/search", json={"query": "molten salt reactor", "top_k": 3})
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
                continue
            gen = r.json().get("index", {}).get("generation") if r.status_code == 200 else None
            self.seen.append((r.status_code, gen))
            time.sleep(0.05)

    def __enter__(self) -> SearchLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def freshrag(
    env: dict[str, str], *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freshrag.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def up(kafka_bootstrap: str, tmp_path: Path) -> Iterator[UpProcess]:
    proc = UpProcess(
        kafka_bootstrap, "http://127.0.0.1:9/v1", f"reindex-{uuid.uuid4().hex[:12]}", tmp_path
    )
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log.read_text()[-3000:]


def generations(seen: list[tuple[int, str | None]]) -> list[str | None]:
    """The generations in the order they answered, consecutive repeats collapsed."""
    out: list[str | None] = []
    for _, gen in seen:
        if not out or out[-1] != gen:
            out.append(gen)
    return out


def test_reindex_switches_chunk_size_without_a_failed_search_and_rolls_back(
    up: UpProcess, tmp_path: Path
) -> None:
    http = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
    tokens = [
        http.post("/v1/documents", json=document(i, "thorium")).json()["consistency_token"]
        for i in range(6)
    ]
    for token in tokens:  # a token covers its own partition: wait for each write
        first = http.post(
            "/v1/search", json={"query": "thorium reactor", "top_k": 50, "consistency_token": token}
        ).json()
    old_generation = first["index"]["generation"]
    assert old_generation == "freshrag"
    old_chunks = {h["doc_id"] for h in first["hits"]}
    assert old_chunks == {f"doc-{i}" for i in range(6)}
    old_longest = max(len(h["text"]) for h in first["hits"])

    env = {**up.env, "FRESHRAG_CHUNK_TOKENS": "64", "FRESHRAG_CHUNK_OVERLAP": "8"}
    with SearchLoop(up.url) as loop:
        wait_for(lambda: len(loop.seen) >= 5, timeout=60, what="searches before the re-index")
        reindex = subprocess.Popen(
            [sys.executable, "-m", "freshrag.cli", "reindex", "-r", str(tmp_path / "recovery")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # a write during the build must reach the new generation too
        live = http.post("/v1/documents", json=document(6, "uranium")).json()["consistency_token"]
        out, _ = reindex.communicate(timeout=600)
        assert reindex.returncode == 0, out[-3000:]
        assert "serving: freshrag-g" in out, out[-2000:]
        wait_for(
            lambda: loop.seen and loop.seen[-1][1] not in (None, old_generation),
            timeout=120,
            what="searches answered by the new generation",
        )
        time.sleep(1)
    assert not loop.errors, loop.errors[:3]
    assert all(status == 200 for status, _ in loop.seen), [s for s in loop.seen if s[0] != 200]
    order = generations(loop.seen)
    assert len(order) == 2 and order[0] == old_generation, order  # one switch, never back
    new_generation = order[1]
    assert new_generation is not None and new_generation.startswith("freshrag-g")

    after = http.post(
        "/v1/search", json={"query": "uranium reactor", "top_k": 50, "consistency_token": live}
    ).json()
    assert after["index"]["generation"] == new_generation
    assert {h["doc_id"] for h in after["hits"]} == {f"doc-{i}" for i in range(7)}
    assert max(len(h["text"]) for h in after["hits"]) < old_longest  # smaller chunks now

    # `freshrag reindex` has exited: `freshrag up` moved its flow to the generation it serves,
    # so a write after the switch is searchable there, behind its own consistency token
    later = http.post("/v1/documents", json=document(7, "plutonium")).json()["consistency_token"]
    found = http.post(
        "/v1/search", json={"query": "plutonium reactor", "top_k": 50, "consistency_token": later}
    ).json()
    assert found.get("index", {}).get("generation") == new_generation, found
    assert "doc-7" in {h["doc_id"] for h in found["hits"]}
    assert max(len(h["text"]) for h in found["hits"]) < old_longest
    assert f"the ingest flow now writes {new_generation}" in up.log.read_text()

    listed = freshrag({**env, "COLUMNS": "200"}, "index", "list")
    text = listed.stdout + listed.stderr
    assert listed.returncode == 0 and new_generation in text and "64/8" in text, text

    back = freshrag(env, "index", "switch", old_generation)
    assert back.returncode == 0, back.stdout + back.stderr
    wait_for(
        lambda: (
            http.post("/v1/search", json={"query": "thorium", "top_k": 1}).json()["index"][
                "generation"
            ]
            == old_generation
        ),
        timeout=30,
        what="the roll-back",
    )
    # the flow moved back and resumed the old generation from its own snapshots: it holds the
    # write made during the build, and the one made while the new generation served
    http.post("/v1/documents", json=document(8, "radium"))

    def rolled_hits() -> dict[str, Any]:
        return http.post("/v1/search", json={"query": "uranium reactor", "top_k": 50}).json()

    wait_for(
        lambda: {"doc-6", "doc-7", "doc-8"} <= {h["doc_id"] for h in rolled_hits()["hits"]},
        timeout=120,
        what="the old generation to catch up after the roll-back",
        show=lambda: sorted({h["doc_id"] for h in rolled_hits()["hits"]}),
    )
    rolled = rolled_hits()
    assert rolled["index"]["generation"] == old_generation
    assert max(len(h["text"]) for h in rolled["hits"]) >= old_longest * 0.9

    bad = freshrag(env, "index", "switch", "freshrag-gnothere")
    assert bad.returncode == 2 and "no generation" in (bad.stdout + bad.stderr)


def test_ingest_refuses_other_settings_and_says_why(up: UpProcess, tmp_path: Path) -> None:
    http = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
    http.post("/v1/documents", json=document(0, "thorium"))
    env = {**up.env, "FRESHRAG_CHUNK_TOKENS": "96", "FRESHRAG_CHUNK_OVERLAP": "8"}
    proc = freshrag(env, "up", "-r", str(tmp_path / "r2"), timeout=240)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-2000:]
    assert "chunk_tokens: index 200, this process 96" in text and "freshrag reindex" in text


def test_a_killed_reindex_resumes_and_the_result_verifies_clean(
    up: UpProcess, tmp_path: Path
) -> None:
    """kill -9 in the middle of the build; the second run resumes from the generation's own
    recovery snapshots, catches up, switches; `freshrag verify` then finds no drift."""
    import contextlib
    import json
    import signal

    http = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
    total = 60
    tokens = [
        http.post("/v1/documents", json=document(i, f"isotope{i}")).json()["consistency_token"]
        for i in range(total)
    ]
    for token in tokens:  # a token covers its own partition: wait for each write
        http.post("/v1/search", json={"query": "isotope", "consistency_token": token})
    # One ingest step takes up to 4 x embed batch size records, and watermarks advance per step:
    # by default (256 records) the whole backlog can be one step: nothing is "in the middle".
    env = {
        **up.env,
        "FRESHRAG_CHUNK_TOKENS": "48",
        "FRESHRAG_CHUNK_OVERLAP": "8",
        "FRESHRAG_EMBED_BATCH_SIZE": "1",
    }
    args = [sys.executable, "-m", "freshrag.cli", "reindex", "-r", str(tmp_path / "recovery")]
    index = Path(up.env["FRESHRAG_INDEX_PATH"])
    topic = up.env["FRESHRAG_TOPIC"]

    def indexed() -> int:
        """Records the new generation has indexed (its published watermarks)."""
        total = 0
        for f in index.glob(f"freshrag-g*.watermarks.{topic}.json"):
            with contextlib.suppress(OSError, ValueError):  # being replaced right now
                total += sum(int(v) for v in json.loads(f.read_text()).values())
        return total

    first = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: indexed() > 0, timeout=300, what="the build to index something")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    partial = indexed()
    assert 0 < partial < total, partial  # killed in the middle, not after the end
    assert "freshrag-g" not in http.post("/v1/search", json={"query": "isotope"}).text

    second = freshrag(env, *args[3:])
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    out = second.stdout + second.stderr
    assert "serving: freshrag-g" in out
    resumed = re.search(r"resumed: (\d+) records", out)
    assert resumed and int(resumed.group(1)) >= partial, out[-2000:]
    wait_for(
        lambda: (
            http.post("/v1/search", json={"query": "isotope"}).json()["index"]["generation"]
            != "freshrag"
        ),
        timeout=60,
        what="readers on the new generation",
    )
    assert up.stop() == 0
    report = freshrag(env, "verify", "--json")
    assert report.returncode == 0, (report.stdout + report.stderr)[-3000:]
