"""`make bench`: every performance figure of freshrag in one command.

    .venv/bin/python -m benchmarks.bench [--quick | --medium] [--out DIR] [--sections ...]

Writes to `--out` (default benchmarks/out/):

- results.json: every section's plain dict, its status, wall time and headline figures, the
  peak RSS of every process started, and the run's metadata (git commit, CPUs, load average);
- results.md: markdown tables, one per section, and a summary;
- PNG plots: latency distributions (serving per size, freshness per rate, search during an
  online optimize) and ingest throughput against workers, embedding throughput per backend.

Sections (each a function returning a plain dict; one that fails is reported as an error in
the output and the others still run; the exit code is 1 when any failed):

- embedding: chunks/s of each embedding backend against torch fp32 on the same chunks
  (benchmarks.embed_throughput);
- ingest: Kafka → `freshrag ingest` → store, docs/s and chunks/s for 1 and 2 workers
  (benchmarks.ingest_throughput);
- freshness: produce → visible in /v1/search at fixed rates (benchmarks.freshness);
- serving: /v1/search through HTTP at 10k and 100k chunks, idle and during full-speed ingest
  (benchmarks.serving);
- edge_online_optimize: Edge search latency before / during / after an online HNSW build
  (benchmarks.edge_online_optimize);
- scaling: on a real Qdrant server, ingest chunks/s for 1 process × 1 worker, 1 × 2 and 2 × 1
  (Edge 1 × 1 for reference), and /v1/search through `freshrag serve` on the server next to
  Edge, with a verdict on whether the cores or the design limit it (benchmarks.scaling);
- qa: answer quality on a real `freshrag up` with the LLM (FRESHRAG_TEST_LLM_BASE_URL, else the
  bundled one for the run): correct / stale / unsupported answers, citation precision and chat
  latency before and after half of the documents change (benchmarks.qa);
- peak RSS (VmHWM) of every process the harness starts, sampled from /proc.

`--quick` runs every section at a tiny size (a couple of minutes) for `make test`; the figures
then only show that the harness works. `--medium` gives rough figures in about 10 minutes; the
default is the full size (see PRESETS). Kafka: FRESHRAG_KAFKA_BOOTSTRAP when set, else a broker of
its own (infra/kafka/kafka.sh) for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.rss import ProcessWatcher, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "embedding",
    "ingest",
    "freshness",
    "serving",
    "edge_online_optimize",
    "scaling",
    "qa",
    "incremental",
)
NEEDS_KAFKA = {"ingest", "freshness", "serving", "scaling", "qa", "incremental"}


# Sizes per preset: `quick` checks the harness in a couple of minutes (`make test`), `medium`
# gives rough figures in about 10 minutes, `full` is the recorded run (`make bench`).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "embedding": {"chunks": 32, "rounds": 1},
        "ingest": {"docs": 20},
        "freshness": {"rates": (5, 20), "duration_s": 3.0, "levers": False, "large_doc": False},
        "serving": {
            "sizes": (1_000,),
            "queries": 10,
            "queries_c8": 16,
            "ingest_docs": 100,
            "alone_s": 4.0,
            "min_phase_s": 0.0,
            "stop_timeout_s": 10.0,
        },
        "edge_online_optimize": {"size": 2_000},
        "qa": {"size": 8, "questions": 16},
        "scaling": {"docs": 12, "serving_sizes": (1_000,), "queries": 10},
        "incremental": {"edits": 3, "revocations": 5},
    },
    "medium": {
        "embedding": {"chunks": 128, "rounds": 2},
        "ingest": {"docs": 150},
        "freshness": {"rates": (5, 20), "duration_s": 10.0, "levers": False, "large_doc": False},
        "serving": {
            "sizes": (10_000,),
            "queries": 60,
            "ingest_docs": 1_000,
            "alone_s": 5.0,
            "min_phase_s": 8.0,
        },
        "edge_online_optimize": {"size": 10_000},
        "qa": {"size": 24, "questions": 48},
        "scaling": {"docs": 100, "repeats": 2, "serving_sizes": (20_000,), "queries": 60},
        "incremental": {"edits": 10, "revocations": 20},
    },
    "full": {
        "embedding": {"chunks": 256},
        "ingest": {"docs": 600},
        "freshness": {"rates": (5, 20, 50), "duration_s": 30.0, "lever_duration_s": 10.0},
        "serving": {"sizes": (10_000, 100_000), "queries": 200, "ingest_docs": 5_183},
        "edge_online_optimize": {"size": 100_000},
        "qa": {"size": None, "questions": None},
        "scaling": {"docs": 400, "repeats": 2, "serving_sizes": (100_000,), "queries": 200},
        "incremental": {"edits": 30, "revocations": 100},
    },
}


@dataclass(frozen=True)
class Context:
    preset: str
    workdir: Path
    bootstrap: str | None

    def sizes(self, section: str) -> dict[str, Any]:
        return dict(PRESETS[self.preset][section])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- sections ---------------------------------------------------------------------------------


def section_embedding(ctx: Context) -> dict[str, Any]:
    from benchmarks.embed_throughput import run

    rows = run(backends=None, batch_size=None, **ctx.sizes("embedding"))
    return {"rows": list(rows)}


def section_ingest(ctx: Context) -> dict[str, Any]:
    from benchmarks.ingest_throughput import run

    return dict(run(workers=(1, 2), **ctx.sizes("ingest")))


def section_freshness(ctx: Context) -> dict[str, Any]:
    from benchmarks.freshness import run

    return dict(run(**ctx.sizes("freshness")))


def section_serving(ctx: Context) -> dict[str, Any]:
    from benchmarks.serving import run

    return run(bootstrap=ctx.bootstrap, workdir=ctx.workdir, log=log, **ctx.sizes("serving"))


def section_edge_online_optimize(ctx: Context) -> dict[str, Any]:
    from benchmarks.edge_online_optimize import run

    return dict(run(path=ctx.workdir, log=log, **ctx.sizes("edge_online_optimize")))


def section_scaling(ctx: Context) -> dict[str, Any]:
    from benchmarks.scaling import run

    return run(bootstrap=ctx.bootstrap, workdir=ctx.workdir, log=log, **ctx.sizes("scaling"))


def section_qa(ctx: Context) -> dict[str, Any]:
    from benchmarks.qa import run

    return run(bootstrap=ctx.bootstrap, log=log, **ctx.sizes("qa"))


def section_incremental(ctx: Context) -> dict[str, Any]:
    from benchmarks.incremental import run

    return run(bootstrap=ctx.bootstrap, **ctx.sizes("incremental"))


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "embedding": section_embedding,
    "ingest": section_ingest,
    "freshness": section_freshness,
    "serving": section_serving,
    "edge_online_optimize": section_edge_online_optimize,
    "scaling": section_scaling,
    "qa": section_qa,
    "incremental": section_incremental,
}


# --- Kafka ------------------------------------------------------------------------------------


def _reachable(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    except Exception:
        return False
    return True


@contextlib.contextmanager
def kafka_broker(workdir: Path) -> Iterator[str]:
    """FRESHRAG_KAFKA_BOOTSTRAP when set and reachable, else a broker of our own for the run
    (exported, so the sections' own helpers reuse it instead of starting another)."""
    given = os.environ.get("FRESHRAG_KAFKA_BOOTSTRAP")
    if given:
        if not _reachable(given):
            raise RuntimeError(f"FRESHRAG_KAFKA_BOOTSTRAP={given} does not answer")
        yield given
        return
    from benchmarks.serving import free_port

    script = str(ROOT / "infra/kafka/kafka.sh")
    data = workdir / "kafka"
    port = free_port()
    log(f"starting a Kafka broker on 127.0.0.1:{port} for the run")
    subprocess.run(
        [script, "start", "--port", str(port), "--dir", str(data)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    os.environ["FRESHRAG_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
    try:
        yield f"127.0.0.1:{port}"
    finally:
        os.environ.pop("FRESHRAG_KAFKA_BOOTSTRAP", None)
        subprocess.run([script, "stop", "--dir", str(data)], cwd=ROOT, timeout=90)


# --- the harness ------------------------------------------------------------------------------


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, other objects -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head}{'+dirty' if dirty else ''}" or "?"


def settings_env() -> dict[str, str]:
    """FRESHRAG_* settings in effect (secrets left out)."""
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k.startswith("FRESHRAG_") and not any(s in k for s in ("KEY", "SECRET", "TOKEN"))
    }


def write_reports(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    made, errors = report.plots(results, out)
    results["plots"] = [p.name for p in made]
    results["plot_errors"] = errors
    (out / "results.json").write_text(json.dumps(clean(results), indent=2) + "\n")
    (out / "results.md").write_text(report.markdown(results, made))
    return made


def run_sections(names: Sequence[str], preset: str, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "preset": preset,
            "quick": preset == "quick",
            "sections": list(names),
            "git": git_commit(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_start": round(os.getloadavg()[0], 2),
            "settings": settings_env(),
        },
        "sections": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="freshrag-bench-"))
    try:
        with ProcessWatcher() as watcher, contextlib.ExitStack() as stack:
            bootstrap = None
            kafka_error = "not started"
            if NEEDS_KAFKA & set(names):
                watcher.section = "kafka"
                try:
                    bootstrap = stack.enter_context(kafka_broker(workdir))
                except Exception:
                    kafka_error = traceback.format_exc()
                    log(f"no Kafka broker: {kafka_error.strip().splitlines()[-1]}")
            ctx = Context(preset, workdir, bootstrap)
            for name in names:
                watcher.section = name
                log(f"section {name}: start")
                t0 = time.perf_counter()
                entry: dict[str, Any]
                try:
                    if name in NEEDS_KAFKA and bootstrap is None:
                        raise RuntimeError(f"no Kafka broker:\n{kafka_error}")
                    result = RUNNERS[name](ctx)
                    entry = {"status": "ok", "result": result}
                    entry["headline"] = report.headline(name, result)
                except Exception:
                    entry = {"status": "error", "error": traceback.format_exc()}
                    log(f"section {name} failed:\n{entry['error']}")
                entry["seconds"] = round(time.perf_counter() - t0, 1)
                entry["harness_peak_rss_mb"] = round(peak_rss_mb() or 0.0, 1)
                results["sections"][name] = entry
                log(f"section {name}: {entry['status']} in {entry['seconds']} s")
                watcher.sample()
                # partial results survive a later crash or ^C
                (out / "results.json").parent.mkdir(parents=True, exist_ok=True)
                (out / "results.json").write_text(json.dumps(clean(results), indent=2) + "\n")
            watcher.sample()
            results["rss"] = [
                {
                    "pid": os.getpid(),
                    "process": "harness (python -m benchmarks.bench)",
                    "section": "all",
                    "peak_rss_mb": round(peak_rss_mb() or 0.0, 1),
                },
                *watcher.report(),
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_end"] = round(os.getloadavg()[0], 2)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
    size.add_argument("--medium", action="store_true", help="rough figures in about 10 minutes")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    names = [s for s in SECTIONS if s in args.sections]
    preset = "quick" if args.quick else "medium" if args.medium else "full"
    results = run_sections(names, preset, args.out)
    made = write_reports(results, args.out)
    failed = [n for n, s in results["sections"].items() if s["status"] != "ok"]
    log(
        f"wrote {args.out / 'results.json'}, {args.out / 'results.md'} and {len(made)} plots "
        f"in {results['meta']['total_s']} s"
        + (f"; FAILED sections: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
