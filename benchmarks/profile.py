"""Sampling profiles of the server under load with py-spy, summarised into where its CPU time went.

py-spy attaches to the running server (and, with `--subprocesses`, BentoML's worker processes)
without pausing it (`--nonblocking`); idle threads are not sampled, so the summary shows what was
running. `raw` output (collapsed stacks, one `frame;frame;... count` per line) is kept beside the
results and summarised as each process's share of samples and the hottest leaf functions.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

_LINE_NUMBER = re.compile(r":\d+\)$")
_PROCESS = re.compile(r'^process (\d+):"(.*)"$')


def py_spy() -> str | None:
    """The py-spy executable (beside this Python first), or None when it is not installed."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path, rate: int = 100) -> subprocess.Popen | None:
    """Start recording `pid` and its children for `seconds`; None (and a warning) without py-spy."""
    executable = py_spy()
    if executable is None:
        logger.warning("py-spy is not installed (pip install py-spy): no profile")
        return None
    argv = [executable, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", str(rate),
            "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(output)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(recorder: subprocess.Popen | None, output: Path, timeout_s: float = 60.0) -> dict | None:
    """Wait for a recording to end and summarise it; None when there is none."""
    if recorder is None:
        return None
    try:
        _, stderr = recorder.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        recorder.kill()
        _, stderr = recorder.communicate()
    if recorder.returncode != 0 or not output.is_file():
        logger.warning("py-spy failed (%s): %s", recorder.returncode, stderr.strip()[-500:])
        return None
    return {"file": output.name, **summarise(output.read_text())}


def _process_label(frame: str) -> str:
    """'PID NAME': a BentoML worker's `--service-name`, else the start of its command line."""
    match = _PROCESS.match(frame)
    if not match:
        return frame
    pid, command = match.groups()
    words = command.split()
    if "--service-name" in words[:-1]:
        return f"{pid} {words[words.index('--service-name') + 1]}"
    return f"{pid} {' '.join(words[1:4])[:60]}"


def summarise(raw: str, top: int = 15) -> dict:
    """Collapsed stacks -> {"samples", "processes": {label: share}, "leaves": [[function, share], ...]}."""
    processes: Counter = Counter()
    leaves: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # With --subprocesses a stack starts with its process chain (parent first): the last one ran it.
        owner = next((f for f in reversed(frames) if f.startswith("process ")), None)
        processes[_process_label(owner) if owner else "-"] += int(count)
        leaves[_LINE_NUMBER.sub(")", frames[-1])] += int(count)
    total = sum(leaves.values())
    if not total:
        return {"samples": 0, "processes": {}, "leaves": []}
    return {
        "samples": total,
        "processes": {label: n / total for label, n in processes.most_common()},
        "leaves": [[leaf, n / total] for leaf, n in leaves.most_common(top)],
    }
