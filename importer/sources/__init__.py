"""Every input format, how a path is recognised, and how a folder is walked.

`discover` turns the paths a user named into units, each read by one source: a file (a manifest,
a Keras or generic CSV, a text log, a YOLO results file) or a run folder (a Lightning version
folder, a Hugging Face Trainer output folder, a TensorBoard folder, a W&B run folder). A folder is
walked (links to folders or files are not followed: they may lead out of the folder named, or to a
file read anyway) and every file is offered to the sources in `order()`; the first that recognises
it claims its unit, and what nobody recognises is reported, never skipped silently. Hidden
folders are not walked; they are reported too, unless they lie in a claimed run folder, whose
source names what it does not read. A
manifest is recognised by its first key, so a manifest with a typo further in is still read and
its problems are reported.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from ..errors import InputError
# Most specific first: the generic table and text sources take only what nobody else claims.
_ORDER = ("mlflow_export", "manifest", "bundle", "mlruns", "hf_trainer", "wandb", "tfevents",
          "lightning", "yolo", "keras", "table", "textlog")


@cache
def order() -> list[ModuleType]:
    """The sources, imported on first use: `export` and `migrate` (which read a server) and
    `--help` load none of them, 50 ms less at every start."""
    return [importlib.import_module(f"{__name__}.{name}") for name in _ORDER]


def formats() -> dict[str, ModuleType]:
    """`--format` name -> source."""
    return {m.NAME: m for m in order()}


def _unit(module: ModuleType, file: Path, named: Path) -> Path:
    """What `module` reads for a file it recognised: the file, or the folder its `unit(file)`
    names (a source that reads run folders knows its own layout). Never a folder above the one
    the user named (`mlruns/1/` is that experiment, not the store), unless the source says its
    units may be (UNIT_ABOVE_NAMED: a Hugging Face checkpoint folder is read as its run)."""
    unit = module.unit(file) if hasattr(module, "unit") else file
    if unit.is_relative_to(named) or getattr(module, "UNIT_ABOVE_NAMED", False):
        return unit
    return named


def recognise(file: Path) -> Optional[ModuleType]:
    """The first source that recognises `file`, or None."""
    for module in order():
        if module.detect(file):
            return module
    return None


def _within(path: Path, folders: set[Path]) -> bool:
    """Whether `path` lies in one of `folders` (or is one): a set lookup per folder above it, so
    that discovery stays linear in the number of files, whatever the number of claimed units."""
    return path in folders or any(parent in folders for parent in path.parents)


def discover(paths: list[Path], fmt: Optional[str] = None,
             known: Optional[Callable[[Path], Optional[str]]] = None,
             ) -> tuple[list[tuple[ModuleType, Path]], list[Path]]:
    """([(source, unit)], [paths nobody recognised]). With `fmt`, each path goes to that source
    as it is. A file named directly that nobody recognises is an InputError. `known(file)` may
    name the format a walked file was recognised as before (a scan's ledger, for a file it saw
    unchanged): it is taken without asking the sources, which would open the file again."""
    if fmt is not None:
        if fmt not in formats():
            raise InputError(f"unknown format {fmt!r}; known: {', '.join(sorted(formats()))}")
        return [(formats()[fmt], p) for p in paths], []
    by_name = formats()
    units: dict[Path, ModuleType] = {}
    folders: set[Path] = set()  # the units that are run folders
    unknown: list[Path] = []

    def claim(module: ModuleType, unit: Path) -> None:
        units.setdefault(unit, module)
        if unit.is_dir():
            folders.add(unit)

    for path in paths:
        if path.is_file():
            module = recognise(path) or (formats()["manifest"] if path.suffix.lower() == ".json" else None)
            if module is None:
                raise InputError(f"{path}: not a format importer recognises; name it with --format "
                                 f"({', '.join(sorted(formats()))})")
            claim(module, _unit(module, path, path.parent))
            continue
        for folder, dirs, files in os.walk(path):
            # Hidden folders (.ipynb_checkpoints: editors' autosave copies, .git) are left out and
            # named; inside a claimed run folder its source decides (mlruns' .trash is read).
            unknown += [Path(folder) / d for d in sorted(dirs) if d.startswith(".")]
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(folder)
            for name in sorted(files):
                if _within(here, folders):  # claimed by an earlier file of this folder or above
                    break
                file = here / name
                if file.is_symlink():  # it may lead out of the folder named, or to a file read anyway
                    unknown.append(file)
                    continue
                earlier = known(file) if known else None
                module = by_name[earlier] if earlier in by_name else recognise(file)
                if module is None:
                    unknown.append(file)
                else:
                    claim(module, _unit(module, file, path))
    # A file seen before its run folder was claimed (a config.json beside a trainer_state.json),
    # or a link to a file that is read anyway (W&B's wandb/debug.log), is not unknown.
    # A source that reads its whole run folder (OWNS_FOLDER: a Trainer output folder reads its
    # TensorBoard events) takes the units found inside it before it was claimed.
    owners = {u for u in folders if getattr(units[u], "OWNS_FOLDER", False)}
    units = {u: m for u, m in units.items() if not any(parent in owners for parent in u.parents)}
    resolved = {u.resolve() for u in folders}
    unknown = [f for f in unknown if not _within(f, folders)
               and not (f.is_symlink() and _within(f.resolve(), resolved))]
    return [(m, u) for u, m in units.items()], unknown
