"""Run outputs: the environment, a JSON file, Markdown tables and PNG plots in one results folder."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "timm", "onnxruntime-gpu", "bentoml", "numpy", "pillow", "fastapi", "uvicorn", "httpx", "aiohttp")


def results_dir(out: Path | None) -> Path:
    """`out`, or `results/<UTC timestamp>/`; created."""
    folder = out or Path("results") / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment() -> dict:
    """Hardware, versions and machine load at the time of the run."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    memory_kb = next(
        (int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")),
        0,
    ) if Path("/proc/meminfo").is_file() else 0
    return {
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(memory_kb / 2**20, 1),
        "gpus": _gpus(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_commit(),
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# ---- Markdown ---------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def model_table(rows: list[dict]) -> str:
    return _table(
        ["backbone", "engine", "batch", "images/s", "p50 ms/batch", "p95 ms/batch", "runs"],
        [[r["backbone"], r["engine"], r["batch_size"], r["images_per_s"], r["latency_ms"]["p50"],
          r["latency_ms"]["p95"], r["iterations"]] for r in rows],
    )


def ceiling_table(ceiling: dict) -> str:
    rows = [[ceiling["engine"], r["batch_size"], r["images_per_s"], r["latency_ms"]["p50"]] for r in ceiling["rows"]]
    return _table(["engine", "batch", "images/s", "p50 ms/batch"], rows)


def pipeline_table(pipeline: dict) -> str:
    rows = [[f["batch_size"], f["images_per_second"]] for f in pipeline["per_batch"]]
    return _table(["batch", "images/s"], rows) + (
        f"\n\nbest {pipeline['images_per_second']} images/s at batch {pipeline['batch_size']}; one image alone "
        f"(decode + preprocess + inference) p50 {pipeline['batch1_p50_ms']} ms; {pipeline['decode_threads']} decode "
        f"threads, {pipeline['concurrent_batches']} batches in flight, {pipeline['provider']}"
    )


def _errors(row: dict) -> str:
    answered = row.get("error_latency_ms", {})
    return ", ".join(
        f"{error}: {count}" + (f" ({answered[error]['p99']:.0f})" if answered.get(error, {}).get("p99") is not None else "")
        for error, count in row["errors"].items()
    ) or "0"


def _split(row: dict) -> str | None:
    split = row.get("stage_split")
    if not split:
        return None
    return ", ".join(f"{stage} {v['share']:.0%} ({v['ms_per_image']:.1f} ms/img)" for stage, v in split.items())


def _batches(row: dict) -> str | None:
    batch = row.get("batch")
    if not batch or not batch["batches"]:
        return None
    dist = " ".join(f"{le}:{n}" for le, n in batch["distribution"].items())
    return f"mean {batch['mean']:.1f} [{dist}]"


def _clients(row: dict) -> str:
    """How many clients, and how they treat a 429 when it is not the plain closed loop."""
    mode = row.get("mode", "closed")
    return str(row["concurrency"]) if mode == "closed" else f"{row['concurrency']} ({mode})"


def service_table(cells: list[dict]) -> str:
    return _table(
        ["server", "endpoint", "size", "clients", "requests", "errors (p99 ms to answer)", "unfinished", "images/s",
         "p50 ms", "p95 ms", "p99 ms", "executed batch (le:count)", "server time split"],
        [[c["server"], c["endpoint"], c["size"], _clients(c), c["requests"], _errors(c), c["unfinished"],
          c["images_per_s"], c["latency_ms"].get("p50"), c["latency_ms"].get("p95"), c["latency_ms"].get("p99"),
          _batches(c), _split(c)] for c in cells],
    )


def ratio_table(cells: list[dict]) -> str:
    """graft / baseline images/s for every cell both servers ran."""
    baseline = {(c["endpoint"], c["size"], c["concurrency"]): c for c in cells if c["server"] == "baseline"}
    rows = []
    for c in cells:
        b = baseline.get((c["endpoint"], c["size"], c["concurrency"]))
        if c["server"] == "graft" and c.get("mode", "closed") == "closed" and b and b["images_per_s"]:
            rows.append([c["endpoint"], c["size"], c["concurrency"], c["images_per_s"], b["images_per_s"],
                         c["images_per_s"] / b["images_per_s"]])
    return _table(["endpoint", "size", "clients", "graft images/s", "baseline images/s", "graft ÷ baseline"], rows)


def profile_sections(cells: list[dict]) -> list[str]:
    """For each profiled cell: each process's share of samples and the hottest leaf functions."""
    parts = []
    for c in cells:
        prof = c.get("profile")
        if not prof or not prof["samples"]:
            continue
        processes = "; ".join(f"{label} {share:.0%}" for label, share in prof["processes"].items())
        parts += [
            f"### py-spy: {c['server']} /{c['endpoint']} {c['size']}px, {c['concurrency']} clients "
            f"({prof['samples']} samples, {prof['file']})",
            f"Processes: {processes}",
            _table(["leaf function (self time)", "share"], prof["leaves"]),
        ]
    return parts


def targets_table(targets: list[dict]) -> str:
    def verdict(t: dict) -> str:
        return "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")

    return _table(["target", "measured", "threshold", "verdict", "how"],
                  [[t["name"], t["value"], t["threshold"], verdict(t), t["detail"]] for t in targets])


def markdown(result: dict, command: str) -> str:
    """The whole run as Markdown: command, environment, and every table the run has."""
    env = result["environment"]
    parts = [
        f"# graft bench {result['kind']}",
        f"`{command}` at {env['started_at']}, git {env['git']}",
        f"{env['cpu']}, {env['cpus']} CPUs, {env['memory_gb']} GB, GPUs: {', '.join(env['gpus']) or 'none'}; "
        f"load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in env['load_average'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in env.get('load_average_end', ()))}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
    ]
    if "rows" in result:
        parts += ["## Model: images/s and latency per batch", model_table(result["rows"])]
    if "ceiling" in result:
        parts += ["## Ceiling: raw ONNX Runtime on preprocessed 224-px JPEGs", ceiling_table(result["ceiling"])]
    if "pipeline" in result:
        parts += ["## Pipeline ceiling: decode + preprocess + ONNX Runtime in one process (224-px JPEGs, no HTTP)",
                  pipeline_table(result["pipeline"])]
    if result.get("pipeline_2000"):
        parts += ["## Pipeline ceiling on 2000-px JPEGs (the bound on the 2000-px target)",
                  pipeline_table(result["pipeline_2000"])]
    if "cells" in result:
        parts += ["## Service and baseline", service_table(result["cells"]),
                  "## graft ÷ baseline", ratio_table(result["cells"]), *profile_sections(result["cells"])]
    if "targets" in result:
        parts += ["## Targets", targets_table(result["targets"])]
    if result.get("side_by_side"):
        parts += ["## Side by side (224-px JPEGs; ratios to the first)", side_by_side_table(result["side_by_side"])]
    return "\n\n".join(parts) + "\n"


def side_by_side_table(rows: list[dict]) -> str:
    """Each artifact's ceilings and service figures, with its ratio to the first artifact's."""
    def with_ratio(value, ratio) -> str:
        return "–" if value is None else f"{value:.1f}" + ("" if ratio is None else f" ({ratio:.2f}x)")

    clients = [key[1:] for key in rows[0] if key.startswith("c") and key[1:].isdigit()]
    header = ["model", "precision", "model ceiling images/s", "pipeline ceiling images/s"]
    header += [f"{n} clients images/s; p50 / p99 ms" for n in clients]
    body = []
    for row in rows:
        ratios = row["ratios"]
        cells = [row["model"], row["precision"], with_ratio(row["model_ceiling"], ratios["model_ceiling"]),
                 with_ratio(row["pipeline_ceiling"], ratios["pipeline_ceiling"])]
        for n in clients:
            figures = row[f"c{n}"]
            p50 = with_ratio(figures["p50"], ratios[f"c{n}_p50"])
            p99 = "–" if figures["p99"] is None else f"{figures['p99']:.1f}"
            cells.append(f"{with_ratio(figures['images_per_s'], ratios[f'c{n}_images_per_s'])}; {p50} / {p99}")
        body.append(cells)
    return _table(header, body)


# ---- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(ax, ticks: list, legend_size: int) -> None:
    """The look every axis shares: log-spaced x ticks labelled as given, a light grid, a legend."""
    ax.set_xticks(ticks, labels=ticks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_model(rows: list[dict], path: Path) -> Path:
    """images/s against batch size, one line per (backbone, engine)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys((r["backbone"], r["engine"]) for r in rows):
        line = [r for r in rows if (r["backbone"], r["engine"]) == key]
        ax.plot([r["batch_size"] for r in line], [r["images_per_s"] for r in line], marker="o", label=" ".join(key))
    ax.set(xscale="log", xlabel="batch size", ylabel="images/s", title="Model throughput by batch size")
    _finish(ax, sorted({r["batch_size"] for r in rows}), 8)
    return _save(fig, path)


def plot_service(cells: list[dict], ceiling: dict | None, folder: Path, pipeline: dict | None = None) -> list[Path]:
    """Throughput vs concurrency (every server/endpoint/size, with the model and pipeline ceilings)
    and latency percentiles vs concurrency (one panel per server, 224-px /classify)."""
    plt = _pyplot()
    cells = [c for c in cells if c.get("mode") != "storm"]  # the storm's refusals are not a point on these lines
    series = list(dict.fromkeys((c["server"], c["endpoint"], c["size"]) for c in cells))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in series:
        line = [c for c in cells if (c["server"], c["endpoint"], c["size"]) == key]
        ax.plot([c["concurrency"] for c in line], [c["images_per_s"] for c in line], marker="o",
                linestyle="-" if key[0] == "graft" else "--", label=f"{key[0]} /{key[1]} {key[2]}px")
    if ceiling:
        ax.axhline(ceiling["best"]["images_per_s"], color="black", linewidth=1,
                   label=f"model ceiling (ORT, batch {ceiling['best']['batch_size']})")
    if pipeline:
        ax.axhline(pipeline["images_per_second"], color="black", linewidth=1, linestyle=":",
                   label=f"pipeline ceiling (decode + ORT, batch {pipeline['batch_size']})")
    clients = sorted({c["concurrency"] for c in cells})
    ax.set(xscale="log", xlabel="concurrent clients", ylabel="images/s", title="Throughput vs concurrency")
    _finish(ax, clients, 7)
    throughput = _save(fig, folder / "throughput.png")

    servers = list(dict.fromkeys(c["server"] for c in cells))
    endpoint = "classify" if any(c["endpoint"] == "classify" for c in cells) else "embed"  # an embedder has no /classify
    fig, axes = plt.subplots(1, len(servers), figsize=(5 * len(servers), 4), squeeze=False)
    for ax, server in zip(axes[0], servers):
        line = [c for c in cells if (c["server"], c["endpoint"], c["size"]) == (server, endpoint, "224")
                and c["latency_ms"]]
        for q in ("p50", "p95", "p99"):
            ax.plot([c["concurrency"] for c in line], [c["latency_ms"].get(q) for c in line], marker="o", label=q)
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)",
               title=f"{server}: /{endpoint} 224px latency")
        _finish(ax, clients, 8)
    return [throughput, _save(fig, folder / "latency.png")]
