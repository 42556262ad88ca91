"""The build lock of `freshrag reindex` (pure parts): who may take a lock found held, how the
holder is recorded and named; and the Edge file lock (a real `flock`, no service needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshrag.retrieve.catalog import (
    BuildLockHeld,
    EdgeCatalog,
    LockHolder,
    LockVerdict,
    holder_alive,
    lock_verdict,
    this_machine,
)

NOW = 1_800_000_000.0
LEASE = 60.0


def holder(**changes: object) -> LockHolder:
    base = LockHolder(
        host="build-1",
        pid=4242,
        recovery_dir="/srv/run/recovery@kb-gabc",
        generation="kb-gabc",
        started_at=NOW - 300,
        heartbeat_at=NOW - 5,
        token="t-theirs",
        machine="boot-1/pid:[4026531836]",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


MINE = holder(pid=5151, token="t-mine", started_at=NOW, heartbeat_at=NOW)


def verdict(
    theirs: LockHolder | None, alive: bool | None = True, break_lock: bool = False
) -> LockVerdict:
    return lock_verdict(
        MINE, theirs, now=NOW, lease_s=LEASE, holder_alive=alive, break_lock=break_lock, where="kb"
    )


def test_a_live_holder_elsewhere_is_refused_with_who_and_how_to_break_it() -> None:
    theirs = holder(host="build-2", machine="boot-2/pid:[1]", recovery_dir="/other")
    v = verdict(theirs, alive=None)
    assert not v.take
    assert "pid 4242 on build-2" in v.reason and "building kb-gabc" in v.reason
    assert "started 2027-01-15T07:55:00+00:00" in v.reason
    assert "last heartbeat 5 s ago" in v.reason and "--break-lock" in v.reason
    assert "\n" not in v.reason


def test_a_live_process_on_this_machine_is_refused_even_with_the_same_recovery_dir() -> None:
    """Two runs of the same job at once would write the same recovery snapshots."""
    v = verdict(holder(recovery_dir=MINE.recovery_dir), alive=True)
    assert not v.take


def test_an_exited_holder_on_this_machine_is_taken_at_once() -> None:
    v = verdict(holder(heartbeat_at=NOW - 1), alive=False)
    assert v.take and not v.warn and "has exited" in v.reason


def test_the_same_job_restarted_elsewhere_on_the_same_host_takes_over() -> None:
    """A restarted container: same host name and recovery directory, pids not comparable."""
    theirs = holder(machine="boot-9/pid:[7]", recovery_dir=MINE.recovery_dir)
    assert verdict(theirs, alive=None).take
    assert not verdict(replace(theirs, recovery_dir="/srv/other"), alive=None).take
    assert not verdict(replace(theirs, host="build-2"), alive=None).take


def test_an_empty_recovery_dir_is_no_evidence_of_the_same_job() -> None:
    mine = replace(MINE, recovery_dir="", machine="")
    theirs = holder(recovery_dir="", machine="")
    v = lock_verdict(mine, theirs, now=NOW, lease_s=LEASE, holder_alive=None)
    assert not v.take


def test_a_stale_heartbeat_is_taken_over_with_a_warning_naming_the_holder() -> None:
    v = verdict(holder(host="build-2", heartbeat_at=NOW - 61), alive=None)
    assert v.take and v.warn
    assert "pid 4242 on build-2" in v.reason and "61 s" in v.reason
    assert not verdict(holder(host="build-2", heartbeat_at=NOW - 59), alive=None).take


def test_break_lock_takes_a_live_lock_and_says_from_whom() -> None:
    v = verdict(holder(), alive=True, break_lock=True)
    assert v.take and v.warn and "--break-lock" in v.reason and "pid 4242" in v.reason


def test_no_readable_holder_and_our_own_token() -> None:
    assert verdict(None).take and verdict(None).warn
    assert verdict(replace(MINE, heartbeat_at=NOW - 999)).take


timestamps = st.floats(min_value=1e9, max_value=4e9, allow_nan=False)
holders = st.builds(
    LockHolder,
    host=st.sampled_from(["build-1", "build-2"]),
    pid=st.integers(1, 2**22),
    recovery_dir=st.sampled_from(["", "/r1", "/r2"]),
    generation=st.text(min_size=1, max_size=20),
    started_at=timestamps,
    heartbeat_at=timestamps,
    token=st.sampled_from(["a", "b", "c"]),
    machine=st.sampled_from(["", "m1", "m2"]),
)


@given(holders, holders, timestamps, st.sampled_from([True, False, None]), st.booleans())
def test_verdict_rules(
    mine: LockHolder, theirs: LockHolder, now: float, alive: bool | None, brk: bool
) -> None:
    v = lock_verdict(mine, theirs, now=now, lease_s=LEASE, holder_alive=alive, break_lock=brk)
    fresh = now - theirs.heartbeat_at <= LEASE
    if brk or not fresh or theirs.token == mine.token:
        assert v.take
    same_machine = bool(mine.machine) and mine.machine == theirs.machine
    if same_machine and alive is True and fresh and not brk and theirs.token != mine.token:
        assert not v.take  # a live process on this machine is never taken over quietly
    if theirs.host != mine.host and fresh and not brk and theirs.token != mine.token:
        assert v.take == (same_machine and alive is False)
    if not v.take:
        assert "--break-lock" in v.reason and f"pid {theirs.pid}" in v.reason


@given(holders)
def test_the_holder_record_round_trips_to_the_second(h: LockHolder) -> None:
    back = LockHolder.from_json(json.loads(json.dumps(h.to_json())))
    assert back is not None
    assert replace(back, started_at=0, heartbeat_at=0) == replace(h, started_at=0, heartbeat_at=0)
    assert abs(back.heartbeat_at - h.heartbeat_at) < 1 and abs(back.started_at - h.started_at) < 1


@pytest.mark.parametrize("data", [None, "x", {}, {"host": "h"}, {**holder().to_json(), "pid": "?"}])
def test_an_unreadable_record_is_no_holder(data: object) -> None:
    assert LockHolder.from_json(data) is None


def test_holder_alive_on_this_machine() -> None:
    here = LockHolder.here("kb-gabc", None)
    assert here.machine == this_machine()
    # this process, but a token it does not hold: a lock an earlier process with our pid left
    assert holder_alive(here) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert holder_alive(replace(here, pid=child.pid)) is True
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while holder_alive(replace(here, pid=child.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)  # a zombie until reaped: counted as gone already
        assert holder_alive(replace(here, pid=child.pid)) is False
    finally:
        child.kill()
        child.wait()
    assert holder_alive(replace(here, pid=child.pid)) is False
    assert holder_alive(replace(here, machine="elsewhere")) is None


def test_edge_lock_refuses_a_second_holder_and_frees_when_its_process_dies(
    tmp_path: Path,
) -> None:
    catalog = EdgeCatalog(tmp_path / "index", "kb")
    first = catalog.build_lock(LockHolder.here("kb-gabc", tmp_path / "recovery"))
    first.acquire()
    second = catalog.build_lock(LockHolder.here("kb-gdef", tmp_path / "recovery"))
    with pytest.raises(BuildLockHeld) as refused:
        second.acquire(break_lock=True)
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and "building kb-gabc" in message
    assert "heartbeat" not in message and "\n" not in message
    first.release()
    second.acquire()
    second.release()

    # a holder killed with SIGKILL leaves no lock behind
    code = (
        "import sys, time; from pathlib import Path;"
        "from freshrag.retrieve.catalog import EdgeCatalog, LockHolder;"
        f"c = EdgeCatalog(Path({str(tmp_path / 'index')!r}), 'kb');"
        "lock = c.build_lock(LockHolder.here('kb-gabc', None)); lock.acquire();"
        "print('held', flush=True); time.sleep(60)"
    )
    holder_proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder_proc.stdout is not None and holder_proc.stdout.readline().strip() == "held"
        with pytest.raises(BuildLockHeld, match=f"pid {holder_proc.pid}"):
            catalog.build_lock(LockHolder.here("kb-gabc", None)).acquire()
    finally:
        holder_proc.kill()
        holder_proc.wait()
    third = catalog.build_lock(LockHolder.here("kb-gabc", None))
    third.acquire()
    third.release()
