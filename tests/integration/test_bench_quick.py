"""`python -m benchmarks.bench --quick`: the benchmark harness end to end at tiny sizes (real
Kafka, the real model, real `freshrag up` / `freshrag ingest` processes), and its failure
isolation (one failing section is reported, the others still run and are written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks import bench, report

from tests.conftest import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _positive(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


# `scaling` and `qa` have their own small runs (test_bench_scaling.py, test_bench_qa.py): running
# them here again would push this test past its time limit on 2 cores.
OWN_TESTS = ("scaling", "qa")
SECTIONS_HERE = [s for s in bench.SECTIONS if s not in OWN_TESTS]


@pytest.mark.integration
@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_bench_writes_every_section(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench",
            "--quick",
            "--out",
            str(out),
            "--sections",
            *SECTIONS_HERE,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail

    results = json.loads((out / "results.json").read_text())
    assert list(results["sections"]) == SECTIONS_HERE
    for name, sec in results["sections"].items():
        assert sec["status"] == "ok", f"{name}: {sec.get('error')}"
        assert _positive(sec["seconds"]), name
        headline = sec["headline"]
        assert headline, f"{name} has no headline figures: {sec['result']}"
        bad = {k: v for k, v in headline.items() if not _positive(v)}
        assert not bad, f"{name}: figures not positive numbers: {bad}"

    def figures(name: str) -> dict[str, float]:
        return dict(results["sections"][name]["headline"])

    incremental = figures("incremental")
    assert incremental["edit chunks re-embedded (mean)"] <= 3  # of a 40-chunk manual
    assert {"acl revocation p50 ms", "acl revocation p99 ms"} <= set(incremental)

    assert any(k.startswith("torch") for k in figures("embedding"))
    assert {"1 worker(s) chunks/s", "2 worker(s) chunks/s", "2 workers × 1"} <= set(
        figures("ingest")
    )
    assert {"5 docs/s p50 ms", "5 docs/s p99 ms", "20 docs/s p99 ms"} <= set(figures("freshness"))
    serving = figures("serving")
    for state in ("idle", "ingest"):
        for c in (1, 8):
            for what in ("p50 ms", "p99 ms", "req/s"):
                assert f"1,000 {state} c{c} {what}" in serving, (state, c, what)
    assert "1,000 ingest alone chunks/s" in serving
    sizes = results["sections"]["serving"]["result"]["sizes"]
    assert sizes[0]["ingest_during_chunks_per_s"] >= 0 and sizes[0]["documents_produced"] > 0
    assert {"before p99 ms", "during p99 ms", "after p99 ms"} <= set(
        figures("edge_online_optimize")
    ), figures("edge_online_optimize")
    phases = results["sections"]["serving"]["result"]["phases"]
    assert all(p["errors"] == 0 for p in phases), phases

    rss = {r["process"].split()[1] for r in results["rss"] if r["process"].startswith("freshrag")}
    assert {"up", "ingest"} <= rss, results["rss"]
    assert all(_positive(r["peak_rss_mb"]) for r in results["rss"])

    md = (out / "results.md").read_text()
    assert "**error**" not in md
    for name in SECTIONS_HERE:
        heading = f"## {report.TITLES[name]}"
        assert heading in md, heading
        section_text = md.split(heading, 1)[1].split("\n## ", 1)[0]
        assert "\n|" in section_text and "---" in section_text, f"no table under {heading}"
    assert "## Peak RSS" in md

    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == set(results["plots"])
    expected = {
        "serving_latency_1000.png",
        "ingest_throughput_workers.png",
        "freshness_latency.png",
        "embedding_throughput.png",
    }
    assert expected <= {p.name for p in pngs}, [p.name for p in pngs]
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, png.name
        assert f"]({png.name})" in md


def test_a_failing_section_is_reported_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pure harness logic with stand-in sections: no services needed."""

    def broken(ctx: bench.Context) -> dict[str, Any]:
        raise RuntimeError("section exploded")

    def fine(ctx: bench.Context) -> dict[str, Any]:
        return {"rows": [{"backend": "torch", "chunks_per_s": 12.5, "ratio_vs_torch": 1.0}]}

    monkeypatch.setattr(bench, "RUNNERS", {"embedding": fine, "edge_online_optimize": broken})
    out = tmp_path / "out"
    results = bench.run_sections(["embedding", "edge_online_optimize"], "quick", out)
    made = bench.write_reports(results, out)

    saved = json.loads((out / "results.json").read_text())
    assert saved["sections"]["embedding"]["status"] == "ok"
    assert saved["sections"]["embedding"]["headline"] == {"torch chunks/s": 12.5}
    failed = saved["sections"]["edge_online_optimize"]
    assert failed["status"] == "error" and "section exploded" in failed["error"]
    md = (out / "results.md").read_text()
    assert "| torch | 12.50 | 1.00 |" in md
    assert "**error**" in md and "section exploded" in md
    assert [p.name for p in made] == ["embedding_throughput.png"]
    assert (out / "embedding_throughput.png").read_bytes().startswith(PNG_MAGIC)
