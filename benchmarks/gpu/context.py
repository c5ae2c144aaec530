"""What a stage of the GPU script gets and leaves: the plan, the folders, its figures and its report part."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from plan import Plan


def one_line(error: BaseException) -> str:
    """An exception as the report's reason: its type and message on one line."""
    return " ".join(f"{type(error).__name__}: {error}".split())


class StageFailed(RuntimeError):
    """A stage that ran but found the machine or the code wanting; the message is the report's reason."""


@dataclass
class Context:
    """What a stage gets: the plan, the shared work folder, its own folder and its report part."""

    plan: Plan
    work: Path
    folder: Path
    provided: dict[str, Path]
    pieces: Path
    result: dict = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)

    def save(self) -> None:
        """Write result.json and section.md as they stand (atomically: a stop mid-write loses nothing)."""
        for name, text in (("result.json", json.dumps(self.result, indent=2, default=str) + "\n"),
                           ("section.md", "\n\n".join(self.parts) + "\n")):
            partial = self.folder / (name + ".partial")
            partial.write_text(text)
            partial.replace(self.folder / name)

    def artifact(self, key: str) -> Path:
        directory = self.provided.get(key) or self.work / "artifacts" / key
        if not (directory / "manifest.json").is_file():
            raise StageFailed(f"expected the artifact {key} at {directory}; the artifacts stage did not make it")
        return directory
