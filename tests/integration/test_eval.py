"""BEIR evaluation end to end on a tiny dataset (real embedder, Edge store), plus the metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.table import Table

from freshrag.core.sparse import Bm25Encoder
from freshrag.evaluation import (
    EvalError,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    run_eval,
)
from freshrag.ingest.indexing import ChunkingConfig
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.search import HybridSearcher

pytestmark = pytest.mark.integration

TOPICS = [
    ("volcano", "Volcanic eruptions", "Magma rises through the crust and erupts as lava and ash."),
    ("tides", "Ocean tides", "The gravity of the moon and sun raises tides twice a day."),
    ("insulin", "Insulin and diabetes", "Insulin lets cells take up glucose from the blood."),
    ("bees", "Honey bee colonies", "Worker bees forage for nectar and the queen lays eggs."),
    ("chess", "Chess openings", "The Sicilian Defence answers 1.e4 with the move c5."),
    ("rust", "Iron corrosion", "Iron oxidises to rust when exposed to water and oxygen."),
    ("jazz", "Bebop jazz", "Charlie Parker and Dizzy Gillespie played fast bebop solos."),
    ("tcp", "TCP handshake", "A TCP connection opens with SYN, SYN-ACK and ACK packets."),
    ("bread", "Sourdough bread", "Wild yeast and lactobacilli leaven sourdough starter."),
    ("comet", "Comets", "A comet's icy nucleus grows a tail of gas near the sun."),
    ("vaccine", "mRNA vaccines", "mRNA vaccines instruct cells to build a viral spike protein."),
    ("glacier", "Glacier retreat", "Warming summers make alpine glaciers lose ice mass."),
    ("penguin", "Emperor penguins", "Emperor penguins breed during the Antarctic winter."),
    ("sql", "SQL joins", "An inner join returns rows with matching keys in both tables."),
    ("coral", "Coral bleaching", "Hot seas make corals expel their symbiotic algae."),
    ("opera", "Italian opera", "Verdi composed La Traviata and Aida for the opera stage."),
    ("ants", "Leafcutter ants", "Leafcutter ants farm a fungus on the leaves they cut."),
    ("bridge", "Suspension bridges", "Main cables carry the deck load to the anchorages."),
    ("tea", "Green tea", "Green tea leaves are steamed or pan-fired to stop oxidation."),
    ("lasers", "Lasers", "Stimulated emission amplifies light in a laser cavity."),
]
# Each query names exactly its document's topic: perfect retrieval is reachable.
QUERIES = {
    "q1": ("Volcanic eruptions of magma, lava and ash", {"volcano": 1}),
    "q2": ("TCP handshake SYN SYN-ACK ACK packets", {"tcp": 1}),
    "q3": ("Insulin lets cells take up glucose from the blood", {"insulin": 1}),
    "q4": ("Sourdough bread starter with wild yeast", {"bread": 1}),
    "q5": ("Coral bleaching in hot seas, algae expelled", {"coral": 1}),
}


def write_beir(root: Path, queries: dict[str, tuple[str, dict[str, int]]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for doc, title, text in TOPICS:
            fh.write(json.dumps({"_id": doc, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as fh:
        for qid, (text, _) in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
        fh.write(json.dumps({"_id": "unjudged", "text": "no qrels for this one"}) + "\n")
    with (root / "qrels" / "test.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, (_, rels) in queries.items():
            for doc, score in rels.items():
                fh.write(f"{qid}\t{doc}\t{score}\n")
        fh.write("missing-query\tvolcano\t1\n")  # a judged query without text is skipped
    return root


@pytest.fixture
def searcher_on(embedder: Any, tmp_path: Path) -> Any:
    stores: list[EdgeStore] = []

    def make(collection: str = "eval_test") -> tuple[EdgeStore, HybridSearcher]:
        store = EdgeStore(tmp_path / "index", collection=collection)
        stores.append(store)
        return store, HybridSearcher(store, embedder, Bm25Encoder())

    yield make
    for store in stores:
        store.close()


def test_run_eval_end_to_end(embedder: Any, searcher_on: Any, tmp_path: Path) -> None:
    dataset = write_beir(tmp_path / "tiny", QUERIES)
    store, searcher = searcher_on()
    phases: list[str] = []
    report = run_eval(
        dataset,
        store,
        searcher,
        embedder,
        progress=lambda phase, done, total: phases.append(phase),
    )
    assert report.dataset == "tiny" and report.split == "test"
    assert report.queries == 5  # the unjudged query and the text-less qrel are skipped
    assert set(report.modes) == {"dense", "bm25", "hybrid"}
    assert {"index", "dense", "bm25", "hybrid"} <= set(phases)
    for m in report.modes.values():
        assert m.queries == 5
        for value in (m.ndcg_at_10, m.recall_at_100, m.mrr_at_10):
            assert 0.0 <= value <= 1.0
        assert m.p50_ms > 0
    # Each query names its document: hybrid retrieval is perfect.
    hybrid = report.modes["hybrid"]
    assert hybrid.ndcg_at_10 == pytest.approx(1.0)
    assert hybrid.mrr_at_10 == pytest.approx(1.0)
    assert hybrid.recall_at_100 == pytest.approx(1.0)
    assert report.index.documents == 20 and report.index.indexed == 20
    assert report.index.chunks == store.count("eval") == 20
    data = json.loads(report.to_json())
    assert data["modes"]["hybrid"]["ndcg_at_10"] == pytest.approx(1.0)
    assert data["index"]["chunks"] == 20
    table = report.to_table()
    assert isinstance(table, Table) and table.row_count == 3


def test_rerun_reuses_the_index_and_a_new_chunking_replaces_it(
    embedder: Any, searcher_on: Any, tmp_path: Path
) -> None:
    dataset = write_beir(tmp_path / "tiny", QUERIES)
    store, searcher = searcher_on()
    first = run_eval(dataset, store, searcher, embedder, modes=["bm25"])
    again = run_eval(dataset, store, searcher, embedder, modes=["bm25"])
    assert again.index.indexed == 0 and again.index.reused == 20
    assert again.index.chunks_embedded == 0
    a, b = again.modes["bm25"], first.modes["bm25"]
    assert (a.ndcg_at_10, a.recall_at_100, a.mrr_at_10) == (
        b.ndcg_at_10,
        b.recall_at_100,
        b.mrr_at_10,
    )
    # Different chunking: every document is rewritten at a higher version, nothing stale left.
    small = run_eval(
        dataset, store, searcher, embedder, modes=["bm25"], chunking=ChunkingConfig(16, 4)
    )
    assert small.index.indexed == 20 and small.index.reused == 0
    payloads = store.scroll_payloads("eval")
    assert {p["version"] for p in payloads} == {2}
    assert len(payloads) == small.index.chunks > 20  # 16-token chunks: several per document
    assert small.params["chunk_tokens"] == 16


def test_imperfect_retrieval_scores_below_one(
    embedder: Any, searcher_on: Any, tmp_path: Path
) -> None:
    # Judgements that point at the wrong documents: metrics must drop, not stay at 1.0.
    wrong = {
        "q1": ("Volcanic eruptions of magma, lava and ash", {"penguin": 1}),
        "q2": ("TCP handshake SYN SYN-ACK ACK packets", {"tcp": 1}),
    }
    dataset = write_beir(tmp_path / "wrong", wrong)
    store, searcher = searcher_on()
    report = run_eval(dataset, store, searcher, embedder, modes=["hybrid"])
    hybrid = report.modes["hybrid"]
    assert 0.5 <= hybrid.ndcg_at_10 < 1.0
    assert hybrid.mrr_at_10 < 1.0


def test_load_beir_errors_and_split_choice(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match=r"corpus\.jsonl"):
        load_beir(tmp_path)
    root = write_beir(tmp_path / "ds", QUERIES)
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tvolcano\t2\n")
    assert load_beir(root).split == "test"
    train = load_beir(root, split="train")
    assert train.split == "train" and train.qrels == {"q1": {"volcano": 2}}
    with pytest.raises(EvalError, match="dev"):
        load_beir(root, split="dev")


def test_metric_definitions() -> None:
    rels = {"a": 2, "b": 1, "c": 0}
    assert ndcg_at_k(["a", "b", "x"], rels) == pytest.approx(1.0)
    swapped = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], rels) == pytest.approx(swapped)
    assert ndcg_at_k(["x", "c"], rels) == 0.0
    assert ndcg_at_k(["x"] * 10 + ["a"], rels) == 0.0  # beyond the cut-off
    assert recall_at_k(["a", "x"], rels) == pytest.approx(0.5)
    assert recall_at_k(["c"], rels) == 0.0  # relevance 0 is not relevant
    assert recall_at_k([], {}) == 0.0
    assert mrr_at_k(["x", "c", "b"], rels) == pytest.approx(1 / 3)
    assert mrr_at_k(["x"] * 10 + ["a"], rels) == 0.0
