"""The scaling benchmark at a tiny size on real parts (Kafka, the model, a real Qdrant server
started by infra/qdrant/qdrant.sh, `freshrag ingest` as 1 and 2 processes, `freshrag serve`):
every configuration must index every document, the server must hold exactly the chunks, and the
latencies must be real measurements. Speed is not asserted (the benchmark prints it)."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from benchmarks import scaling

DOCS = 24
SIZE = 2_000
QUERIES = 8


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.integration
@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scaling_indexes_every_document_in_every_configuration(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHRAG_KAFKA_BOOTSTRAP", kafka_bootstrap)
    result = scaling.run(DOCS, serving_sizes=(SIZE,), queries=QUERIES, bootstrap=kafka_bootstrap)

    assert len(result["ingest_runs"]) == len(result["ingest"]) == 4  # one round
    rows = {(r["store"], r["config"]): r for r in result["ingest_runs"]}
    summary = {(r["store"], r["config"]): r for r in result["ingest"]}
    assert set(summary) == set(rows)
    assert set(rows) == {
        ("Qdrant server", "1×1"),
        ("Qdrant server", "1×2"),
        ("Qdrant server", "2×1"),
        ("Qdrant Edge", "1×1"),
    }
    # the same documents give the same chunks whatever the store or the cluster shape
    chunk_counts = {r["chunks"] for r in rows.values()}
    assert len(chunk_counts) == 1 and chunk_counts.pop() >= DOCS, result["ingest"]
    for key, r in rows.items():
        assert r["docs"] == DOCS, key
        # the outcome counters of all processes sum to the documents: none lost, none twice
        assert r["outcomes"] == sum(r["outcomes_per_process"]) == DOCS, (key, r)
        assert r["applied"] == DOCS and r["dead_letters"] == 0, (key, r)
        # what the store holds after the processes stopped: every chunk, once
        assert r["chunks_indexed"] == r["chunks"], (key, r)
        assert r["all_indexed"] is True
        assert _positive(r["chunks_per_s"]) and _positive(r["ingest_s"]), key
        processes = int(key[1][0])
        assert len(r["cpu_s_per_process"]) == len(r["outcomes_per_process"]) == processes
        assert all(_positive(c) for c in r["cpu_s_per_process"]), (key, r)
        # one run per configuration: the summary is that run
        assert summary[key]["chunks_per_s"] == r["chunks_per_s"]
        assert summary[key]["chunks_per_s_runs"] == [r["chunks_per_s"]]
        assert summary[key]["all_indexed"] is True
    assert result["ratios_to_1x1"]["1×1"] == 1.0
    assert all(_positive(v) for v in result["ratios_to_1x1"].values())
    assert set(result["ratios_to_1x1"]) == {"1×1", "1×2", "2×1"}

    searched = {s["backend"]: s for s in result["search"]}
    assert set(searched) == {"Qdrant server", "Qdrant Edge"}
    assert all(s["points"] == SIZE for s in searched.values()), result["search"]
    phases = result["search_phases"]
    assert {(p["backend"], p["concurrency"]) for p in phases} == {
        (b, c) for b in searched for c in (1, 8)
    }
    for p in phases:
        assert p["errors"] == 0 and p["requests"] >= QUERIES, p
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= p["max_ms"], p
        assert _positive(p["requests_per_s"]), p

    assert result["cores"] == len(os.sched_getaffinity(0))
    assert f"on {result['cores']} cores" in result["verdict"]
    headline = scaling.headline(result)
    assert headline["server 2×1 × 1×1"] == result["ratios_to_1x1"]["2×1"]
    assert all(_positive(v) for v in headline.values()), headline
    md = scaling.markdown(result)
    assert "| Qdrant server | 2×1 |" in md and "**Verdict:**" in md


def _row(config: str, chunks_per_s: float, cpu_s: float, qdrant_s: float = 1.0) -> dict[str, Any]:
    return {
        "store": "Qdrant server",
        "config": config,
        "chunks_per_s": chunks_per_s,
        "ratio_to_1x1": round(chunks_per_s / 10.0, 2),
        "cpu_s": cpu_s,
        "extra_cpu_s": qdrant_s,
        "ingest_s": 10.0,
        "cores_used": cpu_s / 10.0,
    }


def test_verdict_blames_the_cpu_when_one_worker_already_fills_the_cores() -> None:
    rows = [_row("1×1", 10.0, 17.0), _row("1×2", 9.0, 18.0), _row("2×1", 9.5, 18.5)]
    text = scaling.verdict(rows, cores=2)
    assert text.startswith("1×2 at 0.9× 1×1, 2×1 at 0.95× 1×1 on 2 cores")
    assert "1.8 of 2 cores busy" in text and "the limit is the CPU" in text
    assert "also busy" not in text


def test_verdict_says_when_the_machine_was_busy_with_other_work() -> None:
    # 2×1 got twice the CPU of 1×1 on a shared machine and did the same work per CPU second:
    # its 2× is the CPU's doing, not the design's
    rows = [_row("1×1", 4.0, 4.0), _row("2×1", 8.0, 8.0)]
    rows[1]["load_average_1m"] = 9.5
    text = scaling.verdict(rows, cores=2)
    assert "load average up to 9.5 on 2 cores" in text and "the limit is the CPU" in text
    assert "(10.0 / 10.0)" in text  # chunks per CPU second of 1×1 / 2×1


def test_verdict_on_a_shared_machine_flags_unequal_work_per_cpu_second() -> None:
    rows = [_row("1×1", 4.0, 4.0), _row("2×1", 4.0, 8.0)]
    rows[0]["load_average_1m"] = 6.0
    text = scaling.verdict(rows, cores=2)
    assert "chunks per CPU second differ (10.0 / 5.0)" in text
    assert "the limit is the CPU" not in text


def test_verdict_credits_the_design_when_spare_cores_become_throughput() -> None:
    rows = [_row("1×1", 10.0, 9.0), _row("1×2", 18.0, 18.0), _row("2×1", 19.0, 19.0)]
    text = scaling.verdict(rows, cores=8)
    assert "the design scales while cores are free" in text
    assert "the limit is the CPU" not in text


def test_verdict_does_not_blame_the_cpu_when_cores_were_idle() -> None:
    rows = [_row("1×1", 10.0, 5.0), _row("1×2", 10.5, 6.0)]
    text = scaling.verdict(rows, cores=8)
    assert "used only 0.6 of 8 cores" in text and "the limit is the CPU" not in text


def test_summary_takes_the_median_of_interleaved_rounds() -> None:
    runs = []
    for rnd, (one, two) in enumerate(((10.0, 9.0), (20.0, 19.0), (12.0, 13.0))):
        for config, rate in (("1×1", one), ("2×1", two)):
            row = _row(config, rate, 17.0)
            row.update(
                round=rnd,
                docs_per_s=rate / 2,
                cores_used=1.7,
                startup_s=6.0,
                cpu_s_per_process=[17.0] if config == "1×1" else [8.0, 9.0 + rnd],
                load_average_1m=2.0 + rnd,
                all_indexed=True,
            )
            runs.append(row)
    by_config = {r["config"]: r for r in scaling.summarise(runs)}
    assert by_config["1×1"]["chunks_per_s"] == 12.0
    assert by_config["2×1"]["chunks_per_s"] == 13.0
    assert by_config["2×1"]["ratio_to_1x1"] == round(13.0 / 12.0, 2)
    assert by_config["2×1"]["chunks_per_s_runs"] == [9.0, 19.0, 13.0]
    assert by_config["2×1"]["cpu_s_per_process"] == [8.0, 10.0]
    assert by_config["2×1"]["load_average_1m"] == 4.0 and by_config["2×1"]["runs"] == 3
