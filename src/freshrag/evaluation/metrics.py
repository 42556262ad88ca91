"""Ranking metrics over doc ids and graded relevance (pure): nDCG@k, recall@k, MRR@k."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

NDCG_K = 10
RECALL_K = 100
MRR_K = 10


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = NDCG_K) -> float:
    """nDCG@k with linear gain `rel / log2(rank + 1)` (trec_eval's and BEIR's definition)."""
    dcg = sum(rels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = RECALL_K) -> float:
    """Share of the relevant documents (relevance > 0) found in the top k."""
    relevant = {doc for doc, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = MRR_K) -> float:
    """1 / rank of the first relevant document in the top k (0 when none is)."""
    for i, doc in enumerate(ranked[:k]):
        if rels.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> tuple[float, float, float]:
    """Mean (nDCG@10, recall@100, MRR@10) of ranked doc ids per query, over `rankings`' keys."""
    if not rankings:
        return 0.0, 0.0, 0.0
    n = len(rankings)
    ndcg = sum(ndcg_at_k(r, qrels[q]) for q, r in rankings.items()) / n
    recall = sum(recall_at_k(r, qrels[q]) for q, r in rankings.items()) / n
    mrr = sum(mrr_at_k(r, qrels[q]) for q, r in rankings.items()) / n
    return ndcg, recall, mrr
