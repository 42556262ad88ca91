"""Retrieval quality on a BEIR dataset (nDCG@10, recall@100, MRR@10) for each search mode.

A layer above the stages: `run` indexes the corpus through the same chunk -> embed -> store path
as ingest (`DocumentIndexer.process` + `apply_writes`) and sends every query through
`HybridSearcher.search`, so the figures describe what the platform serves, not a side pipeline.
`dataset` reads BEIR folders, `metrics` holds the pure scoring functions, `report` the results.
Nothing here imports bytewax, prometheus or rich at import time.
"""

from freshrag.evaluation.dataset import BeirDataset, EvalError, load_beir, load_qrels
from freshrag.evaluation.metrics import evaluate_rankings, mrr_at_k, ndcg_at_k, recall_at_k
from freshrag.evaluation.report import EvalReport, IndexStats, ModeMetrics
from freshrag.evaluation.run import (
    EVAL_MODES,
    EVAL_TENANT,
    chunking_fingerprint,
    index_corpus,
    run_eval,
    search_rankings,
)

__all__ = [
    "EVAL_MODES",
    "EVAL_TENANT",
    "BeirDataset",
    "EvalError",
    "EvalReport",
    "IndexStats",
    "ModeMetrics",
    "chunking_fingerprint",
    "evaluate_rankings",
    "index_corpus",
    "load_beir",
    "load_qrels",
    "mrr_at_k",
    "ndcg_at_k",
    "recall_at_k",
    "run_eval",
    "search_rankings",
]
