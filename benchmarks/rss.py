"""Peak resident memory of processes, from /proc (Linux): `VmHWM` is the kernel's high-water mark
of a process's RSS, so one read just before a process exits gives its peak.

`ProcessWatcher` samples every descendant of the current process in a background thread, so the
benchmark harness reports the peak RSS of every process it (or a section it calls) starts,
without the sections having to report it themselves.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def peak_rss_mb(pid: int | None = None) -> float | None:
    """VmHWM of `pid` (default: this process) in MiB, or None when it is gone or unreadable."""
    return _status_kb(pid or os.getpid(), "VmHWM")


def rss_mb(pid: int | None = None) -> float | None:
    """Current VmRSS of `pid` in MiB."""
    return _status_kb(pid or os.getpid(), "VmRSS")


def _status_kb(pid: int, field: str) -> float | None:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces or parentheses, so split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            ppid = _parent(int(entry.name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def describe(pid: int) -> str:
    """A short label from the command line: `freshrag up -w 1`, `kafka broker`, `python ...`."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not args:
        return "?"
    joined = " ".join(args)
    if "kafka.Kafka" in joined or "kafka.server" in joined:
        return "kafka broker"
    for i, arg in enumerate(args):
        if arg in ("freshrag.cli", "freshrag") or arg.endswith("/freshrag"):
            words = ["freshrag", *args[i + 1 : i + 2]]  # the subcommand
            rest = args[i + 2 :]
            for flag, value in zip(rest, [*rest[1:], ""], strict=True):
                if flag in ("-w", "--workers-per-process", "--workers"):
                    words += [flag, value]
            return " ".join(words)
    label = " ".join([Path(args[0]).name, *args[1:3]])
    return label[:80]


@dataclass
class ProcessPeak:
    pid: int
    process: str
    section: str
    peak_rss_mb: float


class ProcessWatcher:
    """Samples VmHWM of every descendant process every `interval` seconds, from a thread.

    Each process is tagged with the section that was running when it was first seen. A process's
    last sample before it exits is its peak, up to the growth of its final `interval`."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.section = "-"
        self.peaks: dict[int, ProcessPeak] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss-watcher", daemon=True)

    def sample(self) -> None:
        for pid in descendants(os.getpid()):
            hwm = peak_rss_mb(pid)
            if hwm is None:
                continue
            with self._lock:
                seen = self.peaks.get(pid)
                if seen is None:
                    self.peaks[pid] = ProcessPeak(pid, describe(pid), self.section, hwm)
                elif hwm > seen.peak_rss_mb:
                    seen.peak_rss_mb = hwm

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:
                continue

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def report(self, min_mb: float = 20.0) -> list[dict[str, Any]]:
        """Processes whose peak reached `min_mb` (shell wrappers and the like are left out)."""
        with self._lock:
            rows = [asdict(p) for p in self.peaks.values() if p.peak_rss_mb >= min_mb]
        for row in rows:
            row["peak_rss_mb"] = round(row["peak_rss_mb"], 1)
        return sorted(rows, key=lambda r: (r["section"], r["process"], r["pid"]))
