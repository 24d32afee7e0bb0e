"""Files on disk, for sources and sinks alike: the path-inside-root check and SHA-256.

importer reads and writes only inside the folders the user named; every path that comes from
a document (a bundle's, a store's, a manifest's) or a listing (a server's, a folder's links) goes
through `inside` or `within` first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from .errors import InputError


def within(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, lies in `root` (or is it)."""
    return path.resolve().is_relative_to(root.resolve())


def inside(base: Path, rel: str) -> Path:
    """`base / rel`, refused (InputError) unless it lies below `base`: `../`, an absolute path or
    a link out of the folder would lead elsewhere."""
    path = base / rel
    if Path(rel).is_absolute() or path.resolve() == base.resolve() or not within(path, base):
        raise InputError(f"the path {rel!r} leads outside {base}")
    return path


def sha256_file(path: Path, end: Optional[int] = None) -> str:
    """SHA-256 of the file, or of its first `end` bytes (all of them if it is shorter)."""
    h, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20 if end is None else min(1 << 20, end - done)):
            h.update(block)
            done += len(block)
    return h.hexdigest()
