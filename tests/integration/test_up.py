"""`freshrag up` as a real process: read-your-writes, restart keeps the index, the web page in
headless Chromium (Playwright), all on real Kafka, the real embedder and the real LLM server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.integration.harness import event, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.llm, pytest.mark.slow]

KEY = "up-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ARTIFACTS = ROOT / "artifacts"


class UpProcess:
    def __init__(self, kafka: str, llm: str, topic: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {
            **os.environ,
            "FRESHRAG_KAFKA_BOOTSTRAP": kafka,
            "FRESHRAG_TOPIC": topic,
            "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
            "FRESHRAG_OPENAI_BASE_URL": llm,
            "FRESHRAG_INDEX_PATH": str(workdir / "index"),
            "FRESHRAG_API_PORT": str(self.port),
            "FRESHRAG_API_KEYS": f"{KEY}=acme",
            "FRESHRAG_EMBED_MAX_WAIT_MS": "50",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UpProcess:
        log = (self.workdir / f"up-{time.time_ns()}.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freshrag.cli",
                "up",
                "-r",
                str(self.workdir / "recovery"),
                "-s",
                "0.5",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.log = Path(log.name)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=180, what="freshrag up ready")
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("freshrag up ignored SIGTERM for 90 s") from None


@pytest.fixture(scope="module")
def up(
    kafka_bootstrap: str, llm_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UpProcess]:
    tmp = tmp_path_factory.mktemp("up")
    proc = UpProcess(kafka_bootstrap, llm_base_url, f"up-{tmp.name}", tmp).start()
    yield proc
    assert proc.stop() == 0, proc.log.read_text()[-3000:]


def test_read_your_writes_on_the_first_call(up: UpProcess) -> None:
    http = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
    for i in range(3):
        doc = {
            "id": f"ryw-{i}",
            "title": f"Quasar note {i}",
            "text": f"The quasar catalogue entry {i} mentions blazar jets number {i}.",
        }
        w = http.post("/v1/documents", json=doc).json()
        r = http.post(
            "/v1/search",
            json={
                "query": f"quasar catalogue blazar jets number {i}",
                "top_k": 3,
                "consistency_token": w["consistency_token"],
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["hits"] and body["hits"][0]["doc_id"] == f"ryw-{i}"  # no retry loop
        partition, offset = map(int, w["consistency_token"].split(":"))
        assert body["index"]["watermark"][str(partition)] > offset
        assert body["index"]["freshest_document_age_s"] is not None
    checks = httpx.get(f"{up.url}/readyz").json()["checks"]
    assert checks["ingest"]["ok"] and checks["kafka"]["ok"] and checks["store"]["ok"]
    r = http.post("/v1/search", json={"query": "x", "consistency_token": "not-a-token"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "consistency_token"


def test_web_page_add_document_and_get_cited_answer(up: UpProcess) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(up.url + "/")
        page.fill("#apiKey", KEY)
        page.click("#saveKey")
        page.fill("#docId", "drone-zephyr")
        page.fill("#docTitle", "Zephyr-9 drone specification")
        page.fill(
            "#docText", "The Zephyr-9 drone has a flight time of 47 minutes and a range of 12 km."
        )
        page.click("#saveDoc")
        expect(page.locator("#docStatus")).to_contain_text("indexed", timeout=60_000)
        expect(page.locator("#activity")).to_contain_text("Zephyr-9", timeout=15_000)
        page.fill("#question", "What is the flight time of the Zephyr-9 drone?")
        page.click("#ask")
        cite = page.locator("#citations .cite").first
        expect(cite).to_contain_text("Zephyr-9 drone specification", timeout=90_000)
        expect(cite).to_contain_text("v")
        answer = page.locator("#answer").inner_text()
        assert answer.strip()
        page.screenshot(path=str(ARTIFACTS / "web-cited-answer.png"), full_page=True)
        browser.close()


def test_restart_keeps_index_and_indexes_what_was_produced_meanwhile(
    kafka_bootstrap: str, llm_base_url: str, make_topic: Any, tmp_path: Path
) -> None:
    topic = make_topic("uprestart", partitions=2)
    proc = UpProcess(kafka_bootstrap, llm_base_url, topic, tmp_path).start()
    http = httpx.Client(base_url=proc.url, headers=AUTH, timeout=60)
    produce(
        kafka_bootstrap,
        topic,
        [
            event(
                op="upsert",
                id="before",
                tenant="acme",
                version=1,
                text="Written before the restart: lighthouse keeper logs.",
            )
        ],
    )
    wait_for(lambda: http.get("/v1/documents/before").status_code == 200, what="first doc")
    first_status = http.get("/v1/documents/before").json()
    assert proc.stop() == 0, proc.log.read_text()[-3000:]

    produce(
        kafka_bootstrap,
        topic,
        [
            event(
                op="upsert",
                id="during",
                tenant="acme",
                version=1,
                text="Produced while down: glacier survey.",
            ),
            event(op="upsert", id="before", tenant="acme", version=0, text="stale older version"),
        ],
    )
    proc.start()
    http = httpx.Client(base_url=proc.url, headers=AUTH, timeout=60)
    assert http.get("/v1/documents/before").json() == first_status  # index kept as it was
    wait_for(
        lambda: http.get("/v1/documents/during").status_code == 200, what="doc produced while down"
    )
    hits = http.post("/v1/search", json={"query": "glacier survey", "top_k": 1}).json()["hits"]
    assert hits[0]["doc_id"] == "during"
    assert http.get("/v1/documents/before").json() == first_status  # the stale version did not win
    assert proc.stop() == 0, proc.log.read_text()[-3000:]
