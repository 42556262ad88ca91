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
    from freshrag.ingest.runner import IngestOptions
    from freshrag.up import run_up

    _logging()
    settings = _settings()
    run_up(
        settings,
        IngestOptions(
            workers=workers,
            recovery_dir=recovery_dir,
            snapshot_interval=timedelta(seconds=snapshot_interval),
            topic_partitions=topic_partitions,
        ),
    )


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
    from freshrag.retrieve.stores import open_settings_store

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
        store = open_settings_store(settings)
    except Exception as exc:
        raise fail(f"cannot open the index: {exc}") from None
    try:
        searcher = HybridSearcher(store, Embedder.from_settings(settings), Bm25Encoder())
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
