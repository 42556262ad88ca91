"""The order of change events and the per-document version gate (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.events import ChangeEvent, Delete, RecordOrigin, Upsert
from freshrag.ingest.ordering import Applied, DocState, gate, next_expiry_ms, prune
from tests.unit.test_indexing import NOW

NOW_MS = 1_800_000_000_000


def origin(offset: int) -> RecordOrigin:
    return RecordOrigin("documents", 0, offset, NOW_MS)


def up(v: int, offset: int, tenant: str = "t", doc: str = "a", **kw: object) -> Upsert:
    return Upsert(tenant, doc, v, "", "text", NOW, origin(offset), **kw)  # type: ignore[arg-type]


def delete(v: int | None, offset: int, tenant: str = "t", **kw: object) -> Delete:
    return Delete(tenant, "a", v, origin(offset), **kw)  # type: ignore[arg-type]


def run(events: list[ChangeEvent], state: DocState | None = None) -> tuple[DocState | None, list]:
    applied: list[ChangeEvent] = []
    for e in events:
        state, out = gate(state, e, NOW_MS)
        applied.extend(out)
    return state, applied


def test_older_and_replayed_versions_are_dropped() -> None:
    state, applied = run([up(3, 1), up(1, 2), up(2, 3), up(3, 1), up(5, 4)])
    assert [e.version for e in applied] == [3, 5]
    assert state is not None and state["t"][:3] == (5, 4, False)


def test_a_delete_wins_a_version_tie_once_and_replays_do_not_resurrect() -> None:
    state, applied = run([up(7, 1), delete(7, 2)])
    assert len(applied) == 2 and state is not None and state["t"].deleted
    state, again = run([delete(7, 2), up(7, 1)], state)  # the same records replayed
    assert again == []


def test_version_less_delete_does_not_raise_the_version_bar() -> None:
    """POST v3, DELETE without a version, POST v4: v4 is indexed."""
    state, applied = run([up(3, 1), delete(None, 2), up(4, 3)])
    assert [(type(e).__name__, e.version) for e in applied] == [
        ("Upsert", 3),
        ("Delete", None),
        ("Upsert", 4),
    ]
    assert state is not None and state["t"][:3] == (4, 3, False)


def test_debezium_delete_tombstone_then_reinsert() -> None:
    """`d` with the row's version, the tombstone, then an insert with a higher version."""
    d = delete(3, 2, row_identity=True)
    tomb = delete(None, 3, tenant="default", tenant_known=False, row_identity=True)
    state, applied = run([up(3, 1, row_identity=True), d, tomb, up(4, 4, row_identity=True)])
    assert [type(e).__name__ for e in applied] == ["Upsert", "Delete", "Upsert"]
    assert state is not None and state["t"][:3] == (4, 4, False)


def test_two_version_less_upserts_in_one_millisecond_keep_the_later() -> None:
    first = up(NOW_MS, 10, explicit_version=False)
    second = up(NOW_MS, 11, explicit_version=False)
    _, applied = run([first, second])
    assert applied == [first, second]
    _, replayed = run([second, first])
    assert replayed == [second]


def test_a_delete_without_tenant_reaches_the_tenant_that_holds_the_document() -> None:
    state, _ = run([up(1, 1, tenant="acme", row_identity=True)])
    key_only = delete(None, 2, tenant="default", tenant_known=False, row_identity=True)
    state, applied = run([key_only], state)
    assert [(e.tenant, type(e).__name__) for e in applied] == [("acme", "Delete")]
    assert state is not None and "default" not in state and state["acme"].deleted


def test_a_row_that_moves_tenant_is_deleted_from_the_old_one() -> None:
    state, applied = run(
        [up(1, 1, tenant="acme", row_identity=True), up(2, 2, tenant="globex", row_identity=True)]
    )
    assert [(e.tenant, type(e).__name__) for e in applied] == [
        ("acme", "Upsert"),
        ("acme", "Delete"),
        ("globex", "Upsert"),
    ]
    assert state is not None and state["acme"].deleted and not state["globex"].deleted


def test_an_older_image_of_a_moved_row_does_not_move_it_back() -> None:
    """B v3 -> A v5 arriving as A v5, then B v3: B v3 is stale, A keeps the row."""
    state, applied = run(
        [up(5, 2, tenant="acme", row_identity=True), up(3, 1, tenant="bravo", row_identity=True)]
    )
    assert [(e.tenant, type(e).__name__) for e in applied] == [("acme", "Upsert")]
    assert state is not None and set(state) == {"acme"}


def test_native_documents_of_two_tenants_with_one_id_are_independent() -> None:
    state, applied = run([up(1, 1, tenant="acme"), up(1, 2, tenant="globex")])
    assert [(e.tenant, type(e).__name__) for e in applied] == [
        ("acme", "Upsert"),
        ("globex", "Upsert"),
    ]
    # a bare-key tombstone of a native id means the default tenant, as it always did
    tomb = delete(None, 3, tenant="default", tenant_known=False, row_identity=True)
    _, deleted = run([tomb], state)
    assert [(e.tenant, type(e).__name__) for e in deleted] == [("default", "Delete")]


def test_a_key_only_delete_spares_a_native_document_with_the_same_id() -> None:
    """The issue's case: the row's tenant loses it, `default/42` (a native doc) stays."""
    state, _ = run([up(1, 1, tenant="default"), up(1, 2, tenant="acme", row_identity=True)])
    key_only = delete(None, 3, tenant="default", tenant_known=False, row_identity=True)
    state, applied = run([key_only], state)
    assert [(e.tenant, type(e).__name__) for e in applied] == [("acme", "Delete")]
    assert state is not None and not state["default"].deleted


def test_an_unknown_tenant_delete_with_no_state_passes_through_unresolved() -> None:
    key_only = delete(None, 2, tenant="default", tenant_known=False)
    state, applied = run([key_only])
    assert state is None and applied == [key_only]


def test_deletes_are_forgotten_after_the_retention_and_live_documents_are_kept() -> None:
    state: dict[str, Applied] = {
        "gone": Applied(1, 1, True, NOW_MS - 10_000),
        "live": Applied(1, 1, False, NOW_MS - 10_000),
    }
    assert next_expiry_ms(state, 5_000) == NOW_MS - 5_000
    assert prune(state, NOW_MS, 5_000) == {"live": state["live"]}
    assert prune({"gone": state["gone"]}, NOW_MS, 5_000) is None
    assert prune(state, NOW_MS, 60_000) == state


events = st.lists(
    st.tuples(
        st.sampled_from(["up", "del", "del_nov"]),
        st.integers(0, 6),
        st.sampled_from(["acme", "globex"]),
    ),
    max_size=30,
)


@settings(max_examples=300, derandomize=True)
@given(events)
def test_replaying_any_suffix_after_the_full_stream_changes_nothing(
    spec: list[tuple[str, int, str]],
) -> None:
    """Idempotence: once a stream is applied, replaying any suffix of it applies nothing."""
    stream: list[ChangeEvent] = []
    for offset, (kind, v, tenant) in enumerate(spec):
        if kind == "up":
            stream.append(up(v, offset, tenant=tenant))
        else:
            stream.append(delete(v if kind == "del" else None, offset, tenant=tenant))
    state, _ = run(stream)
    for start in range(len(stream)):
        _, again = run(stream[start:], state)
        assert again == []


def test_a_replayed_upsert_applies_only_while_its_record_is_the_last_applied() -> None:
    """verify --repair re-sends the winner (offset 1) at its own version: applied, and twice."""
    state, _ = run([up(5, 1)])
    state, applied = run([up(5, 9, replay=True, replay_of=1)], state)
    assert len(applied) == 1 and state is not None and state["t"][:3] == (5, 1, False)
    state, applied = run([up(5, 11, replay=True, replay_of=1)], state)  # a second repair
    assert len(applied) == 1
    # a newer version, a delete, or another record of the same version landed first: dropped
    for since in (up(6, 3), delete(None, 3), up(5, 3, explicit_version=False)):
        after, _ = run([up(5, 1), since])
        _, applied = run([up(5, 9, replay=True, replay_of=1)], after)
        assert applied == [], since
    _, bare = run([up(5, 9)], state)  # without the mark: a duplicate
    assert bare == []


def test_a_replayed_delete_applies_only_to_a_deleted_document_and_moves_no_bar() -> None:
    state, _ = run([up(5, 1), delete(None, 2)])
    state, applied = run([delete(9, 8, replay=True)], state)
    assert len(applied) == 1 and state is not None and state["t"][:3] == (5, 8, True)
    _, recreated = run([up(6, 9)], state)  # the replay's ceiling 9 is no bar
    assert len(recreated) == 1
    live, _ = run([up(5, 1), delete(None, 2), up(6, 3)])  # re-created before the repair
    _, applied = run([delete(9, 8, replay=True)], live)
    assert applied == []
    state, applied = run([delete(9, 8, replay=True)])  # unknown here: stale points go
    assert len(applied) == 1 and state is not None and state["t"][:3] == (0, 8, True)


def test_a_replay_whose_record_was_compacted_behind_a_delete_stays_dropped() -> None:
    """Compaction removed the replayed upsert (offset 1) but kept the tombstone after it and the
    replay: a reader starting on that log must not bring the document back."""
    state, applied = run([delete(None, 2), up(5, 9, replay=True, replay_of=1)])
    assert [type(e).__name__ for e in applied] == ["Delete"]
    assert state is not None and state["t"].deleted
