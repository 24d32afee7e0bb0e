"""The shape of the package, read from its own imports: records below sources and sinks, sources
and sinks apart, no circle, and no import inside a function to dodge one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "importer"
DRIVERS = {"importer", "importer.__main__", "importer.cli", "importer.pipeline", "importer.moves",
           "importer.verification", "importer.service.app", "importer.service.jobs",
           "importer.service.client", "importer.unattended"}
# Imports inside functions that are there for a start-up reason, said beside each.
LATE_IMPORTS_ALLOWED = {"importer", "importer.cli", "importer.pipeline", "importer.sources"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """module -> [(imported importer module, inside a function)]."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for path in PACKAGE.rglob("*.py"):
        mod = _module_name(path)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        found = out.setdefault(mod, [])

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = package.split(".")[:len(package.split(".")) - (child.level - 1)]
                        target = ".".join(base + ([child.module] if child.module else []))
                    else:
                        target = child.module or ""
                    if target.startswith("importer"):
                        for alias in child.names:  # `from . import pipeline` names a module
                            sub = f"{target}.{alias.name}"
                            is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() \
                                or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                            found.append((sub if is_module else target, in_function))
                elif isinstance(child, ast.Import):
                    found.extend((a.name, in_function) for a in child.names if a.name.startswith("importer"))
                is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                is_type_only = isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING"
                if not is_type_only:
                    visit(child, in_function or is_function)
        visit(ast.parse(path.read_text()), False)
    return out


def _layer(mod: str) -> str:
    if mod.startswith("importer.model"):
        return "records"
    if mod.startswith("importer.sources"):
        return "sources"
    if mod.startswith("importer.sinks"):
        return "sinks"
    return "drivers" if mod in DRIVERS else "shared"


def test_records_import_no_source_sink_driver_nor_http():
    imports = _imports()
    for mod, targets in imports.items():
        if _layer(mod) == "records":
            bad = [t for t, _ in targets if _layer(t) != "records" and t != "importer.errors"]
            assert not bad, f"{mod} imports {bad}"


def test_sources_and_sinks_do_not_import_each_other_nor_drivers():
    for mod, targets in _imports().items():
        layer = _layer(mod)
        if layer in ("sources", "sinks"):
            other = "sinks" if layer == "sources" else "sources"
            bad = [t for t, _ in targets if _layer(t) in (other, "drivers")]
            assert not bad, f"{mod} imports {bad}"


def test_shared_modules_import_no_layer_above_records():
    for mod, targets in _imports().items():
        if _layer(mod) == "shared":
            bad = [t for t, _ in targets if _layer(t) in ("sources", "sinks", "drivers")]
            assert not bad, f"{mod} imports {bad}"


def test_no_import_inside_a_function_outside_the_entry_points():
    for mod, targets in _imports().items():
        late = [t for t, inside in targets if inside]
        assert mod in LATE_IMPORTS_ALLOWED or not late, f"{mod} imports {late} inside a function"


def test_no_import_circle():
    graph = {mod: {t for t, _ in targets if t != mod} for mod, targets in _imports().items()}
    # A package imported for a submodule is not a dependency on the package's own code.
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for t in sorted(graph.get(mod, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t])
                                     if t in path else f"{mod} -> {t}")
            if t not in state:
                visit(t, path + [t])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
