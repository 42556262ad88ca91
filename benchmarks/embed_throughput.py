"""Embedding throughput: per-document embedding (what a naive per-event sink does) against the
flow's cross-document batches, fp32 torch on CPU, in the same run (ratios, not absolutes, are
what to compare on a noisy machine).

    .venv/bin/python -m benchmarks.embed_throughput [--docs 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from freshrag.core.embedder import Embedder
from freshrag.ingest.chunking import chunk_document, embedding_text

SCIFACT = Path(__file__).resolve().parents[2] / "shared/data/scifact/corpus.jsonl"


def load_texts(n: int) -> list[tuple[str, str]]:
    if SCIFACT.exists():
        rows = []
        with SCIFACT.open() as fh:
            for line in fh:
                d = json.loads(line)
                rows.append((d.get("title", ""), d["text"]))
                if len(rows) >= n:
                    break
        return rows
    docs = sorted((Path(__file__).resolve().parents[1] / "samples/docs").glob("*.md"))
    return [(p.stem, p.read_text()) for p in docs] * (n // max(1, len(docs)) + 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    embedder = Embedder(batch_size=args.batch)
    docs = [
        [embedding_text(c) for c in chunk_document(text, title, embedder, 200, 32)]
        for title, text in load_texts(args.docs)
    ]
    total = sum(len(d) for d in docs)
    embedder.embed_documents(docs[0])  # warm-up

    started = time.perf_counter()
    for chunks in docs:
        embedder.embed_documents(chunks)
    per_doc = total / (time.perf_counter() - started)

    flat = [c for d in docs for c in d]
    started = time.perf_counter()
    for i in range(0, len(flat), args.batch):
        embedder.embed_documents(flat[i : i + args.batch])
    batched = total / (time.perf_counter() - started)

    print(f"{len(docs)} documents, {total} chunks (<=200 tokens + title context)")
    print(f"per-document embedding (fp32 baseline): {per_doc:8.1f} chunks/s")
    print(f"cross-document batches of {args.batch:<4}:      {batched:8.1f} chunks/s")
    print(f"speed-up: {batched / per_doc:.2f}x")


if __name__ == "__main__":
    main()
