"""BEIR datasets on disk: corpus.jsonl, queries.jsonl and qrels/<split>.tsv (pure file reading)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EvalError(ValueError):
    """The dataset folder is not a readable BEIR dataset; the message says what is missing."""


# -- dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeirDataset:
    name: str
    corpus_path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}
    split: str

    def iter_corpus(self) -> Iterator[dict[str, Any]]:
        with self.corpus_path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalError(f"{self.corpus_path}:{n}: not JSON: {exc.msg}") from None
                if not isinstance(row, dict) or "_id" not in row:
                    raise EvalError(f"{self.corpus_path}:{n}: expected an object with '_id'")
                yield row

    def judged_queries(self) -> list[str]:
        """Query ids with text and at least one relevant document, in a stable order."""
        ids = [
            qid
            for qid, rels in self.qrels.items()
            if qid in self.queries and any(r > 0 for r in rels.values())
        ]
        return sorted(ids, key=lambda q: (len(q), q))


def _pick_split(qrels_dir: Path, split: str | None) -> Path:
    if split is not None:
        path = qrels_dir / f"{split}.tsv"
        if not path.exists():
            have = ", ".join(sorted(p.stem for p in qrels_dir.glob("*.tsv"))) or "none"
            raise EvalError(f"no qrels split {split!r} in {qrels_dir} (have: {have})")
        return path
    for name in ("test", "dev", "train"):
        if (qrels_dir / f"{name}.tsv").exists():
            return qrels_dir / f"{name}.tsv"
    files = sorted(qrels_dir.glob("*.tsv"))
    if not files:
        raise EvalError(f"no qrels/*.tsv in {qrels_dir.parent}")
    return files[0]


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (`query-id corpus-id score`, header optional) -> graded relevance."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise EvalError(f"{path}:{n}: expected query-id, corpus-id, score")
            try:
                score = int(float(row[2]))
            except ValueError:
                if n == 1:  # the header
                    continue
                raise EvalError(f"{path}:{n}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def load_beir(dataset_dir: Path, split: str | None = None) -> BeirDataset:
    """Read a BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.

    Without `split`, test is preferred, then dev, then train (SciFact here ships only train).
    """
    dataset_dir = Path(dataset_dir)
    corpus = dataset_dir / "corpus.jsonl"
    queries_path = dataset_dir / "queries.jsonl"
    for needed in (corpus, queries_path, dataset_dir / "qrels"):
        if not needed.exists():
            raise EvalError(f"{dataset_dir} is not a BEIR dataset: {needed.name} is missing")
    qrels_path = _pick_split(dataset_dir / "qrels", split)
    queries: dict[str, str] = {}
    with queries_path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                queries[str(row["_id"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EvalError(f"{queries_path}:{n}: expected {{'_id', 'text'}}") from None
    return BeirDataset(
        name=dataset_dir.name,
        corpus_path=corpus,
        queries=queries,
        qrels=load_qrels(qrels_path),
        split=qrels_path.stem,
    )
