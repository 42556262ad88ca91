"""End-to-end ingest throughput: Kafka -> `freshrag ingest` (a real process) -> Qdrant Edge.

    .venv/bin/python -m benchmarks.ingest_throughput [--docs 1000] [--workers 1 2]

For each worker count: `docs` SciFact abstracts are produced as native upsert events (the same
events as `freshrag load`) to a fresh 4-partition topic, then `freshrag ingest -w N` starts as a
subprocess on a fresh Edge index and recovery directory. Its Prometheus endpoint
(`FRESHRAG_METRICS_PORT`) is polled every 0.2 s:

- start-up: process start -> the Kafka source reports a position (model loaded, flow running);
  reported, and excluded from the rates;
- time to first write: start-up -> the first chunk written;
- done: the sum of record outcomes (applied, stale, superseded, dead letter...) reaches `docs`;
- docs/s and chunks/s over flowing -> done; peak RSS is the process's VmHWM.

The ratio of 2 workers to 1 is on chunks/s. Where it is under 1.7 a profile says why: CPU
seconds per thread of the ingest process (from /proc), the embedding's share of the workers'
time (`freshrag_ingest_embed_seconds`), cores used, and, when py-spy is installed, the top
functions of a sampled profile of the 2-worker run.

`run_once` also runs a bytewax cluster (`processes` × `freshrag ingest -w N -i I -a A;B`, one
recovery directory, the outcome counters of all processes summed) and writes to a fresh
collection of a Qdrant server instead of Edge (`qdrant_url`, `qdrant_api_key`):
`benchmarks.scaling` uses both.

`run()` returns plain dicts (the `make bench` harness writes the report files); `__main__`
prints a table. Needs Kafka: FRESHRAG_KAFKA_BOOTSTRAP, else a broker is started with
`infra/kafka/kafka.sh` for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
TARGET_RATIO = 1.7
POLL_S = 0.2  # metrics polls: cheap for the process (uncompressed), fine for runs of 10 s+


# --- shared helpers (also used by benchmarks.freshness) ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def kafka_broker() -> Iterator[str]:
    """FRESHRAG_KAFKA_BOOTSTRAP when set (the shared broker), else a broker of our own."""
    given = os.environ.get("FRESHRAG_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    script = str(ROOT / "infra/kafka/kafka.sh")
    data = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    port = free_port()
    subprocess.run(
        [script, "start", "--port", str(port), "--dir", str(data)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "stop", "--dir", str(data)], cwd=ROOT, timeout=90)
        shutil.rmtree(data, ignore_errors=True)


def create_topic(bootstrap: str, prefix: str, partitions: int = 4) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(timeout=30)
    return name


def delete_topics(bootstrap: str, *names: str) -> None:
    """Leave the shared broker as we found it (best effort)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [n for n in names if n in existing]
    if not wanted:
        return
    for future in admin.delete_topics(wanted, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort clean-up
            future.result(timeout=30)


def base_env(bootstrap: str, topic: str, workdir: Path, **extra: str) -> dict[str, str]:
    """Environment of a freshrag process on its own topic and Edge shard."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "FRESHRAG_KAFKA_BOOTSTRAP": bootstrap,
        "FRESHRAG_TOPIC": topic,
        "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
        "FRESHRAG_INDEX_PATH": str(workdir / "index"),
    }
    for name in ("FRESHRAG_QDRANT_URL", "QDRANT_URL", "FRESHRAG_QDRANT_API_KEY"):
        env.pop(name, None)
    env.update(extra)
    return env


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed: torch's pool, bytewax's
    workers) of a running process."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = re.sub(r"\d+$", "N", comm)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def scrape(http: httpx.Client, url: str) -> dict[str, float]:
    """A Prometheus text endpoint as {sample name{labels}: value} (empty when unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        # uncompressed: gzip would cost the measured process CPU on every poll
        text = http.get(url, headers={"Accept-Encoding": "identity"}).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def total(samples: Mapping[str, float], name: str) -> float:
    """Sum of a metric over its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def outcomes(samples: Mapping[str, float]) -> float:
    return total(samples, "freshrag_ingest_events_total")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def index_count(path: Path, collection: str = "freshrag") -> int | None:
    """Points in a closed Edge shard (None when it cannot be opened)."""
    from freshrag.retrieve.edge_store import EdgeStore

    try:
        store = EdgeStore(path, collection)
        store.ensure_collection()
        try:
            return store.count()
        finally:
            store.close()
    except Exception:
        return None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 120) -> int:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=30)


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- the benchmark -----------------------------------------------------------------------------


def scifact_events(
    limit: int, corpus: Path = CORPUS, tenant: str = "bench"
) -> list[dict[str, Any]]:
    """The first `limit` SciFact abstracts as the native upsert events `freshrag load` makes."""
    from freshrag.ingest.loader import detect, iter_events

    out: list[dict[str, Any]] = []
    for event in iter_events(detect(corpus), tenant):
        if len(out) >= limit:
            break
        out.append(event)
    if len(out) < limit:
        raise ValueError(f"{corpus} holds only {len(out)} documents, {limit} asked")
    return out


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _py_spy_args(pid: int, seconds: float) -> list[str]:
    """Sample every thread 50 times a second without pausing the process; collapsed stacks."""
    flags = "record -r 50 --format raw --nonblocking --threads"
    return [*flags.split(), "-p", str(pid), "-d", str(int(seconds)), "-o"]


def _summarise_py_spy(raw: Path, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks (py-spy --format raw) -> the share of samples per leaf function and per
    thread; `idle` samples are excluded by py-spy itself."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    embedding: Counter[str] = Counter()  # samples inside the embedder, per thread
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        samples += n
        threads[frames[0]] += n
        leaf[frames[-1]] += n
        if any("embed_documents" in f for f in frames):
            embedding[frames[0]] += n
        for frame in set(frames[1:]):
            inclusive[_short_frame(frame)] += n
    if not samples:
        return {"samples": 0}

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / samples, 1)) for k, v in c.most_common(top)]

    return {
        "samples": samples,
        "threads_pct": share(threads),
        # one entry per worker that embeds: unequal shares mean the batches are unbalanced
        "embedding_pct_by_thread": share(embedding),
        "leaf_functions_pct": share(Counter({_short_frame(k): v for k, v in leaf.items()})),
        "inclusive_pct": [
            (k, p)
            for k, p in share(inclusive)
            if any(w in k for w in ("embed", "encode", "forward", "chunk", "upsert", "write"))
        ][:top],
    }


def _short_frame(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({Path(match.group(2)).name})"


def server_count(url: str, api_key: str | None, collection: str) -> int | None:
    """Points in a collection of a Qdrant server (None when it cannot be read)."""
    from freshrag.retrieve.server_store import QdrantServerStore

    try:
        with warnings.catch_warnings():  # "Api key is used with an insecure connection"
            warnings.simplefilter("ignore", UserWarning)
            store = QdrantServerStore.from_url(url, api_key=api_key, collection=collection)
        try:
            return store.count()
        finally:
            store.close()
    except Exception:
        return None


def drop_server_collection(url: str, api_key: str | None, collection: str) -> None:
    """Best effort: leave the server as we found it (the collection and its watermarks)."""
    from qdrant_client import QdrantClient

    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # API key over http on loopback
        client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
        try:
            for name in (collection, f"{collection}_watermarks"):
                if client.collection_exists(name):
                    client.delete_collection(name)
        finally:
            client.close()


def run_once(
    bootstrap: str,
    events: Sequence[dict[str, Any]],
    workers: int,
    *,
    processes: int = 1,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    partitions: int = 4,
    snapshot_interval: float = 5.0,
    timeout_s: float = 1800,
    profile_s: float = 0,
    env: Mapping[str, str] | None = None,
    extra_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """`processes` × `freshrag ingest -w workers` (a bytewax cluster when processes > 1, `-i`/`-a`,
    one recovery directory) over a fresh topic holding `events`, into a fresh Edge shard or, with
    `qdrant_url`, a fresh collection on that Qdrant server (dropped afterwards). The outcome
    counters of all processes are summed. `extra_pids` (e.g. the Qdrant server) get their CPU
    seconds over the same window reported as `extra_cpu_s`."""
    from freshrag.ingest.loader import produce_events

    topic = create_topic(bootstrap, "bench-ingest", partitions)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-ingest-p{processes}w{workers}-"))
    collection = f"bench_ingest_{uuid.uuid4().hex[:10]}" if qdrant_url else "freshrag"
    store_env: dict[str, str] = {}
    if qdrant_url:
        store_env = {"FRESHRAG_QDRANT_URL": qdrant_url, "FRESHRAG_COLLECTION": collection}
        if qdrant_api_key:
            store_env["FRESHRAG_QDRANT_API_KEY"] = qdrant_api_key
    ports = [free_port() for _ in range(processes)]
    cluster = [f"127.0.0.1:{free_port()}" for _ in range(processes)] if processes > 1 else []
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    spy: subprocess.Popen[bytes] | None = None
    http = httpx.Client(timeout=2)
    result: dict[str, Any] = {}
    try:
        produced = produce_events(bootstrap, topic, iter(events))
        recovery = workdir / "recovery"
        if processes > 1:
            # one recovery directory for the cluster: initialised once, before either process
            # starts, so the two never race to create it
            from freshrag.ingest.runner import IngestOptions, prepare_recovery

            prepare_recovery(IngestOptions(recovery_dir=recovery))
        started = time.monotonic()
        for i in range(processes):
            log = workdir / f"ingest-{i}.log"
            cmd = [sys.executable, "-m", "freshrag.cli", "ingest", "-w", str(workers)]
            cmd += ["-r", str(recovery), "-s", str(snapshot_interval)]
            if cluster:
                cmd += ["-i", str(i), "-a", ";".join(cluster)]
            proc_env = base_env(
                bootstrap,
                topic,
                workdir,
                FRESHRAG_METRICS_PORT=str(ports[i]),
                **store_env,
                **dict(env or {}),
            )
            procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=proc_env, stdout=log.open("w"), stderr=subprocess.STDOUT
                )
            )
            logs.append(log)
        urls = [f"http://127.0.0.1:{p}/metrics" for p in ports]
        flowing = first_write = done = None
        cpu_at_flowing: list[float] = []
        extra_at_flowing = 0.0
        threads_at_flowing: dict[str, float] = {}
        samples: dict[str, float] = {}
        seen_flowing: set[int] = set()
        deadline = started + timeout_s
        while done is None:
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"ingest exited with {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest not done in {timeout_s} s; last metrics {samples}")
            per_proc = [scrape(http, url) for url in urls]
            samples = _summed(per_proc)
            now = time.monotonic()
            for i, s in enumerate(per_proc):
                if any(k.startswith("freshrag_ingest_source_offset") for k in s):
                    seen_flowing.add(i)
            # a bytewax cluster runs once every process has joined: flowing is when all have
            # reported a source position (or one has, and chunks are already being written:
            # a process whose workers hold no partition never reports one)
            if flowing is None and (
                len(seen_flowing) == processes
                or (seen_flowing and total(samples, "freshrag_ingest_chunks_written_total") > 0)
            ):
                flowing = now
                cpu_at_flowing = [cpu_seconds(p.pid) for p in procs]
                extra_at_flowing = sum(cpu_seconds(pid) for pid in extra_pids)
                threads_at_flowing = _thread_cpu_all(procs)
                if profile_s > 0 and (tool := _py_spy()):
                    spy = subprocess.Popen(
                        [
                            tool,
                            *_py_spy_args(procs[0].pid, profile_s),
                            str(workdir / "profile.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=(workdir / "py-spy.log").open("w"),
                    )
            if first_write is None and total(samples, "freshrag_ingest_chunks_written_total") > 0:
                first_write = now
            if outcomes(samples) >= produced:
                done = now
                break
            time.sleep(POLL_S)
        if flowing is None:  # done before any poll saw a position: the run was too short
            flowing = first_write or started
            cpu_at_flowing = [0.0 for _ in procs]
        assert first_write is not None
        cpu_each = [cpu_seconds(p.pid) - c0 for p, c0 in zip(procs, cpu_at_flowing, strict=True)]
        cpu_used = sum(cpu_each)
        extra_cpu = sum(cpu_seconds(pid) for pid in extra_pids) - extra_at_flowing
        threads_end = _thread_cpu_all(procs)
        peak_each = [(proc_status_kb(p.pid, "VmHWM") or 0) / 1024 for p in procs]
        elapsed = max(done - flowing, 1e-9)
        chunks = total(samples, "freshrag_ingest_chunks_written_total")
        embed_s = total(samples, "freshrag_ingest_embed_seconds_sum")
        result = {
            "processes": processes,
            "workers": workers,
            "store": "Qdrant server" if qdrant_url else "Qdrant Edge",
            "docs": produced,
            "outcomes": int(outcomes(samples)),
            "outcomes_per_process": [int(outcomes(s)) for s in per_proc],
            "chunks": int(chunks),
            "applied": int(
                sum(
                    v
                    for k, v in samples.items()
                    if k.startswith("freshrag_ingest_events_total{") and "outcome=applied" in k
                )
            ),
            "dead_letters": int(total(samples, "freshrag_ingest_dead_letters_total")),
            "dead_letter_classes": {
                k.partition("{")[2].rstrip("}"): int(v)
                for k, v in samples.items()
                if k.startswith("freshrag_ingest_dead_letters_total{")
            },
            "startup_s": round(flowing - started, 2),
            "time_to_first_write_s": round(max(first_write - flowing, 0.0), 2),
            "time_to_first_write_from_start_s": round(first_write - started, 2),
            "ingest_s": round(elapsed, 2),
            "docs_per_s": round(produced / elapsed, 2),
            "chunks_per_s": round(chunks / elapsed, 2),
            "peak_rss_mb": round(max(peak_each), 1),
            "peak_rss_mb_per_process": [round(x, 1) for x in peak_each],
            "cpu_s": round(cpu_used, 1),
            "cpu_s_per_process": [round(x, 1) for x in cpu_each],
            "cores_used": round(cpu_used / elapsed, 2),
            "embed_s": round(embed_s, 1),
            "embed_batches": int(total(samples, "freshrag_ingest_embed_seconds_count")),
            # the embedding's share of the workers' wall time (1.0: the workers only embed)
            "embed_share_of_worker_time": round(embed_s / (elapsed * workers * processes), 3),
            "thread_cpu_s": {
                k: round(v - threads_at_flowing.get(k, 0.0), 1)
                for k, v in threads_end.items()
                if v - threads_at_flowing.get(k, 0.0) >= 0.05
            },
            "load_average_1m": load_average(),
        }
        if extra_pids:
            result["extra_cpu_s"] = round(extra_cpu, 1)
        if result["dead_letters"]:
            result["log_warnings"] = [
                line[:300]
                for log in logs
                for line in log_tail(log, 200_000).splitlines()
                if " WARNING " in line or " ERROR " in line
            ][-10:]
        if spy is not None:
            try:
                spy.wait(timeout=profile_s + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
            raw = workdir / "profile.txt"
            result["py_spy"] = (
                _summarise_py_spy(raw)
                if raw.exists()
                else {"error": log_tail(workdir / "py-spy.log", 500)}
            )
        return result
    finally:
        http.close()
        if spy is not None and spy.poll() is None:
            spy.kill()
        # SIGTERM every process of the cluster first: one waits for its peers to stop
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            stop_process(proc)
        if result:
            # what the index holds: chunks written twice (a replay) count once here
            result["chunks_indexed"] = (
                server_count(qdrant_url, qdrant_api_key, collection)
                if qdrant_url
                else index_count(workdir / "index")
            )
        if qdrant_url:
            drop_server_collection(qdrant_url, qdrant_api_key, collection)
        delete_topics(bootstrap, topic, f"{topic}.dlq")
        shutil.rmtree(workdir, ignore_errors=True)


def _summed(per_proc: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Samples of several processes' endpoints, summed per name and label set."""
    out: dict[str, float] = {}
    for samples in per_proc:
        for k, v in samples.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _thread_cpu_all(procs: Sequence[subprocess.Popen[bytes]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in procs:
        for k, v in thread_cpu(p.pid).items():
            out[k] = out.get(k, 0.0) + v
    return out


def run(
    docs: int = 1000,
    workers: Sequence[int] = (1, 2),
    *,
    corpus: Path = CORPUS,
    partitions: int = 4,
    snapshot_interval: float = 5.0,
    profile: bool | None = None,
    profile_s: float = 20,
    env: Mapping[str, str] | None = None,
    **_: Any,
) -> dict[str, Any]:
    """docs/s and chunks/s of `freshrag ingest` for each worker count, the ratio of 2 workers
    to 1, and a profile when that ratio is under 1.7 (`profile=None`) or always (`True`)."""
    started = time.monotonic()
    events = scifact_events(docs, corpus)
    runs: list[dict[str, Any]] = []
    with kafka_broker() as bootstrap:
        for n in workers:
            runs.append(
                run_once(
                    bootstrap,
                    events,
                    n,
                    partitions=partitions,
                    snapshot_interval=snapshot_interval,
                    env=env,
                )
            )
        by_workers = {r["workers"]: r for r in runs}
        ratio = None
        if 1 in by_workers and 2 in by_workers and by_workers[1]["chunks_per_s"]:
            ratio = round(by_workers[2]["chunks_per_s"] / by_workers[1]["chunks_per_s"], 2)
        prof: dict[str, Any] | None = None
        want_profile = profile if profile is not None else (ratio is not None and ratio < 1.7)
        if want_profile and 2 in by_workers:
            prof = _profile(
                bootstrap, events, by_workers, partitions, snapshot_interval, profile_s, env
            )
    return {
        "benchmark": "ingest_throughput",
        "settings": {
            "docs": docs,
            "workers": list(workers),
            "corpus": str(corpus),
            "topic_partitions": partitions,
            "snapshot_interval_s": snapshot_interval,
            "embed_batch_size": os.environ.get("FRESHRAG_EMBED_BATCH_SIZE", "64 (default)"),
            "embed_max_wait_ms": os.environ.get("FRESHRAG_EMBED_MAX_WAIT_MS", "200 (default)"),
            "env": dict(env or {}),
            "cpu_count": os.cpu_count(),
            "recovery": "on (fresh directory per run)",
            "index": "Qdrant Edge, fresh shard per run",
        },
        "runs": runs,
        "ratio_2_to_1_chunks_per_s": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": None if ratio is None else ratio >= TARGET_RATIO,
        "profile": prof,
        "wall_s": round(time.monotonic() - started, 1),
    }


def _profile(
    bootstrap: str,
    events: Sequence[dict[str, Any]],
    by_workers: Mapping[int, Mapping[str, Any]],
    partitions: int,
    snapshot_interval: float,
    profile_s: float,
    env: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Why 2 workers are not 1.7x one: cores already used by 1 worker, the embedding's share of
    the workers' time, and (py-spy, when installed) where the 2-worker process spends it."""
    one, two = by_workers[1], by_workers[2]
    cpus = os.cpu_count() or 1
    out: dict[str, Any] = {
        "cpu_count": cpus,
        "cores_used_1_worker": one["cores_used"],
        "cores_used_2_workers": two["cores_used"],
        "embed_share_1_worker": one["embed_share_of_worker_time"],
        "embed_share_2_workers": two["embed_share_of_worker_time"],
        "embed_s_per_chunk_1_worker": round(one["embed_s"] / max(one["chunks"], 1), 4),
        "embed_s_per_chunk_2_workers": round(two["embed_s"] / max(two["chunks"], 1), 4),
        "thread_cpu_s_1_worker": one["thread_cpu_s"],
        "thread_cpu_s_2_workers": two["thread_cpu_s"],
        "load_average_1m": load_average(),
    }
    reasons = []
    if one["cores_used"] >= 0.7 * cpus:
        reasons.append(
            f"1 worker already keeps {one['cores_used']} of {cpus} cores busy (torch intra-op "
            "threads parallelise each embedding batch), so a second worker has no idle core"
        )
    if out["embed_s_per_chunk_2_workers"] > 1.3 * out["embed_s_per_chunk_1_worker"]:
        reasons.append(
            "each chunk's embedding takes longer with 2 workers "
            f"({out['embed_s_per_chunk_2_workers']} s vs {out['embed_s_per_chunk_1_worker']} s of"
            " batch time per chunk): the two workers' batches share the same cores"
        )
    busy = max(one["load_average_1m"], two["load_average_1m"])
    if busy > cpus:
        reasons.append(
            f"the machine was busy (load average up to {busy} on {cpus} cores): the ingest "
            f"process got {one['cores_used']} cores with 1 worker and {two['cores_used']} with"
            " 2, so the workers waited for CPU, not for each other"
        )
    if one["embed_share_of_worker_time"] >= 0.7:
        reasons.append(
            f"embedding is {round(100 * one['embed_share_of_worker_time'])}% of a worker's time,"
            " so ingest scales with embedding compute, i.e. with cores, not with workers"
        )
    if _py_spy():
        sampled = run_once(
            bootstrap,
            events,
            2,
            partitions=partitions,
            snapshot_interval=snapshot_interval,
            profile_s=profile_s,
            env=env,
        )
        spy = sampled.get("py_spy") or {}
        out["py_spy_2_workers"] = spy
        out["py_spy_window_s"] = profile_s
        shares = [pct for _thread, pct in spy.get("embedding_pct_by_thread", [])]
        if len(shares) == 1 or (len(shares) >= 2 and shares[0] > 2 * shares[1]):
            reasons.append(
                "the 2 workers do not embed equally (share of samples inside the embedder per "
                f"thread: {shares}): batches are keyed to buckets, and the buckets' work does "
                "not split evenly over the workers"
            )
    else:
        out["py_spy_2_workers"] = None
    out["explanation"] = reasons or ["no single cause found in the figures; see the profile"]
    return out


def print_table(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"end-to-end ingest, {result['settings']['docs']} SciFact abstracts")
    for col in (
        "workers",
        "docs/s",
        "chunks/s",
        "start-up s",
        "1st write s",
        "ingest s",
        "cores used",
        "embed share",
        "peak RSS MB",
        "dead letters",
    ):
        table.add_column(col, justify="right")
    for r in result["runs"]:
        table.add_row(
            str(r["workers"]),
            f"{r['docs_per_s']:.1f}",
            f"{r['chunks_per_s']:.1f}",
            f"{r['startup_s']:.1f}",
            f"{r['time_to_first_write_s']:.2f}",
            f"{r['ingest_s']:.1f}",
            f"{r['cores_used']:.2f}",
            f"{r['embed_share_of_worker_time']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            str(r["dead_letters"]),
        )
    console = Console()
    console.print(table)
    console.print(
        f"2 workers / 1 worker (chunks/s): {result['ratio_2_to_1_chunks_per_s']} "
        f"(target {TARGET_RATIO}); wall {result['wall_s']} s"
    )
    if result.get("profile"):
        console.print("[bold]profile[/bold]")
        for line in result["profile"]["explanation"]:
            console.print(f"  - {line}")
        spy = result["profile"].get("py_spy_2_workers") or {}
        for key in ("embedding_pct_by_thread", "leaf_functions_pct"):
            if spy.get(key):
                console.print(f"  py-spy {key}: {spy[key][:5]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(docs=args.docs, workers=args.workers, profile=args.profile)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
