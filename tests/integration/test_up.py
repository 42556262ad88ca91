"""`freshrag up` as a real process: read-your-writes, restart keeps the index, the web page in
headless Chromium (Playwright), all on real Kafka, the real embedder and the real LLM server."""

from __future__ import annotations

import os
import re
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
from tests.integration.harness import event, launch_chromium, produce, wait_for

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

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
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
        # the grounding guard's verdict is shown, and whatever it chose states the right fact
        kind = page.locator("#answerType .badge")
        expect(kind).to_have_attribute("data-type", re.compile("^(generated|extractive)$"))
        answer = page.locator("#answer").inner_text()
        assert "47" in answer and "7.1" not in answer, answer
        page.screenshot(path=str(ARTIFACTS / "web-cited-answer.png"), full_page=True)
        browser.close()


HOSTILE = {
    "id": "hostile-beacon",
    "title": '<img src=x onerror="window.__pwned=1">Vexlor <script>window.__pwned=2</script>notes',
    "text": (
        "Vexlor-7 beacon field notes: the Vexlor-7 beacon blinks green every 19 seconds. "
        '<script>window.__pwned=3</script><img src=x onerror="window.__pwned=4"> '
        '<a href="javascript:window.__pwned=5">click</a>'
    ),
    "url": "javascript:window.__pwned=6;alert(document.domain)",
}


def test_web_page_renders_a_hostile_document_inert(up: UpProcess) -> None:
    """Script in a document's title, text and url: shown as text, never run, never a link.
    The API key stays in sessionStorage unless "remember" is ticked."""
    from playwright.sync_api import expect, sync_playwright

    http = httpx.Client(base_url=up.url, headers=AUTH, timeout=60)
    w = http.post("/v1/documents", json=HOSTILE)
    assert w.status_code == 202, w.text
    r = http.post(
        "/v1/search",
        json={
            "query": "Vexlor-7 beacon blinks green",
            "top_k": 1,
            "consistency_token": w.json()["consistency_token"],
        },
    )
    assert r.json()["hits"][0]["doc_id"] == HOSTILE["id"]

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        response = page.goto(up.url + "/")
        assert response is not None
        assert "script-src 'sha256-" in response.headers["content-security-policy"]
        page.fill("#apiKey", KEY)
        page.click("#saveKey")
        assert page.evaluate("sessionStorage.getItem('freshrag.apiKey')") == KEY
        assert page.evaluate("localStorage.getItem('freshrag.apiKey')") is None

        # the title's markup is shown as text in the activity list
        expect(page.locator("#activity")).to_contain_text(
            "<script>window.__pwned=2", timeout=15_000
        )
        page.fill("#query", "Vexlor-7 beacon blinks green")
        page.click("#search")
        expect(page.locator("#hits .hit").first).to_contain_text("Vexlor-7 beacon field notes")
        page.fill("#question", "How often does the Vexlor-7 beacon blink green?")
        page.click("#ask")
        cite = page.locator("#citations .cite").first
        expect(cite).to_contain_text("notes", timeout=90_000)
        expect(cite).to_contain_text("<script>")
        assert page.locator("#citations a").count() == 0  # the javascript: url is no link
        cite.click()
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        assert not [h for h in hrefs if h.strip().lower().startswith("javascript:")]
        assert page.locator("main img, main script, main iframe").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert dialogs == []
        page.screenshot(path=str(ARTIFACTS / "web-hostile-document.png"), full_page=True)

        fresh = context.new_page()  # a new tab is a new session: the key was not remembered
        fresh.goto(up.url + "/")
        assert fresh.input_value("#apiKey") == ""
        fresh.close()
        page.check("#rememberKey")
        page.click("#saveKey")
        assert page.evaluate("localStorage.getItem('freshrag.apiKey')") == KEY
        remembered = context.new_page()
        remembered.goto(up.url + "/")
        assert remembered.input_value("#apiKey") == KEY
        assert remembered.is_checked("#rememberKey")
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
