"""Peer liveness of a multi-process ingest cluster: a dead or restarted peer ends the run
(instead of a silent stall), and an unreachable store condemns nobody."""

from __future__ import annotations

from freshrag.ingest.cluster import PeerLiveness, beat_value


def beats(**values: int) -> dict[str, int]:
    return {k.removeprefix("p"): v for k, v in values.items()}


def alive(live: PeerLiveness, value: int, now: float) -> str | None:
    live.own_beat(True, now)
    return live.observe(beats(p1=value), now)


def test_a_beating_peer_is_alive_and_a_silent_one_dies_after_the_timeout() -> None:
    live = PeerLiveness(me=0, processes=2, timeout_s=10)
    for t in range(0, 30):
        assert alive(live, beat_value(7, t), float(t)) is None
    # it stops beating at t=29
    for t in range(30, 40):
        assert alive(live, beat_value(7, 29), float(t)) is None
    reason = alive(live, beat_value(7, 29), 40.0)
    assert reason is not None and "process 1" in reason and "died" in reason


def test_a_stale_record_from_a_previous_run_is_never_taken_for_a_dead_peer() -> None:
    live = PeerLiveness(me=1, processes=2, timeout_s=5)
    for t in range(0, 60):  # process 0 has not started yet: its old beat never moves
        live.own_beat(True, float(t))
        assert live.observe(beats(p0=beat_value(3, 99)), float(t)) is None
    # it starts (a new run): the first change locks on that run, and it is alive
    for t in range(60, 70):
        live.own_beat(True, float(t))
        assert live.observe(beats(p0=beat_value(4, t)), float(t)) is None


def test_a_restarted_peer_ends_this_run_at_once() -> None:
    live = PeerLiveness(me=0, processes=2, timeout_s=30)
    for t in range(0, 5):
        assert alive(live, beat_value(7, t), float(t)) is None
    reason = alive(live, beat_value(8, 1), 5.0)  # same process id, a new run id
    assert reason is not None and "restarted" in reason


def test_no_verdict_while_the_store_does_not_answer_us() -> None:
    live = PeerLiveness(me=0, processes=3, timeout_s=10)
    for t in range(0, 5):
        live.own_beat(True, float(t))
        assert live.observe(beats(p1=beat_value(1, t), p2=beat_value(2, t)), float(t)) is None
    for t in range(5, 60):  # the store is down: nothing is observed, nobody is judged
        live.own_beat(False, float(t))
    # back: the peers beat again, and get a fresh timeout rather than an instant verdict
    live.own_beat(True, 60.0)
    assert live.observe(beats(p1=beat_value(1, 4), p2=beat_value(2, 60)), 60.0) is None
    live.own_beat(True, 65.0)
    assert live.observe(beats(p1=beat_value(1, 4), p2=beat_value(2, 65)), 65.0) is None
    live.own_beat(True, 71.0)
    reason = live.observe(beats(p1=beat_value(1, 4), p2=beat_value(2, 71)), 71.0)
    assert reason is not None and "process 1" in reason


def test_a_stopping_peer_stops_the_cluster_and_is_not_taken_for_dead() -> None:
    from freshrag.ingest.cluster import STOPPING

    live = PeerLiveness(me=1, processes=2, timeout_s=5)
    for t in range(0, 5):
        live.own_beat(True, float(t))
        assert live.observe(beats(p0=beat_value(9, t)), float(t)) is None
    assert live.stopping_peer() is None
    for t in range(5, 30):  # SIGTERM on process 0: it says so, then goes quiet while draining
        live.own_beat(True, float(t))
        assert live.observe(beats(p0=beat_value(9, STOPPING)), float(t)) is None
    assert live.stopping_peer() == 0
