"""`freshrag` command line (typer + rich). Settings come from FRESHRAG_* environment variables."""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from freshrag.core.settings import Settings, SettingsError, load_settings

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
    from freshrag.ingest.runner import IngestConfigError, IngestOptions, run_ingest

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


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="folder of .md/.txt, a .jsonl file, or a BEIR dir")],
    tenant: Annotated[str | None, typer.Option(help="tenant for every document")] = None,
    limit: Annotated[int | None, typer.Option(help="produce at most this many documents")] = None,
) -> None:
    """Produce documents as upsert events into the topic, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

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
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
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
