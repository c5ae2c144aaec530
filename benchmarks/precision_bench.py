"""`graft bench model --compare FP32_DIR INT8_DIR`: artifacts of one model side by side on ONNX Runtime CPU.

The model ceiling of each artifact (raw ONNX Runtime on preprocessed real JPEGs, the serving
session settings, `threads` intra-op threads) at each batch size. The artifacts take turns, cell by
cell, over `rounds` rounds, and each cell reports the median of its rounds: on a shared machine a
neighbour's burst then lands on both artifacts instead of skewing one, so the ratio holds even when
the absolute figures move. Every report names the CPU and whether it has AVX-512 VNNI (the
instructions ONNX Runtime's int8 convolutions use).
"""

from __future__ import annotations

import logging
import statistics
from functools import partial
from pathlib import Path
from typing import Sequence

from graft.artifact.manifest import MODEL_FILE, read_manifest
from graft.artifact.runtime import open_session
from graft.benchmarks.model_bench import Timing, measure, preprocessed_batches

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 16, 32)


def cpu_flags() -> dict:
    """The CPU model and its VNNI flags, from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", "unknown"), "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": "avx_vnni" in flags}


def compare(artifacts: Sequence[Path], images: Sequence[Path], batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
            *, threads: int = 2, rounds: int = 5, timing: Timing = Timing(min_iters=3, max_iters=20, budget_s=1.0)) -> list[dict]:
    """One row per (artifact, batch size): median images/s over `rounds` and the ratio to `artifacts[0]`."""
    inputs = preprocessed_batches(artifacts[0], images, batch_sizes)
    sessions = {}
    for artifact in artifacts:
        manifest = read_manifest(artifact)
        if manifest.preprocessing != read_manifest(artifacts[0]).preprocessing:
            raise ValueError(f"expected artifacts with {artifacts[0].name}'s preprocessing (one model's precisions), "
                             f"got {artifact.name} with another")
        session = open_session(artifact / MODEL_FILE, intra_op_threads=threads)
        sessions[artifact] = (manifest, session, session.get_inputs()[0].name)
    rates: dict[tuple[Path, int], list[float]] = {(a, b): [] for a in artifacts for b in batch_sizes}
    for round_ in range(rounds):
        for batch_size, array in inputs.items():
            for artifact, (_, session, input_name) in sessions.items():
                times = measure(partial(session.run, None, {input_name: array}), timing)
                rates[artifact, batch_size].append(batch_size / statistics.median(times))
        logger.info("round %d/%d done", round_ + 1, rounds)
    rows = []
    for artifact, (manifest, _, _) in sessions.items():
        for batch_size in batch_sizes:
            rate = statistics.median(rates[artifact, batch_size])
            base = statistics.median(rates[artifacts[0], batch_size])
            rows.append({"artifact": artifact.name, "model": manifest.name, "precision": manifest.precision,
                         "version": manifest.version, "batch_size": batch_size, "threads": threads,
                         "images_per_s": round(rate, 1), "rounds": [round(r, 1) for r in rates[artifact, batch_size]],
                         "ratio": round(rate / base, 2)})
    return rows


def markdown(result: dict) -> str:
    """The comparison as a Markdown table, headed by the CPU and the command."""
    cpu = result["cpu"]
    lines = [
        f"# graft bench model --compare: {cpu['cpu_model']}, avx512_vnni {'yes' if cpu['avx512_vnni'] else 'no'}, "
        f"{result['environment']['cpus']} CPUs",
        "", f"`{result['command']}`", "",
        f"Model ceiling on ONNX Runtime CPU, {result['rows'][0]['threads']} intra-op threads, preprocessed real JPEGs; "
        f"median of {len(result['rows'][0]['rounds'])} interleaved rounds; ratio to {result['rows'][0]['artifact']}.", "",
        "| artifact | precision | batch | images/s | ratio |", "|---|---|---|---|---|",
    ]
    lines += [f"| {r['artifact']} | {r['precision']} | {r['batch_size']} | {r['images_per_s']:.1f} | {r['ratio']:.2f}x |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"
