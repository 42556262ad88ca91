"""What an evaluation run reports: index statistics and metrics per search mode (JSON, table)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True, slots=True)
class IndexStats:
    documents: int
    indexed: int  # embedded and written in this run
    reused: int  # already in the store with the same fingerprint
    removed: int  # in the store but no longer in the corpus
    chunks: int  # points of the tenant after indexing
    chunks_embedded: int  # chunks embedded in this run
    seconds: float
    embed_seconds: float
    dead_letters: int = 0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.embed_seconds if self.embed_seconds else 0.0


@dataclass(frozen=True, slots=True)
class ModeMetrics:
    mode: str
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True, slots=True)
class EvalReport:
    dataset: str
    split: str
    tenant: str
    queries: int
    index: IndexStats
    modes: dict[str, ModeMetrics]
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        index = asdict(self.index)
        index["chunks_per_second"] = round(self.index.chunks_per_second, 2)
        return {
            "dataset": self.dataset,
            "split": self.split,
            "tenant": self.tenant,
            "queries": self.queries,
            "index": index,
            "modes": {name: asdict(m) for name, m in self.modes.items()},
            "params": self.params,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_table(self) -> Table:
        """Metrics per mode as a rich table (best value per column in bold)."""
        from rich.table import Table

        table = Table(
            title=f"{self.dataset} ({self.split}, {self.queries} queries, "
            f"{self.index.documents} docs, {self.index.chunks} chunks)"
        )
        table.add_column("mode")
        for col in ("nDCG@10", "recall@100", "MRR@10", "p50 ms", "p95 ms"):
            table.add_column(col, justify="right")
        best = {
            attr: max((getattr(m, attr) for m in self.modes.values()), default=0.0)
            for attr in ("ndcg_at_10", "recall_at_100", "mrr_at_10")
        }

        def cell(m: ModeMetrics, attr: str) -> str:
            value = getattr(m, attr)
            text = f"{value:.4f}"
            return f"[bold]{text}[/bold]" if len(self.modes) > 1 and value == best[attr] else text

        for m in self.modes.values():
            table.add_row(
                m.mode,
                cell(m, "ndcg_at_10"),
                cell(m, "recall_at_100"),
                cell(m, "mrr_at_10"),
                f"{m.p50_ms:.1f}",
                f"{m.p95_ms:.1f}",
            )
        return table
