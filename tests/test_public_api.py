"""The public API is the documented list, nothing more: a name added or lost fails here, and
every name a type checker sees is the object importing it gives."""

import ast
import importlib
from pathlib import Path

import importer

# Written out, not computed: the API grows only by changing this list on purpose.
DOCUMENTED = {
    "import_paths", "import_records", "validate", "inspect", "find", "schema", "read_inputs",
    "read_records", "Inputs", "Summary",
    "export", "migrate", "verify", "Report", "Selection", "ClientConfig",
    "RunRecord", "ArtifactFile", "ExperimentRecord", "LoggedModel", "LoggedModelRecord",
    "RegisteredModel", "ModelVersion",
    "ImporterError", "InputError", "ValidationError", "Problem", "ServerError", "ConflictError",
    "ConnectionFailed", "RetryableError",
}


def _type_checking_imports() -> dict[str, str]:
    """name -> module, from the `if TYPE_CHECKING:` block of importer/__init__.py."""
    tree = ast.parse(Path(importer.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    return {a.name: node.module for node in block.body for a in node.names}


def test_all_is_the_documented_list():
    assert len(importer.__all__) == len(set(importer.__all__))
    assert set(importer.__all__) == DOCUMENTED


def test_type_checkers_see_every_public_name_where_it_lives():
    seen = _type_checking_imports()
    assert set(seen) == DOCUMENTED
    for name, module in seen.items():
        home = importlib.import_module(f"importer.{module}")
        assert getattr(importer, name) is getattr(home, name), name


def test_a_name_not_in_the_api_is_an_attribute_error():
    try:
        importer.MlflowSink  # noqa: B018
    except AttributeError as e:
        assert "MlflowSink" in str(e)
    else:
        raise AssertionError("importer.MlflowSink should not be public")


def test_verify_stays_the_function_once_its_module_is_loaded():
    importlib.import_module("importer.verification")
    assert callable(importer.verify) and importer.verify.__module__ == "importer.verification"
