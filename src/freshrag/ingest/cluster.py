"""Peer liveness for a multi-process bytewax cluster.

When one process of a bytewax (timely) cluster dies, the others do not fail: their workers go
on polling Kafka while nothing crosses to the dead peer, and no epoch closes again. That is a
silent stall. So every process publishes a heartbeat through the store (which every process of
a cluster shares) and watches its peers'. A peer that stops beating, or that beats with a new
run id (it was restarted, and is waiting for a fresh cluster), means this run cannot go on: the
process exits with `PEER_LOST_EXIT`, and its supervisor restarts it from the last snapshot.

The store being unreachable proves nothing about the peers, so no verdict is given while this
process's own beats fail.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("freshrag.ingest.cluster")

PEER_LOST_EXIT = 75  # EX_TEMPFAIL: restart me
_SEQ_BITS = 32
STOPPING = (1 << _SEQ_BITS) - 1  # the counter value of a process that was asked to stop


def beat_value(run_id: int, seq: int) -> int:
    """A heartbeat as one integer: the run id in the high bits, a counter in the low ones."""
    return (run_id << _SEQ_BITS) | (seq & ((1 << _SEQ_BITS) - 1))


def new_run_id() -> int:
    return random.SystemRandom().randrange(1, 1 << 30)


@dataclass
class _Peer:
    value: int | None = None  # last value seen
    run_id: int | None = None  # the run we formed the cluster with, once it beat
    changed_at: float = 0.0


@dataclass
class PeerLiveness:
    """Pure verdicts from observed heartbeats (`now` in monotonic seconds)."""

    me: int
    processes: int
    timeout_s: float
    peers: dict[int, _Peer] = field(default_factory=dict)
    own_ok_at: float | None = None

    def own_beat(self, ok: bool, now: float) -> None:
        if ok:
            if self.own_ok_at is None or now - self.own_ok_at > self.timeout_s:
                # after an outage of the store, every peer gets a fresh timeout
                for peer in self.peers.values():
                    peer.changed_at = now
            self.own_ok_at = now

    def stopping_peer(self) -> int | None:
        """A peer of this run that was asked to stop (SIGTERM): the whole cluster stops with
        it, cleanly, since a bytewax cluster cannot finish without all its processes."""
        for index, peer in self.peers.items():
            locked = peer.run_id is not None and peer.value is not None
            if locked and peer.value is not None and peer.value & STOPPING == STOPPING:
                return index
        return None

    def observe(self, beats: Mapping[str, int], now: float) -> str | None:
        """The reason this run must stop, or None while every peer is alive (or unknown)."""
        for index in range(self.processes):
            if index == self.me:
                continue
            peer = self.peers.setdefault(index, _Peer(changed_at=now))
            value = beats.get(str(index))
            if value is not None and value != peer.value:
                if peer.value is not None:  # it beat during our run: lock on that run
                    run_id = value >> _SEQ_BITS
                    if peer.run_id is None:
                        peer.run_id = run_id
                    elif run_id != peer.run_id:
                        return f"process {index} restarted (a new run): this run cannot go on"
                peer.value = value  # the first value seen may be a previous run's: a baseline
                peer.changed_at = now
            if self.own_ok_at is None or now - self.own_ok_at > self.timeout_s:
                continue  # the store is not answering us: no verdict on anyone
            stopping = peer.value is not None and peer.value & STOPPING == STOPPING
            if peer.run_id is not None and not stopping and now - peer.changed_at > self.timeout_s:
                return (
                    f"process {index} sent no heartbeat for {now - peer.changed_at:.0f} s "
                    f"(timeout {self.timeout_s:.0f} s): it died"
                )
        return None


class PeerWatch:
    """Beats every `interval_s` and judges the peers; calls `on_lost(reason)` once."""

    def __init__(
        self,
        me: int,
        processes: int,
        save: Callable[[dict[str, int]], None],
        load: Callable[[], dict[str, int]],
        on_lost: Callable[[str], None],
        timeout_s: float = 30.0,
        interval_s: float = 1.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._stop_flow = stop
        self._save = save
        self._load = load
        self._on_lost = on_lost
        self._interval = interval_s
        self._run_id = new_run_id()
        self._seq = 0
        self.liveness = PeerLiveness(me, processes, timeout_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-peers", daemon=True)

    def _step(self) -> str | None:
        self._seq += 1
        me = str(self.liveness.me)
        stopping = self._stop_flow is not None and self._stop_flow.is_set()
        try:
            self._save({me: beat_value(self._run_id, STOPPING if stopping else self._seq)})
            beats = self._load()
        except Exception as exc:  # the store down: say so, judge nobody
            log.warning("cluster heartbeat failed: %s", exc)
            self.liveness.own_beat(False, time.monotonic())
            return None
        now = time.monotonic()
        self.liveness.own_beat(True, now)
        reason = self.liveness.observe(beats, now)
        peer = self.liveness.stopping_peer()
        if peer is not None and self._stop_flow is not None and not stopping:
            log.info("process %d of the cluster is stopping: stopping this one too", peer)
            self._stop_flow.set()
        return reason

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            reason = self._step()
            if reason is not None:
                self._on_lost(reason)
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
