"""The checked-in JSON Schemas are the ones the models generate."""

import json
from pathlib import Path

import importer
from conftest import run_importer

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "run-manifest.schema.json"
BUNDLE_SCHEMA = SCHEMA.with_name("bundle.schema.json")


def test_checked_in_schema_matches_the_models():
    assert json.loads(SCHEMA.read_text()) == importer.schema(), (
        "schemas/run-manifest.schema.json is stale: regenerate it with "
        "`importer schema > schemas/run-manifest.schema.json`")


def test_checked_in_bundle_schema_matches_the_models():
    from importer.model.bundle import bundle_json_schema

    assert json.loads(BUNDLE_SCHEMA.read_text()) == bundle_json_schema(), (
        "schemas/bundle.schema.json is stale: regenerate it with "
        "`importer schema --bundle > schemas/bundle.schema.json`")
    assert run_importer("schema", "--bundle").stdout == BUNDLE_SCHEMA.read_bytes()


def test_schema_command_prints_it():
    res = run_importer("schema")
    assert res.returncode == 0 and json.loads(res.stdout) == importer.schema()


def test_schema_rejects_unknown_fields():
    schema = importer.schema()
    assert schema["$defs"]["Run"]["additionalProperties"] is False
    assert schema["$defs"]["Manifest"]["additionalProperties"] is False

