"""Index generations (pure): manifests, fingerprints, which generation a writer may use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshrag.core.settings import load_settings
from freshrag.ingest.runner import IngestOptions, recovery_for
from freshrag.reindex import lag, payload_source_reason
from freshrag.retrieve.generations import (
    BUILD_KEYS,
    IndexManifest,
    IndexSettingsMismatch,
    choose_writer_generation,
    differences,
    generation_name,
    manifest_for,
)


@dataclass
class MemoryCatalog:
    """In-memory catalog: the pure selection logic is what is under test here."""

    collection: str = "kb"
    manifests: dict[str, IndexManifest | None] = field(default_factory=dict)
    pointer: str | None = None

    def exists(self, name: str) -> bool:
        return name in self.manifests

    def generations(self) -> list[str]:
        return sorted(self.manifests)

    def read_manifest(self, name: str) -> IndexManifest | None:
        return self.manifests.get(name)

    def write_manifest(self, name: str, manifest: IndexManifest) -> None:
        self.manifests[name] = manifest

    def serving(self) -> str:
        return self.pointer or self.collection

    def switch(self, name: str) -> None:
        self.pointer = name

    def close(self) -> None:
        pass


def manifest(**overrides: Any) -> IndexManifest:
    return manifest_for(load_settings(**overrides), 384)


def test_fingerprint_is_stable_and_ignores_creation_time() -> None:
    a, b = manifest(), manifest()
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 10
    assert not differences(a, b)
    assert generation_name("kb", a) == f"kb-g{a.fingerprint}"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"chunk_tokens": 128}, "chunk_tokens"),
        ({"chunk_overlap": 8}, "chunk_overlap"),
        ({"embed_backend": "onnx-int8"}, "precision"),
        ({"embedder_model_path": Path("/models/e5-small")}, "model"),
    ],
)
def test_every_build_setting_makes_another_index(overrides: dict[str, Any], key: str) -> None:
    base, other = manifest(), manifest(**overrides)
    assert other.fingerprint != base.fingerprint
    diff = differences(base, other)
    assert len(diff) == 1 and diff[0].startswith(f"{key}: index ")


def test_runtime_only_settings_keep_the_index() -> None:
    """fp32 exports of one model give the same vectors (to rounding): same index."""
    assert not differences(manifest(), manifest(embed_backend="onnx", embed_threads=2))
    assert manifest(embed_batch_size=8).fingerprint == manifest().fingerprint


def test_dimension_is_part_of_the_build() -> None:
    s = load_settings()
    assert differences(manifest_for(s, 384), manifest_for(s, 768)) == [
        "dimension: index 384, this process 768"
    ]


def test_manifest_json_round_trip_and_settings_update() -> None:
    m = manifest(chunk_tokens=96, chunk_overlap=8, embedder_model_path=Path("/m/x"))
    again = IndexManifest.from_json(json.loads(json.dumps(m.to_json())))
    assert again.fingerprint == m.fingerprint and not differences(again, m)
    update = again.settings_update()
    assert update["chunk_tokens"] == 96 and update["embedder_model_path"] == Path("/m/x")
    rebuilt = load_settings().model_copy(update=update)
    assert manifest_for(rebuilt, 384).fingerprint == m.fingerprint
    assert "embed_openai_api_key" not in m.to_json()["embedder"]  # no secret in a manifest


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_manifest_from_any_json_is_a_manifest_or_a_value_error(data: Any) -> None:
    try:
        m = IndexManifest.from_json(data if isinstance(data, dict) else {"build": data})
    except ValueError:
        return
    assert isinstance(m.fingerprint, str)


def test_writer_adopts_a_new_or_pre_manifest_index() -> None:
    cat = MemoryCatalog(manifests={"kb": None})
    choice = choose_writer_generation(cat, manifest())
    assert choice.generation == "kb" and choice.adopted


def test_writer_uses_the_serving_generation_when_it_matches() -> None:
    cat = MemoryCatalog(manifests={"kb": manifest()})
    choice = choose_writer_generation(cat, manifest())
    assert choice.generation == "kb" and not choice.adopted


def test_writer_with_old_settings_keeps_the_previous_generation_current() -> None:
    old, new = manifest(), manifest(chunk_tokens=64)
    new_name = generation_name("kb", new)
    cat = MemoryCatalog(manifests={"kb": old, new_name: new}, pointer=new_name)
    assert choose_writer_generation(cat, new).generation == new_name
    assert choose_writer_generation(cat, old).generation == "kb"  # for a roll-back


def test_writer_with_unknown_settings_is_refused_with_the_differences() -> None:
    cat = MemoryCatalog(manifests={"kb": manifest()})
    with pytest.raises(IndexSettingsMismatch) as err:
        choose_writer_generation(cat, manifest(chunk_tokens=64, chunk_overlap=8))
    text = str(err.value)
    assert "chunk_tokens: index 200, this process 64" in text
    assert "chunk_overlap: index 32, this process 8" in text and "freshrag reindex" in text


def test_each_generation_resumes_from_its_own_recovery_directory() -> None:
    s = load_settings(collection="kb")
    opts = IngestOptions(recovery_dir=Path(".run/recovery"))
    assert recovery_for(opts, s, "kb").recovery_dir == Path(".run/recovery")
    assert recovery_for(opts, s, "kb-gabc").recovery_dir == Path(".run/recovery@kb-gabc")
    assert recovery_for(IngestOptions(recovery_dir=None), s, "kb-gabc").recovery_dir is None


def test_payloads_are_reused_only_when_the_chunks_stay_the_same() -> None:
    old = manifest()
    assert payload_source_reason(old, manifest(embed_backend="onnx-int8")) is None
    assert payload_source_reason(old, manifest_for(load_settings(), 768)) is None
    reason = payload_source_reason(old, manifest(chunk_tokens=64))
    assert reason is not None and "chunk_tokens" in reason
    assert payload_source_reason(None, old) is not None
    assert set(BUILD_KEYS) >= {"chunk_tokens", "model", "dimension"}


@given(
    st.dictionaries(st.integers(0, 8), st.integers(0, 10**6)),
    st.dictionaries(st.integers(0, 8).map(str), st.integers(0, 10**6)),
)
def test_lag_counts_records_not_yet_indexed(ends: dict[int, int], marks: dict[str, int]) -> None:
    behind = lag(ends, marks)
    assert behind == sum(max(0, e - marks.get(str(p), 0)) for p, e in ends.items())
    assert lag(ends, {str(p): e for p, e in ends.items()}) == 0


def test_the_quality_gate_refuses_only_a_lower_score() -> None:
    from freshrag.reindex import gate_refusal

    assert gate_refusal({"new_ndcg_at_10": 0.71, "old_ndcg_at_10": 0.70}) is None
    assert gate_refusal({"new_ndcg_at_10": 0.70, "old_ndcg_at_10": 0.70}) is None
    assert gate_refusal({"new_ndcg_at_10": 0.70}) is None  # nothing to compare with
    refusal = gate_refusal({"new_ndcg_at_10": 0.61, "old_ndcg_at_10": 0.70})
    assert refusal is not None and "0.6100 < 0.7000" in refusal and "--force" in refusal
