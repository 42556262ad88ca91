"""`freshrag` command line (typer + rich). Settings come from FRESHRAG_* environment variables."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from freshrag.core.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from freshrag.ingest.drift import DriftReport
    from freshrag.retrieve.search import SearchResult

app = typer.Typer(
    name="freshrag",
    help="Streaming RAG: Kafka change events -> Bytewax -> Qdrant, answered with citations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one unwrapped error line to stderr; raise the returned Exit."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


def result_table(result: SearchResult, title: str | None = None, width: int = 90) -> Table:
    """A rich table of a result, for the CLI (`freshrag search`)."""
    from rich.markup import escape

    table = Table(title=title or f"{len(result.hits)} hits ({result.mode})", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("doc", overflow="fold")
    table.add_column("v", justify="right")
    table.add_column("updated", no_wrap=True)
    table.add_column("title / text", overflow="fold")
    for i, hit in enumerate(result.hits, 1):
        snippet = " ".join(hit.text.split())
        if len(snippet) > width:
            snippet = snippet[: width - 1] + "…"
        updated = hit.updated_at.strftime("%Y-%m-%d %H:%M") if hit.updated_at else ""
        label = escape(snippet)
        if hit.title:
            label = f"[bold]{escape(hit.title)}[/bold]\n{label}"
        table.add_row(
            str(i),
            f"{hit.score:.4f}",
            escape(f"{hit.doc_id}#{hit.chunk_index}"),
            str(hit.version),
            updated,
            label,
        )
    return table


def _progress() -> Progress:
    """The one progress bar style of the CLI (loading, indexing, evaluating)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def ingest(
    workers: Annotated[
        int, typer.Option("-w", "--workers-per-process", help="bytewax workers")
    ] = 1,
    process_id: Annotated[int | None, typer.Option("-i", "--process-id")] = None,
    addresses: Annotated[
        str | None, typer.Option("-a", "--addresses", help="'host:port;host:port' of the cluster")
    ] = None,
    recovery_dir: Annotated[
        Path, typer.Option("-r", "--recovery-directory", help="bytewax recovery partitions")
    ] = Path(".run/recovery"),
    no_recovery: Annotated[bool, typer.Option("--no-recovery", help="turn recovery off")] = False,
    snapshot_interval: Annotated[
        float, typer.Option("-s", "--snapshot-interval", help="seconds between snapshots")
    ] = 5.0,
    topic_partitions: Annotated[
        int, typer.Option(help="partitions when the topic has to be created")
    ] = 4,
    verbose: bool = False,
) -> None:
    """Run the ingest dataflow: change events -> chunks -> embeddings -> the index."""
    from freshrag.ingest.runner import IngestAborted, IngestConfigError, IngestOptions, run_ingest

    _logging(verbose)
    settings = _settings()
    opts = IngestOptions(
        workers=workers,
        process_id=process_id,
        addresses=addresses.split(";") if addresses else None,
        recovery_dir=None if no_recovery else recovery_dir,
        snapshot_interval=timedelta(seconds=snapshot_interval),
        topic_partitions=topic_partitions,
    )
    try:
        run_ingest(settings, opts)
    except IngestConfigError as exc:
        raise fail(str(exc)) from None
    except IngestAborted as exc:  # logged; exit now, whatever thread is stuck on the failure
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="folder of .md/.txt, a .jsonl file, or a BEIR dir")],
    tenant: Annotated[str | None, typer.Option(help="tenant for every document")] = None,
    limit: Annotated[int | None, typer.Option(help="produce at most this many documents")] = None,
) -> None:
    """Produce documents as upsert events into the topic, with a progress bar."""
    from freshrag.ingest.loader import (
        LoadError,
        count_documents,
        detect,
        iter_events,
        produce_events,
    )

    settings = _settings()
    try:
        src = detect(path)
    except LoadError as exc:
        raise fail(str(exc), 1) from None
    from freshrag.ingest.kafka_io import ensure_event_topics

    try:  # created compacted, as `ingest` would: the broker's auto-create would not be
        ensure_event_topics(settings, 4)
    except Exception as exc:
        where = f"{settings.topic} at {settings.kafka_bootstrap}"
        raise fail(f"cannot prepare topic {where}: {exc}", 1) from None
    try:
        total = count_documents(src)
        if limit is not None:
            total = min(total, limit)
        with _progress() as progress:
            task = progress.add_task(f"loading {src.kind} {path.name}", total=total)
            sent = produce_events(
                settings.kafka_bootstrap,
                settings.topic,
                iter_events(src, tenant),
                on_sent=lambda: progress.advance(task),
                limit=limit,
            )
    except LoadError as exc:
        raise fail(str(exc), 1) from None
    console.print(f"produced {sent} documents to {settings.topic} at {settings.kafka_bootstrap}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: FRESHRAG_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default: FRESHRAG_API_PORT")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the API (uvicorn). Replicas are stateless and need Qdrant server (QDRANT_URL)."""
    import uvicorn

    settings = _settings()
    if workers > 1 and not settings.qdrant_url:
        raise fail("several API workers need Qdrant server: set FRESHRAG_QDRANT_URL")
    _logging()
    uvicorn.run(
        "freshrag.api.app:app_from_env",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
    )


@app.command("mcp")
def mcp_stdio() -> None:
    """MCP over stdio (desktop clients): search, fetch_document, upsert/delete_document,
    wait_for, freshness. The caller is the API key in FRESHRAG_MCP_API_KEY (as a bearer key).
    On a Qdrant Edge index it must be the only process holding the shard: with `freshrag up`
    running, use Qdrant server or connect the client to the HTTP endpoint /mcp instead."""
    from freshrag.api.auth import Unauthorized
    from freshrag.api.mcp_server import API_KEY_ENV, run_stdio, stdio_caller
    from freshrag.api.services import build_services

    settings = _settings()
    _logging()  # stderr: stdout carries the protocol
    try:
        caller = stdio_caller(settings, os.environ)
    except Unauthorized as exc:
        raise fail(f"{API_KEY_ENV}: {exc.message}") from None
    try:
        services = build_services(settings)
    except RuntimeError as exc:
        if settings.qdrant_url or "another process" not in str(exc):
            raise
        raise fail(
            f"{exc}. `freshrag mcp` (stdio) opens the index itself: on a Qdrant Edge shard it "
            "must be the only process (the Edge shard lock). Run Qdrant server "
            "(FRESHRAG_QDRANT_URL), or point the MCP client at the running API's "
            "http://HOST:PORT/mcp endpoint instead."
        ) from None
    try:
        run_stdio(services, caller)
    finally:
        services.close()


@app.command()
def up(
    workers: Annotated[int, typer.Option("-w", "--workers-per-process")] = 1,
    recovery_dir: Annotated[Path, typer.Option("-r", "--recovery-directory")] = Path(
        ".run/recovery"
    ),
    snapshot_interval: Annotated[float, typer.Option("-s", "--snapshot-interval")] = 2.0,
    topic_partitions: Annotated[int, typer.Option()] = 4,
) -> None:
    """The embedded default: ingest dataflow + API in one process over a Qdrant Edge shard."""
    from freshrag.ingest.runner import IngestConfigError, IngestOptions
    from freshrag.up import run_up

    _logging()
    settings = _settings()
    try:
        run_up(
            settings,
            IngestOptions(
                workers=workers,
                recovery_dir=recovery_dir,
                snapshot_interval=timedelta(seconds=snapshot_interval),
                topic_partitions=topic_partitions,
            ),
        )
    except IngestConfigError as exc:
        raise fail(str(exc)) from None


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    tenant: Annotated[str, typer.Option(help="tenant to search")] = "default",
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="metadata KEY=VALUE (repeatable); doc_id=ID narrows to ids"),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100)] = 10,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="boost recently updated documents")
    ] = False,
    mode: Annotated[str, typer.Option(help="hybrid | dense | bm25")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the index directly (opens the store: stop `freshrag up` first when on Edge)."""
    from freshrag.core.embedder import Embedder
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.retrieve.contract import SearchFilter
    from freshrag.retrieve.search import HybridSearcher, SearchRequest
    from freshrag.retrieve.stores import open_serving_store, serving_settings

    settings = _settings()
    metadata: dict[str, str] = {}
    doc_ids: list[str] = []
    for item in filter_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--filter expects KEY=VALUE, got {item!r}")
        if key == "doc_id":
            doc_ids.append(value)
        else:
            metadata[key] = value
    if mode not in ("hybrid", "dense", "bm25"):
        raise fail("--mode must be hybrid, dense or bm25")
    try:
        store = open_serving_store(settings)
    except Exception as exc:
        raise fail(f"cannot open the index: {exc}") from None
    try:
        try:  # queries use the model the serving generation was built with
            embedder = Embedder.from_settings(serving_settings(settings))
        except Exception as exc:
            raise fail(f"cannot load the embedding model: {exc}", 1) from None
        searcher = HybridSearcher(store, embedder, Bm25Encoder())
        flt = SearchFilter(tenant=tenant, metadata_equals=metadata, doc_ids=doc_ids or None)
        result = searcher.search(
            SearchRequest(query=query, filter=flt, top_k=top_k, fresh=fresh, mode=mode)  # type: ignore[arg-type]
        )
    finally:
        store.close()
    if as_json:
        from dataclasses import asdict

        print(json.dumps([asdict(h) for h in result.hits], default=str, indent=2))
    else:
        Console().print(result_table(result))


@app.command()
def ask(
    question: Annotated[str, typer.Argument()],
    api_url: Annotated[str, typer.Option(envvar="FRESHRAG_API_URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str | None, typer.Option(envvar="FRESHRAG_API_KEY")] = None,
    fresh: bool = False,
) -> None:
    """Ask the running API; prints the answer as it streams, then its citations."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = Console()
    body = {"question": question, "stream": True, "fresh": fresh}
    try:
        with httpx.stream(
            "POST", f"{api_url}/v1/chat", json=body, headers=headers, timeout=120
        ) as response:
            if response.status_code != 200:
                response.read()
                raise fail(f"{response.status_code} from {api_url}: {response.text[:500]}", 1)
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "token":
                        out.print(data["text"], end="", soft_wrap=True, highlight=False)
                    elif event == "done":
                        out.print()
                        if data.get("replaced"):  # the streamed text failed the grounding guard
                            out.print(
                                "[yellow]The answer above is not supported by its sources; "
                                "instead:[/yellow]"
                            )
                            out.print(str(data.get("answer", "")), soft_wrap=True, highlight=False)
                        _print_verdict(out, data)
                        _print_citations(out, data)
                    elif event == "error":
                        raise fail(f"upstream error: {data.get('message')}", 1)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {api_url}: {exc}", 1) from None


_VERDICTS = {
    "generated": "[green]verified against its sources[/green]",
    "extractive": "[yellow]quoted from the sources[/yellow] (the model's answer was not supported)",
    "raw": "[red]unverified[/red]: some numbers, dates or names are not in its sources",
}


def _print_verdict(out: Console, done: dict[str, object]) -> None:
    verdict = _VERDICTS.get(str(done.get("answer_type")))
    if verdict:
        out.print(f"({verdict})")


def _print_citations(out: Console, done: dict[str, object]) -> None:
    citations = done.get("citations") or []
    if done.get("refused"):
        out.print("[dim](no indexed source covers this question)[/dim]")
        return
    if not citations:
        out.print("[dim](no citations)[/dim]")
        return
    out.print("\n[bold]Sources[/bold]")
    for c in citations:  # type: ignore[attr-defined]
        out.print(
            f"  [{c['number']}] {c['title'] or c['doc_id']}  v{c['version']}  "
            f"updated {c['updated_at']}  {c['url'] or ''}"
        )


@app.command("eval")
def evaluate(
    dataset_dir: Annotated[
        Path, typer.Argument(help="BEIR dataset: corpus.jsonl, queries.jsonl, qrels/")
    ],
    split: Annotated[
        str | None, typer.Option(help="qrels split (default: test, then dev, then train)")
    ] = None,
    index_path: Annotated[Path, typer.Option(help="Edge shard for the evaluation index")] = Path(
        ".cache/eval-index"
    ),
    max_queries: Annotated[int | None, typer.Option()] = None,
    reindex: bool = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the report here")
    ] = None,
) -> None:
    """nDCG@10, recall@100 and MRR@10 for dense, BM25 and hybrid on a BEIR dataset."""
    from freshrag.core.embedder import Embedder
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.evaluation import EvalError, run_eval
    from freshrag.ingest.indexing import ChunkingConfig
    from freshrag.retrieve.edge_store import EdgeStore
    from freshrag.retrieve.search import HybridSearcher

    settings = _settings()
    embedder = Embedder.from_settings(settings)
    store = EdgeStore(index_path, "eval")
    store.ensure_collection()
    tasks: dict[str, object] = {}
    try:
        with _progress() as progress:

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

            result = run_eval(
                dataset_dir,
                store,
                HybridSearcher(store, embedder, Bm25Encoder()),
                embedder,
                chunking=ChunkingConfig(
                    max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap
                ),
                split=split,
                max_queries=max_queries,
                reindex=reindex,
                progress=report,
            )
    except EvalError as exc:
        raise fail(str(exc), 1) from None
    finally:
        store.close()
    Console().print(result.to_table())
    print(result.to_json())
    if json_out is not None:
        json_out.write_text(result.to_json())


@app.command()
def optimize(
    online: Annotated[
        bool,
        typer.Option(
            "--online/--in-place",
            help="online: optimize a copy in a subprocess and swap it in (Ctrl-C leaves the "
            "index as it was; needs the shard's size again in free disk); in-place: the "
            "engine's blocking call on the shard itself",
        ),
    ] = True,
) -> None:
    """Build the embedded index's HNSW graph (stop `freshrag up` first: it holds the index, and
    builds the graph itself in the background, see FRESHRAG_EDGE_OPTIMIZE_MIN_POINTS)."""
    import time

    from freshrag.retrieve.edge_store import EdgeStore

    settings = _settings()
    if settings.qdrant_url:
        raise fail("Qdrant server optimizes its collections itself; nothing to do", 1)
    store = EdgeStore(settings.index_path, settings.collection)
    try:
        store.ensure_collection()
        started = time.perf_counter()
        with console.status(f"optimizing {store.count()} points in {settings.index_path}..."):
            if online:
                result = store.optimize_online()
                changed = result.swapped
            else:
                changed = store.optimize()
        took = time.perf_counter() - started
        console.print(f"{'optimized' if changed else 'already optimized'} in {took:.1f} s")
        if online:
            console.print(f"{store.unindexed_points()} points not covered by HNSW")
    except Exception as exc:
        raise fail(f"cannot optimize {settings.index_path}: {exc}", 1) from None
    finally:
        store.close()


@app.command()
def verify(
    tenant: Annotated[str | None, typer.Option(help="check this tenant only")] = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="replay the drifted documents into the topic; the running ingest re-applies "
            "them (verify again once it has caught up)",
        ),
    ] = False,
    examples: Annotated[int, typer.Option(min=0, help="examples shown per category")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Compare the index with the topic: documents missing, stale, or deleted at the source.
    Exit code 0: clean, 1: drift found, 2: error. Reads the whole topic and every point."""
    from freshrag.ingest.drift import Drift
    from freshrag.ingest.events import EventLimits
    from freshrag.ingest.verify import Replayed, VerifyError, repair_drift, verify_settings
    from freshrag.retrieve.stores import open_serving_store

    settings = _settings()
    try:
        store = open_serving_store(settings)
    except Exception as exc:
        raise fail(f"cannot open the index: {exc}") from None
    try:
        with _progress() as progress:
            tasks: dict[str, object] = {}

            def report_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

            result = verify_settings(settings, store, tenant=tenant, progress=report_progress)
    except VerifyError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"verify failed: {type(exc).__name__}: {exc}") from None
    finally:
        store.close()
    report = result.report
    replayed: list[Replayed] = []
    skipped: list[Drift] = []
    if repair and report.drift:
        try:
            replayed, skipped = repair_drift(
                settings.kafka_bootstrap,
                settings.topic,
                report.drift,
                result.read_to,
                limits=EventLimits(max_document_bytes=settings.max_document_bytes),
            )
        except Exception as exc:
            raise fail(f"repair failed: {type(exc).__name__}: {exc}") from None
    if as_json:
        out = report.as_dict(examples)
        out["topic"] = settings.topic
        out["duration_s"] = round(result.duration_s, 3)
        if repair:
            out["replayed"] = [
                {
                    "category": r.drift.category,
                    "tenant": r.drift.tenant,
                    "doc_id": r.drift.doc_id,
                    "events": [e["op"] for e in r.events],
                }
                for r in replayed
            ]
            out["skipped"] = [d.as_dict() for d in skipped]
        print(json.dumps(out, indent=2, default=str))
    else:
        Console().print(_verify_table(report, settings.topic, examples))
        for item in replayed:
            ops = " + ".join(str(e["op"]) for e in item.events)
            d = item.drift
            console.print(f"replayed {d.category} {d.tenant}/{d.doc_id}: {ops}")
        for d in skipped:
            console.print(f"left {d.category} {d.tenant}/{d.doc_id}: changed since it was read")
        if replayed:
            console.print(
                f"replayed {len(replayed)} documents into {settings.topic}: the running ingest "
                "applies them; run verify again once it has caught up"
            )
        elif report.clean:
            console.print(f"clean: the index matches {settings.topic} ({result.duration_s:.1f} s)")
    if not report.clean:
        raise typer.Exit(1)


def _verify_table(report: DriftReport, topic: str, examples: int) -> Table:
    from rich.markup import escape

    from freshrag.ingest.drift import CATEGORIES

    table = Table(
        title=(
            f"verify: {report.records} records of {topic} ({report.bad_records} bad, skipped), "
            f"{report.source_documents} live documents, {report.index_documents} in the index"
        )
    )
    table.add_column("category")
    table.add_column("count", justify="right")
    table.add_column("examples", overflow="fold")
    counts = report.counts()
    for category in CATEGORIES:
        shown = [f"{d.tenant}/{d.doc_id}: {d.reason}" for d in report.examples(category, examples)]
        table.add_row(category, str(counts[category]), escape("\n".join(shown)))
    flight = [f"{f.tenant}/{f.doc_id}: {f.reason}" for f in report.in_flight[:examples]]
    table.add_row("in flight (not drift)", str(len(report.in_flight)), escape("\n".join(flight)))
    if not report.watermarks_known:
        table.caption = "no indexed watermarks published: nothing counted as in flight"
    return table


@app.command("embed-server")
def embed_server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8090,
    model_name: Annotated[
        str | None,
        typer.Option(help="name clients send as `model` (default: all-MiniLM-L6-v2, or the dir)"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="FRESHRAG_EMBED_SERVER_API_KEY", help="Bearer key clients must send"),
    ] = None,
) -> None:
    """Serve the local embedding model over an OpenAI-compatible POST /v1/embeddings, so several
    processes share one model (they set FRESHRAG_EMBED_BACKEND=openai and
    FRESHRAG_EMBED_OPENAI_BASE_URL=http://HOST:PORT/v1). Model and runtime: FRESHRAG_EMBED_*."""
    import uvicorn

    from freshrag.api.embed_server import BUNDLED_MODEL_NAME, create_embed_app
    from freshrag.core.embedder import Embedder, EmbedderError

    settings = _settings()
    if settings.embed_backend == "openai":
        raise fail(
            "embed-server serves a local model: set FRESHRAG_EMBED_BACKEND to torch, onnx, "
            "onnx-int8, openvino or openvino-int8"
        )
    _logging()
    try:
        embedder = Embedder.from_settings(settings)
    except EmbedderError as exc:
        raise fail(str(exc)) from None
    path = settings.embedder_model_path
    name = model_name or (path.name if path else BUNDLED_MODEL_NAME)
    identity = str(embedder.describe()["model"])
    app_ = create_embed_app(embedder, model_name=name, api_key=api_key, identity=identity)
    console.print(f"serving {name} ({identity}, {embedder.dim}-d) on http://{host}:{port}/v1")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def reindex(
    golden: Annotated[
        Path | None,
        typer.Option(help="BEIR-format folder: switch only if the new settings score no lower"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="switch even if the gate fails")] = False,
    no_switch: Annotated[
        bool, typer.Option("--no-switch", help="build and catch up, but leave readers as they are")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="after the switch, keep ingesting the new generation"),
    ] = False,
    max_lag: Annotated[int, typer.Option(min=0, help="records behind that count as caught up")] = 0,
    timeout: Annotated[
        float | None, typer.Option(help="give up (resumable) if not caught up after this many s")
    ] = None,
    workers: Annotated[int, typer.Option("-w", "--workers-per-process")] = 1,
    recovery_dir: Annotated[
        Path, typer.Option("-r", "--recovery-directory", help="base recovery directory")
    ] = Path(".run/recovery"),
    topic_partitions: Annotated[int, typer.Option()] = 4,
    break_lock: Annotated[
        bool,
        typer.Option(
            "--break-lock",
            help="take the index's build lock from another run you know is dead (server)",
        ),
    ] = False,
) -> None:
    """Build a new index generation with the current settings (model, chunking) from the
    compacted topic while the current one serves, then switch readers to it atomically.
    Resumable: run it again after a crash. Roll back with `freshrag index switch`.
    One run per index at a time: a second one exits with code 2 and names the holder."""
    import signal
    import threading

    from freshrag.ingest.runner import IngestOptions
    from freshrag.reindex import ReindexError, run_reindex

    _logging()
    settings = _settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    opts = IngestOptions(
        workers=workers, recovery_dir=recovery_dir, topic_partitions=topic_partitions
    )
    try:
        with _progress() as progress:
            task = progress.add_task("re-indexing (records of the topic indexed)", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=max(total, 1))

            outcome = run_reindex(
                settings,
                opts,
                golden=golden,
                force=force,
                follow=follow,
                switch=not no_switch,
                max_lag=max_lag,
                timeout_s=timeout,
                stop=stop,
                progress=advance,
                break_lock=break_lock,
            )
    except ReindexError as exc:
        raise fail(str(exc), exc.exit_code) from None
    for key, value in outcome.quality.items():
        console.print(f"quality gate: {key} = {value:.4f}")
    action = "serving" if outcome.switched else "built (not switched)"
    console.print(
        f"{action}: {outcome.generation} ({outcome.points} points, {outcome.seconds:.1f} s); "
        f"previous: {outcome.previous} (roll back: freshrag index switch {outcome.previous})"
    )
    console.print(f"source: {outcome.source} ({outcome.note})")
    if outcome.resumed_at:
        console.print(f"resumed: {outcome.resumed_at} records were indexed by an earlier run")


index_app = typer.Typer(help="Index generations: list them, switch readers between them.")
app.add_typer(index_app, name="index")


@index_app.command("list")
def index_list() -> None:
    """Every generation of the index, the settings that built it, and which one serves."""
    from freshrag.retrieve.stores import open_catalog

    settings = _settings()
    catalog = open_catalog(settings)
    try:
        serving = catalog.serving()
        table = Table("", "generation", "model", "dim", "chunk tokens/overlap", "created")
        for name in catalog.generations():
            m = catalog.read_manifest(name)
            b = m.build if m is not None else {}
            table.add_row(
                "*" if name == serving else "",
                name,
                str(b.get("model", "?")),
                str(b.get("dimension", "?")),
                f"{b.get('chunk_tokens', '?')}/{b.get('chunk_overlap', '?')}",
                (m.created_at[:19] if m is not None else "(no manifest)"),
            )
    finally:
        catalog.close()
    console.print(table)


@index_app.command("switch")
def index_switch(
    generation: Annotated[str, typer.Argument(help="the generation readers should use")],
) -> None:
    """Point readers at another generation, atomically (a roll-back is a switch back)."""
    from freshrag.retrieve.stores import open_catalog

    settings = _settings()
    catalog = open_catalog(settings)
    try:
        previous = catalog.serving()
        catalog.switch(generation)
    except ValueError as exc:
        raise fail(str(exc)) from None
    finally:
        catalog.close()
    console.print(f"serving {generation} (was {previous})")


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (secrets masked)."""
    settings = _settings()
    print(json.dumps(settings.safe_summary(), indent=2, default=str))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
