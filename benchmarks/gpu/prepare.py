"""Prepare, where a package index is reachable, everything the GPU script needs carried to the host.

    python benchmarks/gpu/prepare.py            # then follow .gpu-bundle/PLAN.md

Downloads Python 3.12 manylinux wheels for graft's serving path (pyproject's dependencies and the
`gpu` extra, at constraints.txt's versions) minus what the GPU image already has
(`host-packages.txt`), plus graft's build backend; packs them into one xz bundle; cuts it into the
fewest pieces that each fit beside the checkout in one command (64 MiB by default); and writes
PLAN.md, the device calls that carry them. The bundle is rebuilt only when its contents change.

Artifacts are exported on the host by default: its 16 cores export all four in well under a minute,
less device time than the extra commands carrying them would take. `--artifact KEY=DIR` carries one
instead (made here with `graft export --backbone NAME --weights none [--fp16]`), should exporting
there fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import bundle
from plan import split_key

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MIB = 1 << 20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(path: Path) -> str:
    return _normal(path.name.split("-")[0])


def download(requirements: list[str], folder: Path, python: str) -> list[Path]:
    """`pip download` binary wheels of `requirements` and their dependencies for CPython `python`."""
    shutil.rmtree(folder, ignore_errors=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", python,
         "--implementation", "cp", *platforms, "-d", str(folder), "-c", str(REPO / "constraints.txt"), *requirements],
        check=True,
    )
    return sorted(folder.glob("*.whl"))


def wanted(pyproject: dict) -> tuple[list[str], list[str]]:
    """(the serving path's requirements with ONNX Runtime's GPU build, graft's build requirements)."""
    project = pyproject["project"]
    runtime = [r for r in project["dependencies"] if not r.startswith("onnxruntime")]
    runtime += project.get("optional-dependencies", {}).get("gpu", ["onnxruntime-gpu"])
    return runtime, list(pyproject["build-system"]["requires"])


def checkout_bytes() -> int:
    """What travels with every command: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())


def plan_text(pieces: list[Path], folder: Path, checkout: int, wheels: dict[str, list[Path]],
              artifacts: dict[str, Path]) -> str:
    relative = [piece.relative_to(REPO) if piece.is_relative_to(REPO) else piece for piece in pieces]
    size = sum(piece.stat().st_size for piece in pieces)
    lines = [
        f"# GPU run: {len(pieces)} device calls, back to back",
        "",
        f"Made by benchmarks/gpu/prepare.py at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Bundle "
        f"{size / 1e6:.1f} MB ({sum(len(v) for v in wheels.values())} wheels, {folder.name}) in {len(pieces)} pieces "
        f"of at most {max(p.stat().st_size for p in pieces) / MIB:.1f} MiB; the checkout adds {checkout / MIB:.1f} MiB "
        "to each call. The host keeps received pieces in /tmp/graft-gpu only while it stays warm (30 s between "
        "calls): make the calls one after the other.",
        "",
    ]
    for k, piece in enumerate(relative, 1):
        last = k == len(relative)
        command = "benchmarks/gpu/run.sh --out $OUT" if last else "benchmarks/gpu/run.sh --receive"
        lines.append(f'{k}. run(command="{command}", carry=["{piece}"], timeout_s={560 if last else 120})')
    lines += ["", "Then give_back, unless a rerun follows at once: `benchmarks/gpu/run.sh --out $OUT --stages NAME,...` "
              "reuses what the first run installed and exported. The report comes back as report.json, report.md "
              "and logs.tar.gz.", "", "Contents:", ""]
    lines += [f"- {name}/{path.name} ({path.stat().st_size / 1e6:.1f} MB)" for name, paths in wheels.items() for path in paths]
    lines += [f"- artifacts/{key} ({directory})" for key, directory in artifacts.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / ".gpu-bundle", help="output folder (default: %(default)s)")
    parser.add_argument("--wheels", type=Path, help="bundle these wheels instead of downloading the serving path's")
    parser.add_argument("--python-version", default="3.12", help="the GPU host's Python (default: %(default)s)")
    parser.add_argument("--limit-mib", type=float, default=64, help="what may travel with one command (default: %(default)s)")
    parser.add_argument("--margin-mib", type=float, default=4, help="left free for the checkout to grow (default: %(default)s)")
    parser.add_argument("--pieces", type=int, help="cut into this many pieces (default: the fewest that fit)")
    parser.add_argument("--artifact", action="append", default=[], metavar="KEY=DIR",
                        help="carry this artifact for KEY (e.g. resnet50-fp16) instead of exporting it on the host")
    args = parser.parse_args(argv)
    artifacts = {key: Path(directory) for key, _, directory in (a.partition("=") for a in args.artifact)}
    for key, directory in artifacts.items():
        split_key(key)
        if not (directory / "manifest.json").is_file():
            raise SystemExit(f"expected an artifact directory for {key}, got {directory} without manifest.json")

    downloads = args.bundle / "downloads"
    if args.wheels:
        wheels = {"wheels": sorted(args.wheels.glob("*.whl")), "build": []}
    else:
        runtime, build = wanted(tomllib.loads((REPO / "pyproject.toml").read_text()))
        present = {_normal(line) for line in (HERE / "host-packages.txt").read_text().split() if not line.startswith("#")}
        resolved = download(runtime, downloads / "wheels", args.python_version)
        wheels = {"wheels": [w for w in resolved if _wheel_name(w) not in present],
                  "build": download(build, downloads / "build", args.python_version)}
    index: dict[str, Any] = {name: [path.name for path in paths] for name, paths in wheels.items()}
    index["artifacts"] = {key: bundle.sha256(directory / "manifest.json") for key, directory in artifacts.items()}
    record = args.bundle / "bundle.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    packed = args.bundle / previous.get("file", "-")
    if previous.get("wheels") != index or not packed.is_file():
        total = sum(path.stat().st_size for paths in wheels.values() for path in paths)
        print(f"packing {sum(map(len, wheels.values()))} wheels ({total / 1e6:.1f} MB); xz takes minutes for large ones")
        for stale in args.bundle.glob("graft-gpu-*.tar.xz"):
            stale.unlink()
        packed = bundle.pack(wheels, artifacts, args.bundle, args.bundle / "scratch")
        record.write_text(json.dumps({"wheels": index, "file": packed.name}, indent=2) + "\n")

    checkout = checkout_bytes()
    room = (args.limit_mib - args.margin_mib) * MIB - checkout
    if room <= 0:
        raise SystemExit(f"expected the checkout to leave room under {args.limit_mib} MiB, got {checkout / MIB:.1f} MiB")
    count = args.pieces or -(-packed.stat().st_size // int(room))
    shutil.rmtree(args.bundle / "pieces", ignore_errors=True)
    pieces = bundle.split(packed, count, args.bundle / "pieces")
    text = plan_text(pieces, packed, checkout, wheels, artifacts)
    (args.bundle / "PLAN.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
