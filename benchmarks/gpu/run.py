"""The GPU script: every stage in order, each in a process of its own under its own time limit, then
one report. Started by run.sh; see README.md ("GPU run") and `run.sh --help`.

A stage that fails, crashes or runs out of time is reported with its reason and the next one runs.
The report (report.json, report.md and logs.tar.gz in --out) is rewritten after every stage, so a
run stopped from outside still leaves one. Standard library only: it starts before anything is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import bundle
from plan import PLANS, Plan, Stage

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REPORT_RESERVE_S = 5.0
"""Kept back from the budget for the last report."""
MIN_STAGE_S = 10.0
"""A stage that would get less than this is not started."""
STOP_GRACE_S = 25.0
"""After its time limit, how long a stage gets to stop its servers before it is killed."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu/run.sh", description="Measure graft's GPU path in one go; one JSON + Markdown report.")
    parser.add_argument("--out", type=Path, help="report folder (default: results/gpu-<UTC timestamp>)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "graft-gpu",
                        help="installs, artifacts, JPEGs and stage logs; kept for a rerun (default: %(default)s)")
    parser.add_argument("--pieces", type=Path, default=REPO / ".gpu-bundle" / "pieces",
                        help="where carried bundle pieces arrive (default: %(default)s)")
    parser.add_argument("--receive", action="store_true", help="only move arrived pieces into --work and say what is missing")
    parser.add_argument("--dry-run", action="store_true", help="the same stages on the CPU, tiny sizes (the test suite's)")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=DIR",
                        help="use this artifact for KEY (e.g. resnet50-fp16) instead of exporting it")
    parser.add_argument("--stages", help="comma-separated stage names to run (default: all), e.g. for a rerun")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: the plan's)")
    parser.add_argument("--workers", type=int, help="graft serve workers in the service stages (default: the plan's)")
    parser.add_argument("--drivers", type=int, help="load-driver processes per cell (default: the plan's)")
    return parser.parse_args(argv)


def receive(args: argparse.Namespace) -> int:
    bundles = bundle.gather([args.pieces], args.work / "pieces")
    for bundle_id, entry in bundles.items():
        print(f"bundle {bundle_id}: pieces {entry['have']} of {entry['count']} here"
              + (f"; missing {entry['missing']}" if entry["missing"] else "; complete"))
    if not bundles:
        print(f"no pieces in {args.pieces} or {args.work / 'pieces'}")
    return 0


def run_stage(stage: Stage, limit: float, args: argparse.Namespace, plan_file: Path, folder: Path) -> dict:
    """Run one stage as `stages.py NAME` in a new process group; what it left and how it ended."""
    folder.mkdir(parents=True)
    site = args.work / "site"
    paths = [str(site)] if (site / "graft").is_dir() else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    argv = [sys.executable, str(HERE / "stages.py"), stage.name, "--work", str(args.work), "--folder", str(folder),
            "--plan-file", str(plan_file), "--pieces", str(args.pieces)]
    argv += [arg for model in args.model for arg in ("--model", model)]
    started = time.monotonic()
    with open(folder / "stage.log", "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=limit)
            status = "ok" if process.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = "timeout"
    seconds = round(time.monotonic() - started, 1)
    result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else {}
    reason = {"ok": None, "timeout": f"stopped at its {limit:.0f} s limit"}.get(status)
    if status == "failed":
        tail = [line for line in (folder / "stage.log").read_text(errors="replace").splitlines() if line.strip()]
        reason = result.get("error") or f"exit {process.returncode}: {tail[-1] if tail else 'no output'}"
    return {"name": stage.name, "status": status, "seconds": seconds, "limit_s": round(limit), "reason": reason,
            "result": result}


def _row(*cells) -> str:
    return "| " + " | ".join("–" if c is None else str(c) for c in cells) + " |"


def write_report(out: Path, report: dict, stages_dir: Path) -> None:
    """report.json, report.md (summary, targets, then each stage's own section) and logs.tar.gz."""
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    targets = [t for s in report["stages"] for t in s["result"].get("targets", [])]
    verdict = {None: "n/a", True: "met", False: "MISSED"}
    sessions: list[dict] = next((s["result"].get("sessions", []) for s in report["stages"] if s["name"] == "device"), [])
    tensorrt = any(s.get("got", [""])[0] == "TensorrtExecutionProvider" for s in sessions)
    lines = [
        f"# GPU run on {report['device']}",
        f"Plan `{report['plan']['name']}`, budget {report['plan']['budget_s']:.0f} s, took {report['wall_s']:.0f} s "
        f"({report['started_at']}); `{report['command']}`." + ("" if tensorrt or not sessions else
        " No TensorRT here (its 1.5 GB of libraries cannot be carried to a lent machine): the GPU path "
        "measured is ONNX Runtime's CUDA provider, FP32 and FP16."),
        "", _row("stage", "status", "seconds", "limit s", "why"), _row(*["---"] * 5),
        *(_row(s["name"], s["status"], s["seconds"], s["limit_s"], s["reason"]) for s in report["stages"]),
    ]
    if targets:
        lines += ["", "## Targets", "", _row("target", "measured", "threshold", "verdict", "how"), _row(*["---"] * 5),
                  *(_row(t["name"], t["value"], t["threshold"], verdict[t["met"]], t["detail"]) for t in targets)]
    for stage in report["stages"]:
        section = stages_dir / stage["name"] / "section.md"
        if section.is_file() and section.read_text().strip():
            lines += ["", section.read_text().strip()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(stages_dir, arcname="stages")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.receive:
        return receive(args)
    plan: Plan = PLANS["dry" if args.dry_run else "gpu"]
    overrides = {"budget_s": args.budget, "workers": args.workers, "drivers": args.drivers}
    plan = dataclasses.replace(plan, **{key: value for key, value in overrides.items() if value is not None})
    out = args.out or REPO / "results" / dt.datetime.now(dt.timezone.utc).strftime("gpu-%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    stages_dir = args.work / "stages"
    shutil.rmtree(stages_dir, ignore_errors=True)
    stages_dir.mkdir(parents=True)
    plan_file = stages_dir / "plan.json"
    plan_file.write_text(plan.to_json())
    selected = set(args.stages.split(",")) if args.stages else None
    started = time.monotonic()
    report: dict[str, Any] = {"device": "unknown (the device stage did not say)", "plan": dataclasses.asdict(plan),
              "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["benchmarks/gpu/run.sh", *(sys.argv[1:] if argv is None else argv)]), "stages": []}
    for stage in plan.stages():
        # What a stage stopped at its limit may still take to stop is part of the budget too.
        left = plan.budget_s - (time.monotonic() - started) - REPORT_RESERVE_S - STOP_GRACE_S
        limit = min(stage.limit_s, left)
        entry: dict[str, Any]
        if selected is not None and stage.name not in selected:
            entry = {"name": stage.name, "status": "skipped", "reason": "not in --stages"}
        elif limit < MIN_STAGE_S:
            entry = {"name": stage.name, "status": "skipped", "reason": f"{max(left, 0):.0f} s of the budget left"}
        else:
            print(f"[{time.monotonic() - started:5.0f} s] {stage.name} (limit {limit:.0f} s)", flush=True)
            entry = run_stage(stage, limit, args, plan_file, stages_dir / stage.name)
            print(f"[{time.monotonic() - started:5.0f} s] {stage.name}: {entry['status']}"
                  + (f" ({entry['reason']})" if entry["reason"] else ""), flush=True)
        entry.setdefault("result", {})
        report["stages"].append({"seconds": None, "limit_s": None, **entry})
        report["device"] = entry["result"].get("device", report["device"])
        report["wall_s"] = round(time.monotonic() - started, 1)
        write_report(out, report, stages_dir)
    print(f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'logs.tar.gz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
