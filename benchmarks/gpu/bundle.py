"""The wheels a GPU host lacks, as one compressed bundle carried there in pieces.

`prepare.py` packs and splits the bundle where a package index is reachable; on the GPU host
`run.py --receive` and the install stage gather the pieces and unpack them. Each piece's name says
which bundle it belongs to and where it goes (`graft-gpu-<sha256 prefix>.tar.xz.<k>of<n>`), so
pieces can arrive in any order, over as many commands as the size limit per command needs.
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

PIECE = re.compile(r"^graft-gpu-(?P<id>[0-9a-f]{16})\.tar\.xz\.(?P<k>\d+)of(?P<n>\d+)$")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _stored_copy(wheel: Path, target: Path) -> None:
    # Wheel members are deflated one by one, which leaves xz almost nothing to find; stored, the
    # same wheel (names, RECORD hashes and all) compresses by a further fifth or so.
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for info in source.infolist():
            data = source.read(info)
            info.compress_type = zipfile.ZIP_STORED
            copy.writestr(info, data)


def pack(wheels: dict[str, list[Path]], artifacts: dict[str, Path], folder: Path, scratch: Path) -> Path:
    """Write `folder/graft-gpu-<id>.tar.xz` holding each list of wheels under its name (`wheels`:
    the runtime's, `build`: graft's build backend) and each artifact directory as `artifacts/<key>`."""
    shutil.rmtree(scratch, ignore_errors=True)
    for name, paths in wheels.items():
        (scratch / name).mkdir(parents=True)
        for path in paths:
            _stored_copy(path, scratch / name / path.name)
    folder.mkdir(parents=True, exist_ok=True)
    packed = folder / "graft-gpu.tar.xz.partial"
    with tarfile.open(packed, "w:xz", preset=6) as tar:
        for name in wheels:
            tar.add(scratch / name, arcname=name)
        for key, directory in artifacts.items():
            tar.add(directory, arcname=f"artifacts/{key}")
    shutil.rmtree(scratch)
    return packed.rename(folder / f"graft-gpu-{sha256(packed)[:16]}.tar.xz")


def split(bundle: Path, count: int, folder: Path) -> list[Path]:
    """Cut `bundle` into `count` pieces of equal size (the last a little smaller) in `folder`."""
    size = bundle.stat().st_size
    step = -(-size // count)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = []
    with open(bundle, "rb") as stream:
        for k in range(1, count + 1):
            piece = folder / f"{bundle.name}.{k}of{count}"
            piece.write_bytes(stream.read(step))
            pieces.append(piece)
    return pieces


def gather(sources: list[Path], target: Path) -> dict[str, dict[str, object]]:
    """Move every piece found in `sources` into `target`; return what `target` holds, per bundle:
    {id: {"count": n, "have": [k, ...], "missing": [k, ...], "mtime": newest piece's}} (a piece
    keeps the time it was made, so the newest bundle is the last prepared)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        if source.is_dir() and source.resolve() != target.resolve():
            for path in source.iterdir():
                if PIECE.match(path.name):
                    shutil.move(str(path), target / path.name)
    bundles: dict[str, dict[str, Any]] = {}
    for path in sorted(target.iterdir()):
        if match := PIECE.match(path.name):
            entry = bundles.setdefault(match["id"], {"count": int(match["n"]), "have": [], "mtime": 0.0})
            entry["have"].append(int(match["k"]))
            entry["mtime"] = max(entry["mtime"], path.stat().st_mtime)
    for entry in bundles.values():
        entry["have"].sort()
        entry["missing"] = [k for k in range(1, entry["count"] + 1) if k not in entry["have"]]
    return bundles


def unpack(pieces: Path, bundle_id: str, count: int, target: Path) -> None:
    """Join the pieces of `bundle_id` from `pieces`, check the hash its name carries, and extract it
    into `target` (replaced)."""
    joined = pieces / f"graft-gpu-{bundle_id}.tar.xz"
    with open(joined, "wb") as out:
        for k in range(1, count + 1):
            with open(pieces / f"{joined.name}.{k}of{count}", "rb") as piece:
                shutil.copyfileobj(piece, out)
    actual = sha256(joined)[:16]
    if actual != bundle_id:
        joined.unlink()
        raise ValueError(f"expected the joined pieces to hash to {bundle_id}, got {actual}: a piece is damaged")
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(joined, "r:xz") as tar:
        tar.extractall(target, filter="data")
    joined.unlink()
