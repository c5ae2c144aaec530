"""The served heads: linear classifiers by name, each bound to one served backbone.

Heads come from two places:

- the heads directory (`GRAFT_HEADS_DIR`): one sub-directory per head, named after it. `POST /heads`
  writes there (`put`) and `DELETE /heads/{name}` removes from there (`delete`). Hidden entries are
  skipped (write_head's `.NAME.partial-*` temp dirs, moved-aside old heads), plain files too; every
  other directory must be a head that fits a served backbone, or the service refuses to start.
- `graft serve --head NAME=DIR` (`add`): read-only to the API, since the directory is the operator's.

Swapping a head is a dict assignment after the new head is on disk: a request that already took
the old `Head` object finishes on it, later requests get the new one. Writes and deletes are rare
and serialised by a lock; reads take none.

Every worker process has its own store, and every replica its own workers: each follows the heads
directory (`sync`, a scan every `GRAFT_HEADS_POLL_MS`), so a head fitted, replaced or deleted through
any of them is served (or gone) everywhere within a scan. Polling, not inotify: a heads directory
shared between replicas is a network volume (NFS, CephFS, EFS) where inotify sees no other host's writes.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from graft.artifact.heads import HEAD_FILE, NAME_PATTERN, Head, HeadError, HeadExists, read_head, write_head
from graft.artifact.manifest import Manifest
from graft.service.errors import BadRequest, Conflict, NotConfigured, NotFound

log = logging.getLogger(__name__)


class ServedHead(NamedTuple):
    head: Head
    backbone: str
    """The served model name whose embedding the head applies to."""


class HeadStore:
    """Heads by name, each bound to a served backbone; optionally persisted under `directory`.

    Args:
        directory: the heads directory (`GRAFT_HEADS_DIR`); None means heads can't be added or
            removed through the API.
        max_heads: most heads the store holds after a `put` of a new name.
    """

    def __init__(self, directory: Path | None, *, max_heads: int) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_heads = max_heads
        self._served: dict[str, ServedHead] = {}
        self._operator_dirs: dict[str, Path] = {}  # heads from --head NAME=DIR: not the API's to change
        self._backbones: dict[str, Manifest] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}  # directory heads: their head.json as last read
        self._gone: set[str] = set()  # directory heads missing from the last scan
        self._lock = threading.Lock()

    # ---- start-up -----------------------------------------------------------------------------------
    def load(self, backbones: dict[str, Manifest]) -> None:
        """Serve every head under `directory`, each on the served backbone it was fitted on.

        Args:
            backbones: the served models by name; any of them can carry heads.

        Raises:
            HeadError: a directory that is not a valid head, a head whose name is taken, or one
                that fits none of the served backbones (the message names both sides).
        """
        self._backbones.update(backbones)
        if self.directory is None or not self.directory.exists():
            return
        if not self.directory.is_dir():
            raise HeadError(f"expected GRAFT_HEADS_DIR to be a directory, got {self.directory} which is a file")
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            self._bind(entry.name, entry)
            self._stamps[entry.name] = _stamp(entry)
        log.info("heads: %d loaded from %s", len(self._served), self.directory)

    def add(self, name: str, directory: Path, backbones: dict[str, Manifest]) -> None:
        """Serve the head in `directory` as `name` (`graft serve --head NAME=DIR`); same checks as `load`.

        Raises:
            HeadError: as `load`.
        """
        self._backbones.update(backbones)
        self._bind(name, Path(directory))
        self._operator_dirs[name] = Path(directory)

    def _bind(self, name: str, directory: Path, *, rebind: bool = False) -> None:
        if not re.fullmatch(NAME_PATTERN, name):
            raise HeadError(f"expected a head name matching {NAME_PATTERN}, got {name!r} ({directory})")
        if name in self._backbones:
            raise HeadError(f"head {name} ({directory}): expected a name that is not a served model's, got {name}")
        if name in self._served and not rebind:
            raise HeadError(f"head {name} ({directory}): expected one head of that name, got a second one")
        try:
            head = read_head(directory)
        except HeadError as error:
            raise HeadError(f"head {name} ({directory}): {error}") from None
        if head.name != name:  # a head directory copied to a new name is served under that name
            head = Head(replace(head.spec, name=name), **head.arrays)
        ref = head.spec.backbone
        problems = []
        # The backbone of the head's own name first: the same artifact may be served under two names.
        for backbone_name in sorted(self._backbones, key=lambda served: served != ref.name):
            try:
                head.check_backbone(self._backbones[backbone_name])
            except HeadError as error:
                problems.append(str(error))
                continue
            self._served[name] = ServedHead(head, backbone_name)
            return
        served = ", ".join(f"{served_name} (sha256 {manifest.sha256.get('model', '?')[:12]})"
                           for served_name, manifest in sorted(self._backbones.items()))
        raise HeadError(
            f"head {name} ({directory}) was fitted on backbone {ref.name} version {ref.version} "
            f"(model.onnx sha256 {ref.sha256[:12]}), which is not served; served: {served or 'none'}. "
            f"Serve that artifact too, or remove the head"
        )

    # ---- following the directory ----------------------------------------------------------------------
    def sync(self) -> None:
        """Serve what the heads directory holds now: heads other workers or replicas wrote, replaced
        or deleted since the last scan. One `stat` per head when nothing changed.

        A head missing from two scans in a row stops being served: a replacement renames the old
        directory aside an instant before the new one lands. A head that fails to read (or to fit a
        served backbone) logs one warning per version and leaves the version already served in place.
        """
        if self.directory is None or not self.directory.is_dir():
            return
        found = {}
        for entry in self.directory.iterdir():
            if not entry.name.startswith(".") and entry.name not in self._operator_dirs:
                try:
                    found[entry.name] = _stamp(entry)
                except OSError:  # a file, or a directory without head.json (yet)
                    continue
        with self._lock:
            for name, stamp in found.items():
                if self._stamps.get(name) == stamp:
                    continue
                self._stamps[name] = stamp  # tried once per version, whether it loads or not
                try:
                    self._bind(name, self.directory / name, rebind=True)
                except HeadError as error:
                    log.warning("head %s not served: %s", name, error)
                    continue
                log.info("head %s version %s served (from %s)", name, self._served[name].head.spec.version,
                         self.directory)
            gone = set(self._stamps) - set(found)
            for name in gone & self._gone:
                del self._stamps[name]
                if self._served.pop(name, None) is not None:
                    log.info("head %s no longer served (removed from %s)", name, self.directory)
            self._gone = gone

    # ---- reading --------------------------------------------------------------------------------------
    def get(self, name: str) -> ServedHead | None:
        return self._served.get(name)

    def items(self) -> list[tuple[str, ServedHead]]:
        """(name, served head) pairs, sorted by name."""
        return sorted(self._served.items())

    def __len__(self) -> int:
        return len(self._served)

    def __contains__(self, name: object) -> bool:
        return name in self._served

    def summary(self, name: str) -> dict:
        """What `GET /heads/{name}` and `GET /models` show about a head.

        Raises:
            NotFound: no head of that name.
        """
        served = self._require(name)
        spec, provenance = served.head.spec, served.head.spec.provenance
        return {
            "name": name,
            "backbone": served.backbone,
            "backbone_version": spec.backbone.version,
            "num_labels": len(spec.labels),
            "labels": list(spec.labels),
            "source": provenance.source,
            "run": provenance.run.name if provenance.run else None,
            "num_images": provenance.num_images,
            "images_per_class": dict(provenance.images_per_class),
            "accuracy_estimate": provenance.accuracy,
            "accuracy_method": provenance.accuracy_method,
            "version": spec.version,
            "created_at": provenance.created_at,
        }

    # ---- changing -------------------------------------------------------------------------------------
    def put(self, head: Head, backbone: str, *, overwrite: bool) -> Path:
        """Write `head` under the heads directory, then serve it as `head.name` on `backbone`.

        Args:
            head: the new head (its name is the served name).
            backbone: the served model it was fitted on.
            overwrite: replace an existing head of that name.

        Returns:
            The head's directory.

        Raises:
            NotConfigured: no heads directory configured.
            BadRequest: a bad or reserved name, or the head limit.
            NotFound: `backbone` is not served.
            Conflict: the name exists and `overwrite` is False, or it belongs to a `--head` head.
        """
        name = head.name
        with self._lock:
            target = self.check_put(name, backbone, overwrite=overwrite)
            head.check_backbone(self._backbones[backbone])
            try:
                path = write_head(target, head, overwrite=overwrite)
            except HeadExists:  # on disk but not served: another worker wrote it since this one started
                raise Conflict(expected=f"a new head name, or overwrite=true to replace head {name}",
                               got=f"{name}, which exists on disk") from None
            except HeadError as error:  # something else sits at that path
                raise Conflict(str(error), expected="a free head name", got=name) from None
            self._served[name] = ServedHead(head, backbone)
            self._stamps[name] = _stamp(path)
        log.info("head %s version %s served on %s (%s)", name, head.spec.version, backbone, path)
        return path

    def delete(self, name: str) -> None:
        """Stop serving head `name` and remove its directory.

        Raises:
            NotFound: no head of that name.
            Conflict: the head came from `--head` (the operator's directory is left alone).
        """
        with self._lock:
            self._require(name)
            # Without a heads directory every head came from --head, so this also covers that case.
            if name in self._operator_dirs or self.directory is None:
                raise Conflict(expected=f"a head the API manages; {name} was loaded with --head from "
                               f"{self._operator_dirs.get(name)}", got=f"a request to delete {name}")
            path = self.directory / name
            # Renamed aside first (hidden, so a restart skips it) so the head vanishes from disk at once.
            aside = self.directory / f".{name}.deleted-{uuid.uuid4().hex[:8]}"
            if (path / HEAD_FILE).is_file():
                path.rename(aside)
            del self._served[name]
            self._stamps.pop(name, None)
        shutil.rmtree(aside, ignore_errors=True)
        log.info("head %s deleted", name)

    def _require(self, name: str) -> ServedHead:
        served = self._served.get(name)
        if served is None:
            known = ", ".join(sorted(self._served)) or "none"
            raise NotFound(expected=f"a served head ({known})", got=repr(name))
        return served

    def check_put(self, name: str, backbone: str, *, overwrite: bool) -> Path:
        """Everything `put` would refuse, checked before the costly part (embedding, fitting); returns
        the head's directory.

        `put` checks again under its lock: another request may have taken the name meanwhile.

        Raises:
            NotConfigured, BadRequest, NotFound, Conflict: as `put`.
        """
        if self.directory is None:
            raise NotConfigured("heads can't be saved: this server has no heads directory; set GRAFT_HEADS_DIR "
                                "to a writable directory and restart the server",
                                expected="GRAFT_HEADS_DIR set", got="GRAFT_HEADS_DIR unset")
        if not re.fullmatch(NAME_PATTERN, name):
            raise BadRequest(expected=f"a head name matching {NAME_PATTERN} (lowercase letters, digits, '-', '_', "
                             "'.'; starting with a letter or digit)", got=repr(name))
        if name in self._backbones:
            raise BadRequest(expected="a head name that is not a served model's", got=repr(name))
        if backbone not in self._backbones:
            raise NotFound(expected=f"a served backbone ({', '.join(sorted(self._backbones))})", got=repr(backbone))
        if name in self._operator_dirs:
            raise Conflict(expected=f"a head the API manages; {name} was loaded with --head from "
                           f"{self._operator_dirs[name]}", got=f"a request to change {name}")
        exists = name in self._served
        if exists and not overwrite:
            raise Conflict(expected=f"a new head name, or overwrite=true to replace head {name}",
                           got=f"{name}, which exists")
        if not exists and len(self._served) >= self.max_heads:
            raise BadRequest(expected=f"at most {self.max_heads} heads (GRAFT_MAX_HEADS); delete one first",
                             got=f"a request for head number {len(self._served) + 1}")
        return self.directory / name


def _stamp(directory: Path) -> tuple[int, int, int]:
    """What identifies one written version of a head: its head.json's inode, mtime and size (each
    write lands a new directory, so a new inode)."""
    stat = (directory / HEAD_FILE).stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
