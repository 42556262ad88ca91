"""Embedding throughput of each backend against torch fp32, in the same run, on the same
~200-token chunks (SciFact abstracts cut to 200 tokens; the sample documents when SciFact is
absent). The machine is noisy: backends run in interleaved rounds and each keeps its best round,
and speeds are reported as ratios to torch measured alongside.

    .venv/bin/python -m benchmarks.embed_throughput [--chunks 256] [--batch 16] [--backends ...]

`run()` is what `make bench` (benchmarks/bench.py) calls.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from freshrag.core import embed_backends
from freshrag.core.embed_backends import BACKENDS
from freshrag.core.embedder import Embedder, bundled_model_path
from freshrag.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared/data/scifact/corpus.jsonl"
CHUNK_TOKENS = 200


def available_backends() -> list[str]:
    """Every backend whose runtime imports here (openvino ones need the openvino extra)."""
    out = []
    for name in BACKENDS:
        module = "openvino" if name.startswith("openvino") else "onnxruntime"
        if name != "torch":
            try:
                __import__(module)
            except ImportError:
                continue
            if name == "openvino-int8":
                try:
                    __import__("nncf")
                except ImportError:
                    continue
        out.append(name)
    return out


def load_texts(n: int) -> list[tuple[str, str]]:
    """(title, text) of the first `n` SciFact abstracts, or the sample documents repeated
    (used by benchmarks.query_during_ingest)."""
    if SCIFACT.exists():
        rows = []
        with SCIFACT.open() as fh:
            for line in fh:
                d = json.loads(line)
                rows.append((d.get("title", ""), d["text"]))
                if len(rows) >= n:
                    break
        return rows
    docs = sorted((ROOT / "samples/docs").glob("*.md"))
    return [(p.stem, p.read_text()) for p in docs] * (n // max(1, len(docs)) + 1)


def load_chunks(n: int, tokens: int = CHUNK_TOKENS) -> list[str]:
    """`n` texts of about `tokens` tokens each (the model's own tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)
    sources: list[str] = []
    if SCIFACT.exists():
        with SCIFACT.open() as fh:
            for line in fh:
                row = json.loads(line)
                sources.append(f"{row.get('title', '')}\n{row['text']}".strip())
                if len(sources) >= 4 * n:
                    break
    else:
        docs = sorted((ROOT / "samples/docs").glob("*.md"))
        text = " ".join(p.read_text() for p in docs)
        sources = [text[i:] for i in range(0, len(text), max(1, len(text) // (4 * n)))]
    chunks: list[str] = []
    for text in sources:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= tokens * 3 // 4:  # full-size chunks, like the ingest's
            chunks.append(tokenizer.decode(ids[:tokens]))
        if len(chunks) >= n:
            break
    while len(chunks) < n:  # tiny fallback corpora: repeat
        chunks += chunks[: n - len(chunks)]
    return chunks


def run(
    backends: Sequence[str] | None = None,
    chunks: int = 256,
    batch_size: int | None = None,
    *,
    rounds: int = 3,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """One row per backend: backend, chunks_per_s, ratio_vs_torch, mean_cosine_vs_torch,
    min_cosine_vs_torch, load_s (construction with the export cached), export_s (when this run
    exported it, else None), batch_size, threads.

    torch always runs too (the baseline). `batch_size` is the texts per model call (default:
    FRESHRAG_EMBED_SUB_BATCH_SIZE); `threads` defaults to FRESHRAG_EMBED_THREADS (0 = all CPUs).
    """
    settings = load_settings()
    batch = batch_size or settings.embed_sub_batch_size
    nthreads = settings.embed_threads if threads is None else threads
    names = list(backends) if backends else available_backends()
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if "torch" in names:
        names.remove("torch")
    names.insert(0, "torch")
    texts = load_chunks(chunks)

    embedders: dict[str, Embedder] = {}
    load_s: dict[str, float] = {}
    export_s: dict[str, float | None] = {}
    for name in names:
        before = embed_backends.export_count.get(name, 0)
        started = time.perf_counter()
        embedder = Embedder.from_settings(
            settings,
            backend=name,
            threads=nthreads,
            batch_size=batch,
            sub_batch_size=batch,
            query_cache_size=0,
        )
        elapsed = time.perf_counter() - started
        if embed_backends.export_count.get(name, 0) > before:
            export_s[name] = elapsed
            del embedder
            started = time.perf_counter()
            embedder = Embedder.from_settings(
                settings,
                backend=name,
                threads=nthreads,
                batch_size=batch,
                sub_batch_size=batch,
                query_cache_size=0,
            )
            elapsed = time.perf_counter() - started
        else:
            export_s[name] = None
        load_s[name] = elapsed
        embedder.embed_documents(texts[: min(len(texts), batch)])  # warm-up
        embedders[name] = embedder

    best: dict[str, float] = dict.fromkeys(names, 0.0)
    vectors: dict[str, np.ndarray[Any, Any]] = {}
    for _ in range(max(1, rounds)):
        for name in names:  # interleaved, so load spikes hit every backend alike
            started = time.perf_counter()
            out = embedders[name].embed_documents(texts)
            rate = len(texts) / (time.perf_counter() - started)
            best[name] = max(best[name], rate)
            vectors.setdefault(name, np.asarray(out, dtype=np.float32))

    reference = vectors["torch"]
    rows = []
    for name in names:
        cosine = (vectors[name] * reference).sum(axis=1)
        rows.append(
            {
                "backend": name,
                "chunks_per_s": round(best[name], 2),
                "ratio_vs_torch": round(best[name] / best["torch"], 3),
                "mean_cosine_vs_torch": round(float(cosine.mean()), 5),
                "min_cosine_vs_torch": round(float(cosine.min()), 5),
                "load_s": round(load_s[name], 3),
                "export_s": _rounded(export_s[name]),
                "batch_size": batch,
                "threads": nthreads or embed_backends.auto_threads(),
                "chunks": len(texts),
                "chunk_tokens": CHUNK_TOKENS,
            }
        )
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="*", default=None, choices=BACKENDS)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--batch", type=int, default=None, help="texts per model call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = run(args.backends, args.chunks, args.batch, rounds=args.rounds, threads=args.threads)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"embedding throughput, {rows[0]['chunks']} chunks of ~{CHUNK_TOKENS} tokens, "
        f"batch {rows[0]['batch_size']}, {rows[0]['threads']} threads (best of {args.rounds})"
    )
    for col in ("backend", "chunks/s", "× torch", "mean cos", "min cos", "load s", "export s"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in rows:
        table.add_row(
            r["backend"],
            f"{r['chunks_per_s']:.1f}",
            f"{r['ratio_vs_torch']:.2f}",
            f"{r['mean_cosine_vs_torch']:.4f}",
            f"{r['min_cosine_vs_torch']:.4f}",
            f"{r['load_s']:.2f}",
            "cached" if r["export_s"] is None else f"{r['export_s']:.1f}",
        )
    Console().print(table)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (all backends loaded): {peak_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
