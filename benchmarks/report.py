"""Report files of `python -m benchmarks.bench`: headline figures, markdown tables and PNG plots
(matplotlib, Agg backend) from the sections' plain dicts.

Sections whose shape this module does not know are rendered generically (scalars as a
key/value table, lists of flat dicts as tables), so a changed section never breaks the report.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Result = Mapping[str, Any]


# --- small helpers ----------------------------------------------------------------------------


def is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: object) -> str:
    if isinstance(x, bool) or x is None:
        return "–" if x is None else ("yes" if x else "no")
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.1f}"
        return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    if isinstance(x, list | tuple | dict):
        text = str(x)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(x).replace("|", "\\|").replace("\n", " ")


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] | None = None
) -> str:
    """A markdown table; `columns` = (key, header) pairs, default: every key of the rows."""
    if not rows:
        return "_no rows_\n"
    if columns is None:
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys and not _is_bulky(r[k]))
        columns = [(k, k) for k in keys]
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---:" if _numeric_column(rows, k) else "---" for k, _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def _numeric_column(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(is_number(r.get(key)) for r in rows)


def _is_bulky(value: object) -> bool:
    return isinstance(value, list | dict) and len(str(value)) > 200


def _flat_rows(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) for v in value)
        and all(
            not isinstance(x, dict | list) or not _is_bulky(x) for v in value for x in v.values()
        )
    )


def generic(result: object, depth: int = 0) -> str:
    """Scalars as a key/value table, lists of flat dicts as tables, nested dicts recursively;
    raw samples (keys starting with `samples`) are left to the JSON and the plots."""
    if _flat_rows(result):
        return table(result)  # type: ignore[arg-type]
    if not isinstance(result, dict):
        return f"{fmt(result)}\n"
    parts: list[str] = []
    scalars = [
        {"figure": k, "value": v}
        for k, v in result.items()
        if not isinstance(v, dict | list) and not str(k).startswith("samples")
    ]
    if scalars:
        parts.append(table(scalars))
    for k, v in result.items():
        if str(k).startswith("samples") or not isinstance(v, dict | list) or not v:
            continue
        if isinstance(v, list) and not _flat_rows(v):
            parts.append(f"**{k}**: {fmt(v)}\n")
            continue
        if depth >= 2:
            parts.append(f"**{k}**: {fmt(v)}\n")
            continue
        parts.append(f"**{k}**\n\n{generic(v, depth + 1)}")
    return "\n".join(parts) if parts else "_empty_\n"


# --- headline figures: what the summary table shows and the quick test checks ---------------


def _find(rows: Iterable[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def headline(section: str, result: Result) -> dict[str, float]:
    """The figures that sum a section up (each a positive number when the section worked)."""
    out: dict[str, Any] = {}
    if section == "embedding":
        for r in result.get("rows", []):
            b = r.get("backend", "?")
            out[f"{b} chunks/s"] = r.get("chunks_per_s")
            if b != "torch":
                out[f"{b} × torch"] = r.get("ratio_vs_torch")
    elif section == "ingest":
        for r in result.get("runs", []):
            out[f"{r.get('workers')} worker(s) chunks/s"] = r.get("chunks_per_s")
            out[f"{r.get('workers')} worker(s) docs/s"] = r.get("docs_per_s")
        out["2 workers × 1"] = result.get("ratio_2_to_1_chunks_per_s")
    elif section == "serving":
        for p in result.get("phases", []):
            key = f"{p['size']:,} {p['state']} c{p['concurrency']}"
            out[f"{key} p50 ms"] = p.get("p50_ms")
            out[f"{key} p99 ms"] = p.get("p99_ms")
            out[f"{key} req/s"] = p.get("requests_per_s")
        for s in result.get("sizes", []):
            # the rate during searches can be 0 on a loaded box (tables show it), so the
            # headline carries the rate alone, measured in the same `up` just before
            out[f"{s['size']:,} ingest alone chunks/s"] = s.get("ingest_alone_chunks_per_s")
            out[f"{s['size']:,} up peak RSS MB"] = s.get("up_peak_rss_mb")
    elif section == "freshness":
        out.update(_freshness_headline(result))
    elif section == "edge_online_optimize":
        out.update(_optimize_headline(result))
    elif section == "scaling":
        from benchmarks.scaling import headline as scaling_headline

        out.update(scaling_headline(result))
    elif section == "qa":
        from benchmarks.qa import headline as qa_headline

        out.update(qa_headline(result))
    elif section == "incremental":
        from benchmarks.incremental import headline as incremental_headline

        out.update(incremental_headline(result))
    return {k: v for k, v in out.items() if v is not None}


def _freshness_headline(result: Result) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in _rows_of(result, ("rates", "rows", "runs")):
        rate = r.get("rate") or r.get("rate_docs_per_s") or r.get("target_rate")
        for q in ("p50_ms", "p99_ms"):
            if q in r:
                out[f"{fmt(rate)} docs/s {q.replace('_ms', '')} ms"] = r[q]
    return out


def _optimize_headline(result: Result) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in _rows_of(result, ("phases", "rows")):
        name = r.get("phase") or r.get("when") or r.get("name")
        if name is None or ":" in str(name):  # sub-phases ("during: replay + swap") stay in tables
            continue
        for q in ("p50_ms", "p99_ms"):
            if q in r:
                out[f"{name} {q.replace('_ms', '')} ms"] = r[q]
    for key in ("before", "during", "after"):
        part = result.get(key)
        if isinstance(part, dict):
            for q in ("p50_ms", "p99_ms"):
                if q in part:
                    out[f"{key} {q.replace('_ms', '')} ms"] = part[q]
    return out


def _rows_of(result: Result, keys: Sequence[str]) -> list[Mapping[str, Any]]:
    for key in keys:
        rows = result.get(key)
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            return rows
    return []


# --- markdown ---------------------------------------------------------------------------------


def md_embedding(result: Result) -> str:
    rows = list(result.get("rows", []))
    known = [
        ("backend", "backend"),
        ("chunks_per_s", "chunks/s"),
        ("ratio_vs_torch", "× torch fp32"),
        ("mean_cosine_vs_torch", "mean cosine vs fp32"),
        ("load_s", "load s"),
    ]
    extra = [(k, k) for r in rows for k in r if k not in dict(known) and not _is_bulky(r[k])]
    columns = known + list(dict.fromkeys(extra))
    note = "Same chunks for every backend; ratios against torch fp32 measured in the same run.\n"
    return note + "\n" + table(rows, columns)


def md_ingest(result: Result) -> str:
    runs = [dict(r) for r in result.get("runs", [])]
    base = _find(runs, workers=1)
    for r in runs:
        if base and base.get("chunks_per_s"):
            r["ratio"] = round(r["chunks_per_s"] / base["chunks_per_s"], 2)
    columns = [
        ("workers", "workers"),
        ("docs", "docs"),
        ("chunks", "chunks"),
        ("docs_per_s", "docs/s"),
        ("chunks_per_s", "chunks/s"),
        ("ratio", "× 1 worker"),
        ("startup_s", "start-up s"),
        ("time_to_first_write_s", "1st write s"),
        ("ingest_s", "ingest s"),
        ("cores_used", "cores used"),
        ("embed_share_of_worker_time", "embed share"),
        ("peak_rss_mb", "peak RSS MB"),
        ("dead_letters", "dead letters"),
    ]
    text = table(runs, [c for c in columns if any(c[0] in r for r in runs)])
    ratio = result.get("ratio_2_to_1_chunks_per_s")
    if ratio is not None:
        text += f"\n2 workers / 1 worker on chunks/s: **{fmt(ratio)}** "
        text += f"(target {fmt(result.get('target_ratio', 1.7))}).\n"
    profile = result.get("profile")
    if isinstance(profile, dict) and profile.get("explanation"):
        text += "\nWhy not more (profile):\n\n"
        text += "".join(f"- {line}\n" for line in profile["explanation"])
    return text


def md_serving(result: Result) -> str:
    note = (
        "`POST /v1/search` (top_k 10, hybrid) through HTTP against `freshrag up`, query "
        "embedding included (distinct texts: no query-cache hit), closed loop at concurrency "
        f"1 and 8. Points: {result.get('tenant_points', '')}. During ingest: SciFact documents "
        "produced to the topic `up` consumes, all at once, so the flow indexes at full speed.\n"
    )
    phases = [
        ("size", "chunks"),
        ("state", "state"),
        ("concurrency", "concurrency"),
        ("requests", "requests"),
        ("errors", "errors"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
        ("p99_ms", "p99 ms"),
        ("max_ms", "max ms"),
        ("requests_per_s", "req/s"),
        ("server_took_p50_ms", "server p50 ms"),
        ("ingest_chunks_per_s", "ingest chunks/s meanwhile"),
    ]
    ratios = [
        ("size", "chunks"),
        ("concurrency", "concurrency"),
        ("p50_ratio", "p50 ingest/idle"),
        ("p99_ratio", "p99 ingest/idle"),
        ("requests_per_s_ratio", "req/s ingest/idle"),
    ]
    sizes = [
        ("size", "chunks"),
        ("build_s", "build s"),
        ("optimize_s", "optimize s"),
        ("up_start_s", "up start s"),
        ("ingest_alone_chunks_per_s", "ingest alone chunks/s"),
        ("ingest_during_chunks_per_s", "ingest during searches chunks/s"),
        ("ingest_ratio_during_vs_alone", "× alone"),
        ("up_peak_rss_mb_idle", "up peak RSS MB (idle)"),
        ("up_peak_rss_mb", "up peak RSS MB (end)"),
        ("up_stop_s", "up stop s"),
        ("up_exit", "up exit"),
    ]
    return (
        note
        + "\n"
        + table(result.get("phases", []), phases)
        + "\nDuring ingest against idle (same size, same concurrency):\n\n"
        + table(result.get("ratios", []), ratios)
        + "\nPer size:\n\n"
        + table(result.get("sizes", []), sizes)
    )


def _flatten(row: Mapping[str, Any], key: str, prefix: str) -> dict[str, Any]:
    """`row` with the sub-dict `row[key]` merged in as `prefix` + its keys."""
    out = {k: v for k, v in row.items() if k != key}
    sub = row.get(key)
    if isinstance(sub, dict):
        out.update({prefix + k: v for k, v in sub.items()})
    return out


def md_freshness(result: Result) -> str:
    rows = [_flatten(r, "server_lag", "lag_") for r in result.get("rates", [])]
    columns = [
        ("rate", "rate docs/s"),
        ("achieved_rate", "achieved"),
        ("produced", "produced"),
        ("visible", "visible"),
        ("not_visible", "not visible"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
        ("p99_ms", "p99 ms"),
        ("max_ms", "max ms"),
        ("poll_resolution_ms_p50", "poll resolution ms"),
        ("lag_p50_ms", "server lag p50 ms"),
        ("lag_p99_ms", "server lag p99 ms"),
    ]
    text = (
        "Documents of about 1 KB produced at a fixed rate to `freshrag up`; each event's latency "
        "runs from just before produce() to the first /v1/search response that shows it. "
        "Server lag: the flow's own histogram (record timestamp → written).\n\n"
    )
    text += table(rows, [c for c in columns if any(c[0] in r for r in rows)])
    best = result.get("max_rate_p99_under_1s")
    text += f"\nHighest rate holding p99 < 1 s: **{fmt(best)} docs/s**.\n"
    levers = [_flatten(r, "server_lag", "lag_") for r in result.get("levers", []) or []]
    if levers:
        lever_cols = [
            ("lever", "lever"),
            ("value", "value"),
            ("rate", "rate docs/s"),
            ("p50_ms", "p50 ms"),
            ("p95_ms", "p95 ms"),
            ("p99_ms", "p99 ms"),
            ("not_visible", "not visible"),
            ("docs_per_s", "burst docs/s (capacity)"),
        ]
        text += "\nLevers (each on a fresh `freshrag up`): freshness against capacity\n\n"
        text += table(levers, [c for c in lever_cols if any(c[0] in r for r in levers)])
    large = result.get("small_behind_large") or []
    if large:
        rows_l = []
        for r in large:
            row: dict[str, Any] = {"config": r.get("config")}
            for part in ("small_alone", "small_behind_large", "large"):
                sub = r.get(part)
                if isinstance(sub, dict):
                    row[f"{part} p50 ms"] = sub.get("p50_ms")
                    row[f"{part} max ms"] = sub.get("max_ms")
            rows_l.append(row)
        text += "\nA small update right behind a large document\n\n" + table(rows_l)
    rest = {
        k: v
        for k, v in result.items()
        if k not in ("rates", "levers", "small_behind_large", "settings")
        and not isinstance(v, dict | list)
    }
    if rest:
        text += "\n" + generic(rest)
    return text


def md_edge_online_optimize(result: Result) -> str:
    phases = [dict(r) for r in result.get("phases", [])]
    before = _find(phases, phase="before")
    for r in phases:
        if before and is_number(before.get("p99_ms")) and is_number(r.get("p99_ms")):
            r["p50_ratio"] = round(r["p50_ms"] / before["p50_ms"], 2)
            r["p99_ratio"] = round(r["p99_ms"] / before["p99_ms"], 2)
    text = (
        f"Hybrid search (`HybridSearcher.search`, precomputed query vectors) on an Edge shard of "
        f"{fmt(result.get('size'))} chunks in {fmt(result.get('tenants'))} tenants while a "
        f"writer upserts {fmt(result.get('write_rate'))} chunks/s, before, during and after "
        "`EdgeStore.optimize_online()`.\n\n"
    )
    text += table(
        phases,
        [
            ("phase", "phase"),
            ("searches", "searches"),
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("max_ms", "max ms"),
            ("p50_ratio", "p50 × before"),
            ("p99_ratio", "p99 × before"),
        ],
    )
    opt = result.get("optimize")
    if isinstance(opt, dict):
        text += "\nThe optimize (writes wait only for the copy and the swap):\n\n"
        text += table(
            [opt],
            [
                (k, k.replace("_s", " s").replace("_", " "))
                for k in (
                    "total_s",
                    "copy_s",
                    "optimize_s",
                    "replay_s",
                    "swap_s",
                    "journaled_ops",
                    "points",
                    "unindexed_before",
                    "unindexed_after",
                    "swapped",
                )
                if k in opt
            ],
        )
    writer = result.get("writer")
    if isinstance(writer, dict):
        text += "\nThe writer:\n\n" + generic(writer)
    rest = {
        k: v
        for k, v in result.items()
        if k not in ("phases", "optimize", "writer", "samples_ms", "steps_s", "size", "tenants")
    }
    return text + "\n" + generic(rest)


def md_rss(rows: Sequence[Mapping[str, Any]]) -> str:
    return (
        "Peak RSS (VmHWM) of every process the harness started, sampled every 0.5 s, tagged "
        "with the section that started it; `harness` is the harness process itself (in-process "
        "sections: embedding, index builds).\n\n"
        + table(
            rows,
            [
                ("section", "section"),
                ("process", "process"),
                ("pid", "pid"),
                ("peak_rss_mb", "peak RSS MB"),
            ],
        )
    )


def md_scaling(result: Result) -> str:
    from benchmarks.scaling import markdown

    return markdown(result)


def md_qa(result: Result) -> str:
    from benchmarks.qa import markdown

    return markdown(result)


def md_incremental(result: Result) -> str:
    from benchmarks.incremental import markdown

    return markdown(result)


RENDERERS: dict[str, Callable[[Result], str]] = {
    "embedding": md_embedding,
    "ingest": md_ingest,
    "serving": md_serving,
    "freshness": md_freshness,
    "edge_online_optimize": md_edge_online_optimize,
    "scaling": md_scaling,
    "qa": md_qa,
    "incremental": md_incremental,
}

TITLES = {
    "embedding": "Embedding throughput",
    "ingest": "End-to-end ingest (Kafka → store), 1 and 2 workers",
    "freshness": "Freshness: produced → visible in /v1/search",
    "serving": "Serving: /v1/search through HTTP",
    "edge_online_optimize": "Edge HNSW optimize without downtime: search before / during / after",
    "scaling": "Scale-out on a real Qdrant server: ingest processes × workers, search next to Edge",
    "qa": "Freshness QA: answers correct, current and grounded (POST /v1/chat)",
    "incremental": "Changes cost only what changed: re-embedded chunks, patches, acl revocation",
}


def markdown(results: Result, plots: Sequence[Path] = ()) -> str:
    meta = results.get("meta", {})
    lines = [
        "# freshrag benchmark results",
        "",
        f"`python -m benchmarks.bench` ({meta.get('preset', 'full')} sizes) — "
        f"{meta.get('started_at', '?')}, {meta.get('cpu_count', '?')} CPUs, "
        f"git {meta.get('git', '?')}, total {fmt(meta.get('total_s'))} s, "
        f"load average {fmt(meta.get('load_start'))} → {fmt(meta.get('load_end'))}.",
        "",
        "## Summary",
        "",
    ]
    summary = []
    for name, sec in results.get("sections", {}).items():
        figures = sec.get("headline", {})
        shown = "; ".join(f"{k}: {fmt(v)}" for k, v in list(figures.items())[:8])
        summary.append(
            {
                "section": name,
                "status": sec.get("status"),
                "seconds": sec.get("seconds"),
                "figures": shown or (sec.get("error", "") or "").strip().splitlines()[-1:],
            }
        )
    lines.append(
        table(
            summary,
            [
                ("section", "section"),
                ("status", "status"),
                ("seconds", "seconds"),
                ("figures", "headline figures"),
            ],
        )
    )
    for name, sec in results.get("sections", {}).items():
        lines += ["", f"## {TITLES.get(name, name)}", ""]
        if sec.get("status") != "ok":
            error = str(sec.get("error", "")).strip()
            lines += ["**error** — the section failed:", "", "```", error[-3000:], "```"]
            continue
        render = RENDERERS.get(name, generic)
        try:
            lines.append(render(sec.get("result", {})))
        except Exception as exc:
            lines.append(f"_renderer failed ({exc!r}); generic view:_\n")
            lines.append(generic(sec.get("result", {})))
    lines += ["", "## Peak RSS", "", md_rss(results.get("rss", []))]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ecdf_plot(path: Path, title: str, series: Mapping[str, Sequence[float]], xlabel: str) -> Path:
    """Latency distributions as empirical CDFs (log x), p50 and p99 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, values in series.items():
        xs = sorted(v for v in values if is_number(v) and v > 0)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        (line,) = ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")
        for q in (0.5, 0.99):
            x = xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]
            ax.plot([x], [q], "o", color=line.get_color(), markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples ≤ x")
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.axhline(0.99, color="grey", lw=0.5, ls=":")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bar_plot(
    path: Path, title: str, labels: Sequence[str], values: Sequence[float], ylabel: str
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.bar(labels, values, color="#4c72b0")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            fmt(value),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def percentile_plot(
    path: Path, title: str, rows: Sequence[Mapping[str, Any]], xkey: str, xlabel: str
) -> Path:
    """Latency percentiles (p50 / p95 / p99 / max) against `xkey`, when raw samples are absent."""
    plt = _pyplot()
    rows = [r for r in rows if is_number(r.get(xkey))]
    xs = [r[xkey] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        pts = [(x, float(r[key])) for x, r in zip(xs, rows, strict=True) if is_number(r.get(key))]
        pts = [(x, y) for x, y in pts if y > 0]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=key.replace("_ms", ""))
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency ms")
    ax.axhline(1000, color="red", lw=0.7, ls="--", label="1 s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def workers_plot(path: Path, runs: Sequence[Mapping[str, Any]]) -> Path:
    """Ingest throughput against workers, with the linear-scaling line from 1 worker."""
    plt = _pyplot()
    runs = sorted(runs, key=lambda r: r["workers"])
    workers = [r["workers"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("chunks_per_s", "chunks/s"), ("docs_per_s", "docs/s")):
        values = [r.get(key) for r in runs]
        if all(is_number(v) for v in values):
            ax.plot(workers, values, "o-", label=label)
            base = _find(runs, workers=1)
            if base and key == "chunks_per_s":
                ax.plot(
                    workers,
                    [base[key] * w for w in workers],
                    "--",
                    color="grey",
                    label="chunks/s × workers (linear)",
                )
    ax.set_xticks(workers)
    ax.set_xlabel("bytewax workers (one process)")
    ax.set_ylabel("throughput")
    ax.set_title("End-to-end ingest throughput against workers")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _samples(result: Result) -> dict[str, list[float]]:
    """Raw latency samples of a section: `samples_ms` ({label: [ms]}) or rows with a list."""
    raw = result.get("samples_ms")
    if isinstance(raw, dict):
        return {str(k): list(v) for k, v in raw.items() if isinstance(v, list)}
    out: dict[str, list[float]] = {}
    for r in _rows_of(result, ("rates", "rows", "runs", "phases")):
        for key in ("samples_ms", "latencies_ms", "latency_ms"):
            values = r.get(key)
            if isinstance(values, list) and values:
                label = r.get("rate") or r.get("phase") or r.get("name") or len(out)
                out[f"{fmt(label)}"] = values
    return out


def plots(results: Result, out: Path) -> tuple[list[Path], list[str]]:
    """Every plot the results allow; returns (files, errors)."""
    made: list[Path] = []
    errors: list[str] = []
    sections = results.get("sections", {})

    def ok(name: str) -> Result | None:
        sec = sections.get(name)
        return sec.get("result") if sec and sec.get("status") == "ok" else None

    jobs: list[tuple[str, Callable[[], Path | None]]] = []
    if (r := ok("serving")) is not None:
        serving = r
        for size in sorted({p["size"] for p in serving.get("phases", [])}):
            prefix = f"{size:,} chunks, "
            series = {
                k.removeprefix(prefix): v
                for k, v in _samples(serving).items()
                if k.startswith(prefix)
            }
            jobs.append(
                (
                    f"serving {size}",
                    functools.partial(
                        ecdf_plot,
                        out / f"serving_latency_{size}.png",
                        f"/v1/search through HTTP, {size:,} chunks, query embedding included",
                        series,
                        "latency ms (client side)",
                    ),
                )
            )
    if (r := ok("ingest")) is not None and r.get("runs"):
        runs = r["runs"]
        jobs.append(("ingest", lambda: workers_plot(out / "ingest_throughput_workers.png", runs)))
    if (r := ok("embedding")) is not None and r.get("rows"):
        rows = r["rows"]
        jobs.append(
            (
                "embedding",
                lambda: bar_plot(
                    out / "embedding_throughput.png",
                    "Embedding throughput (same chunks)",
                    [str(x.get("backend")) for x in rows],
                    [float(x.get("chunks_per_s") or 0) for x in rows],
                    "chunks/s",
                ),
            )
        )
    fresh_rows = (ok("freshness") or {}).get("rates") or []
    if (r := ok("freshness")) is not None and not _samples(r) and fresh_rows:
        jobs.append(
            (
                "freshness",
                lambda: percentile_plot(
                    out / "freshness_latency.png",
                    "Freshness: produced → visible in /v1/search, percentiles per rate",
                    fresh_rows,
                    "rate",
                    "produced docs/s",
                ),
            )
        )
    if (r := ok("freshness")) is not None and (fresh := _samples(r)):
        jobs.append(
            (
                "freshness",
                lambda: ecdf_plot(
                    out / "freshness_latency.png",
                    "Freshness: produced → visible in /v1/search, per rate",
                    fresh,
                    "latency ms",
                ),
            )
        )
    if (r := ok("edge_online_optimize")) is not None and (opt := _samples(r)):
        jobs.append(
            (
                "edge_online_optimize",
                lambda: ecdf_plot(
                    out / "edge_online_optimize_latency.png",
                    "Edge search latency before / during / after online optimize",
                    opt,
                    "latency ms",
                ),
            )
        )
    for name, job in jobs:
        try:
            path = job()
            if path is not None:
                made.append(path)
        except Exception as exc:
            errors.append(f"plot {name}: {type(exc).__name__}: {exc}")
    return made, errors
