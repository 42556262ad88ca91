"""The embedding export cache's pure logic, with a stand-in build step (no model, no export):
atomic entries, checksums, one builder at a time, sweeping what dead exporters left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from freshrag.core.embed_backends import (
    MANIFEST,
    _sweep_temp_dirs,
    cache_key,
    cached_export,
    check_entry,
)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights" * 100)
    return model


def writer(
    calls: list[int], delay: float = 0.0, payload: bytes = b"exported" * 1000
) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        calls.append(1)
        time.sleep(delay)
        (tmp / "model.onnx").write_bytes(payload)

    return build


def test_entry_is_built_once_then_reused(tmp_path: Path, model_dir: Path) -> None:
    calls: list[int] = []
    first = cached_export(tmp_path / "c", model_dir, "onnx", writer(calls))
    second = cached_export(tmp_path / "c", model_dir, "onnx", writer(calls))
    assert first == second and calls == [1]
    assert check_entry(first) is None
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["files"]["model.onnx"]["size"] == 8000
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")] == [
        first.name
    ]


def test_key_follows_backend_and_model_files(model_dir: Path) -> None:
    key = cache_key(model_dir, "onnx")
    assert cache_key(model_dir, "onnx") == key
    assert cache_key(model_dir, "onnx-int8") != key
    (model_dir / "model.safetensors").write_bytes(b"other weights")
    assert cache_key(model_dir, "onnx") != key


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip", "delete", "manifest"],
)
def test_a_damaged_entry_is_rebuilt(tmp_path: Path, model_dir: Path, damage: str) -> None:
    calls: list[int] = []
    entry = cached_export(tmp_path, model_dir, "onnx", writer(calls))
    model = entry / "model.onnx"
    if damage == "truncate":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(model.read_bytes())
        data[10] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "delete":
        model.unlink()
    else:
        (entry / MANIFEST).write_text("{not json")
    assert check_entry(entry) is not None
    again = cached_export(tmp_path, model_dir, "onnx", writer(calls))
    assert again == entry and calls == [1, 1] and check_entry(entry) is None


def test_a_failing_build_leaves_nothing(tmp_path: Path, model_dir: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="exporter crashed"):
        cached_export(cache, model_dir, "onnx", broken)
    assert [p for p in cache.iterdir() if p.is_dir()] == []


def test_concurrent_exporters_build_once(tmp_path: Path, model_dir: Path) -> None:
    calls: list[int] = []
    results: list[Path] = []

    def go() -> None:
        results.append(cached_export(tmp_path, model_dir, "onnx", writer(calls, delay=0.2)))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert calls == [1] and len(set(results)) == 1 and len(results) == 4


def test_temp_dirs_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".tmp-{dead_pid}-onnx-abc"
    live = tmp_path / f".tmp-{os.getpid()}-onnx-def"
    trash = tmp_path / ".trash-onnx-123"
    for d in (stale, live, trash):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x")
    _sweep_temp_dirs(tmp_path)
    assert not stale.exists() and not trash.exists()
    assert live.exists()  # a running exporter's directory is left alone
