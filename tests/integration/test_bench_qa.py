"""The freshness QA benchmark at a small size (6 documents, 12 questions, both phases) on the
real stack: Kafka, `freshrag up` with the real embedding model, and the real bundled LLM.

It asserts the guarantees only, never the model's quality: every question is answered, phase 2
runs on the updated versions, no answer presented as grounded states a number or name that its
sources lack (by the benchmark's own check, not the server's flag), no stale fact is presented
as grounded after the update, no source of an old version is served, and every extractive
answer quotes its cited sources."""

from __future__ import annotations

import json

import pytest
from benchmarks import qa

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.llm, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_qa_benchmark_guarantees(kafka_bootstrap: str, llm_base_url: str) -> None:
    result = qa.run(6, 12, bootstrap=kafka_bootstrap, llm_base_url=llm_base_url)
    settings = result["settings"]
    assert (settings["documents"], settings["updated_documents"]) == (6, 3)
    assert settings["questions"] == 12 and settings["changed_questions"] >= 3
    after = result["phase_2_after_tokens"]
    assert after["updated_versions_newer"] == 3  # phase 2 asked only once the updates were in

    answers = result["answers"]
    assert len(answers) == 24
    shown = json.dumps
    for a in answers:
        assert a["status"] == 200, shown(a)
        assert a["answer"].strip(), shown(a)
        # the grounding guard's fields are on every answer
        assert a["answer_type_reported"] and a["answer_type"] in qa.ANSWER_TYPES, shown(a)
        assert isinstance(a["grounded"], bool), shown(a)
        if a["presented_as_grounded"]:
            assert not a["unsupported"], f"presented as grounded, unsupported: {shown(a)}"
        if a["answer_type"] == "extractive":
            assert a["extractive_ok"], f"extractive answer not quoting its sources: {shown(a)}"
        # after the token, no source of a superseded version reaches the answer
        assert a["old_version_sources"] == 0, shown(a)
        if a["phase"] == 2 and a["stale"]:
            assert not a["presented_as_grounded"], f"stale fact shown as grounded: {shown(a)}"

    for phase in result["phases"]:
        assert phase["answered"] == phase["questions"] == 12 and phase["errors"] == 0
        assert phase["unsupported_presented_as_grounded"] == 0
        assert phase["stale_presented_as_grounded"] == 0
        assert phase["extractive_not_quoting_sources"] == 0
        assert phase["latency_p50_ms"] is not None and phase["latency_p50_ms"] > 0
    assert "| 2 | 12 |" in qa.markdown(result)
