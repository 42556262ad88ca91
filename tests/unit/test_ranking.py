"""Pure ranking logic: weighted RRF, freshness boost, dedupe/group and deterministic ties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from freshrag.retrieve.contract import Hit
from freshrag.retrieve.ranking import (
    apply_freshness,
    dedupe_by_document,
    freshness_factor,
    group_by_document,
    parse_timestamp,
    rrf_fuse,
    sort_hits,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def hit(pid: str, score: float = 1.0, doc: str | None = None, **payload: Any) -> Hit:
    return Hit(pid, score, {"doc_id": doc or pid, **payload})


def ids(hits: list[Hit]) -> list[str]:
    return [h.point_id for h in hits]


# -- RRF -------------------------------------------------------------------------------------


def test_rrf_scores_follow_the_formula() -> None:
    dense = [hit("a"), hit("b"), hit("c")]
    sparse = [hit("c"), hit("a")]
    fused = {h.point_id: h.score for h in rrf_fuse([dense, sparse], k=60)}
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert ids(rrf_fuse([dense, sparse], k=60)) == ["a", "c", "b"]


def test_rrf_uses_rank_not_raw_score() -> None:
    # BM25 scores of 40 would swamp cosine scores of 0.9 if raw scores were summed.
    dense = [hit("a", 0.9), hit("b", 0.8)]
    sparse = [hit("b", 40.0), hit("a", 39.0)]
    fused = rrf_fuse([dense, sparse], k=60)
    assert fused[0].score == pytest.approx(fused[1].score)  # symmetric ranks: exact tie
    assert ids(fused) == ["a", "b"]  # broken by point id


def test_rrf_weights_shift_the_order() -> None:
    dense = [hit("d1"), hit("s1")]
    sparse = [hit("s1"), hit("d1")]
    assert ids(rrf_fuse([dense, sparse], [2.0, 1.0], k=10))[0] == "d1"
    assert ids(rrf_fuse([dense, sparse], [1.0, 2.0], k=10))[0] == "s1"
    only_sparse = rrf_fuse([dense, sparse], [0.0, 1.0], k=10)
    assert ids(only_sparse) == ["s1", "d1"]
    assert only_sparse[0].score == pytest.approx(1 / 11)


def test_rrf_k_controls_how_much_top_ranks_dominate() -> None:
    # x is 1st in one list only; y is 3rd in both lists.
    a = [hit("x"), hit("p"), hit("y")]
    b = [hit("q"), hit("r"), hit("y")]
    assert ids(rrf_fuse([a, b], k=0))[:3] == ["q", "x", "y"]  # 1/1 beats 2 * 1/3
    assert ids(rrf_fuse([a, b], k=60))[0] == "y"  # 2/63 beats 1/61


def test_rrf_counts_a_repeated_point_once_per_list() -> None:
    fused = rrf_fuse([[hit("a"), hit("a"), hit("b")]], k=60)
    assert {h.point_id: h.score for h in fused} == pytest.approx({"a": 1 / 61, "b": 1 / 62})


def test_rrf_keeps_payload_and_validates_arguments() -> None:
    fused = rrf_fuse([[hit("a", title="from dense")], [hit("a", title="from sparse")]])
    assert fused[0].payload["title"] == "from dense"
    assert rrf_fuse([[], []]) == []
    with pytest.raises(ValueError, match="weights"):
        rrf_fuse([[hit("a")]], [1.0, 1.0])
    with pytest.raises(ValueError):
        rrf_fuse([[hit("a")]], [-1.0])
    with pytest.raises(ValueError):
        rrf_fuse([[hit("a")]], k=-1)


def test_ties_break_on_point_id_whatever_the_input_order() -> None:
    forward = [[hit("p2"), hit("p9")], [hit("p9"), hit("p2")]]
    backward = [[hit("p9"), hit("p2")], [hit("p2"), hit("p9")]]
    assert ids(rrf_fuse(forward)) == ids(rrf_fuse(backward)) == ["p2", "p9"]
    assert ids(sort_hits([hit("b", 0.5), hit("a", 0.5), hit("c", 0.7)])) == ["c", "a", "b"]


# -- freshness -------------------------------------------------------------------------------


def test_freshness_factor_decays_by_half_life() -> None:
    assert freshness_factor(NOW, NOW, 24, 0.4) == pytest.approx(1.0)
    assert freshness_factor(NOW - timedelta(hours=24), NOW, 24, 0.4) == pytest.approx(0.8)
    assert freshness_factor(NOW - timedelta(hours=48), NOW, 24, 0.4) == pytest.approx(0.7)
    assert freshness_factor(NOW - timedelta(days=3650), NOW, 24, 0.4) == pytest.approx(0.6)
    assert freshness_factor(NOW + timedelta(hours=5), NOW, 24, 0.4) == pytest.approx(1.0)
    assert freshness_factor(None, NOW, 24, 0.4) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        freshness_factor(NOW, NOW, 0, 0.4)
    with pytest.raises(ValueError):
        freshness_factor(NOW, NOW, 24, 1.5)


def test_freshness_moves_a_newer_near_duplicate_above_an_older_one() -> None:
    old = (NOW - timedelta(days=200)).isoformat()
    new = (NOW - timedelta(hours=2)).isoformat()
    # The old copy is very slightly more relevant (fused ranks 1 and 2).
    ranked = rrf_fuse(
        [
            [
                hit("old", doc="policy-2023", updated_at=old),
                hit("new", doc="policy-2025", updated_at=new),
            ],
            [
                hit("old", doc="policy-2023", updated_at=old),
                hit("new", doc="policy-2025", updated_at=new),
            ],
        ]
    )
    assert ids(ranked) == ["old", "new"]  # boost off: relevance order
    boosted = apply_freshness(ranked, NOW, half_life_hours=24 * 30, weight=0.3)
    assert ids(boosted) == ["new", "old"]
    assert boosted[0].score == pytest.approx(
        ranked[1].score * freshness_factor(parse_timestamp(new), NOW, 24 * 30, 0.3)
    )


def test_freshness_does_not_override_a_clear_relevance_gap() -> None:
    old = (NOW - timedelta(days=365)).isoformat()
    new = NOW.isoformat()
    hits = [hit("relevant", 0.9, updated_at=old), hit("fresh-but-weak", 0.3, updated_at=new)]
    assert ids(apply_freshness(hits, NOW, 24, 0.3)) == ["relevant", "fresh-but-weak"]


def test_freshness_never_pushes_a_negative_score_down_for_being_fresh() -> None:
    old = (NOW - timedelta(days=365)).isoformat()
    hits = [hit("old", -0.10, updated_at=old), hit("new", -0.105, updated_at=NOW.isoformat())]
    assert ids(apply_freshness(hits, NOW, 24, 0.5)) == ["new", "old"]


def test_parse_timestamp_accepts_iso_z_naive_and_rejects_garbage() -> None:
    assert parse_timestamp("2025-06-01T12:00:00Z") == NOW
    assert parse_timestamp("2025-06-01T12:00:00") == NOW
    assert parse_timestamp(datetime(2025, 6, 1, 12)) == NOW
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(None) is None


# -- dedupe / group --------------------------------------------------------------------------


def test_dedupe_keeps_each_documents_best_chunk() -> None:
    hits = [
        hit("a0", 0.9, doc="A"),
        hit("a1", 0.8, doc="A"),
        hit("b0", 0.85, doc="B"),
        hit("a2", 0.95, doc="A"),
        hit("c0", 0.1, doc="C"),
    ]
    assert ids(dedupe_by_document(hits)) == ["a2", "b0", "c0"]


def test_group_by_document_orders_groups_by_best_chunk() -> None:
    hits = [
        hit("b0", 0.85, doc="B"),
        hit("a1", 0.8, doc="A"),
        hit("a0", 0.9, doc="A"),
        hit("a2", 0.2, doc="A"),
    ]
    groups = group_by_document(hits)
    assert [g.doc_id for g in groups] == ["A", "B"]
    assert ids(groups[0].hits) == ["a0", "a1", "a2"]
    assert groups[0].score == pytest.approx(0.9)
    assert [len(g.hits) for g in group_by_document(hits, per_document=2)] == [2, 1]


def test_groups_with_equal_scores_break_ties_on_point_id() -> None:
    groups = group_by_document([hit("z", 0.5, doc="D1"), hit("m", 0.5, doc="D2")])
    assert [g.doc_id for g in groups] == ["D2", "D1"]
