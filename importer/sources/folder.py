"""The files of a run folder, and the note naming those its source did not read.

A source that claims a whole run folder (discovery gives it the folder, not a file) must not let
the other files in it vanish without a word: every file under the folder is read or named. Hidden
folders (`.ipynb_checkpoints/`: editors' autosave copies) are left out and named too.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SourceResult

_SHOWN = 5  # file names shown per folder, and folders per group, in the note


class RunFolder:
    """The files of a run folder, walked once (links not followed, hidden folders left out)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.files: list[Path] = []  # every file and link, resolved folder + name
        self.hidden: list[Path] = []  # hidden folders
        for folder, dirs, names in os.walk(run_dir):
            self.hidden += [Path(folder) / d for d in sorted(dirs) if d.startswith(".")]
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            self.files += [Path(folder) / name for name in sorted(names)]

    def report(self, read: set[Path], result: SourceResult) -> None:
        """Hand the files not in `read` (resolved paths) to `result.unread`, to be named once the
        model files among them are known (`name_unread`). A link is never read: it may lead out."""
        self.unread = [f for f in self.files if f.is_symlink() or f.resolve() not in read]
        result.unread.append(self)

    def notes(self, taken: set[Path]) -> list[str]:
        """One note naming the files not read nor `taken` (as a model), grouped by folder (folders
        holding the same file names, such as checkpoints, together), and one naming the hidden
        folders left out."""
        by_folder: dict[Path, list[str]] = {}
        for f in self.unread:
            if f.is_symlink() or f.resolve() not in taken:
                by_folder.setdefault(f.parent, []).append(f.name)
        groups: dict[tuple, list[str]] = {}
        for folder, names in by_folder.items():
            rel = folder.relative_to(self.run_dir).as_posix()
            groups.setdefault(tuple(names), []).append("./" if rel == "." else rel + "/")
        notes = []
        if groups:
            parts = []
            for names, folders in groups.items():
                shown = ", ".join(names[:_SHOWN]) + (f", +{len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
                where = ", ".join(folders[:_SHOWN]) + (f" and {len(folders) - _SHOWN} more folders"
                                                       if len(folders) > _SHOWN else "")
                parts.append(f"{where} ({'each: ' if len(folders) > 1 else ''}{shown})")
            total = sum(len(n) * len(f) for n, f in groups.items())
            notes.append(f"{self.run_dir}: {total} files not read, not imported: " + "; ".join(parts))
        if self.hidden:
            notes.append(f"{self.run_dir}: hidden folders left out (editors' autosaves and the like): "
                         + ", ".join(h.relative_to(self.run_dir).as_posix() + "/" for h in self.hidden))
        return notes


def name_unread(result: SourceResult, models: list[Path]) -> None:
    """The notes on the files of `result`'s run folders not read, but for the saved `models`
    (sources.model_files names those in a note of its own, or uploads them)."""
    taken = {p.resolve() for p in models}
    for folder in result.unread:
        result.notes += folder.notes(taken)
    result.unread.clear()
