"""Registered models: read from one server, written to another with each version pointing at the
migrated run.

A version is matched on the destination by its tag `importer.source_version`, so a rerun creates
no second copy. Version numbers are the destination's own: they are the same as the source's
when versions are created in order and none was deleted at the source. Aliases are set through
that mapping. Stages (deprecated in MLflow) are carried over as the version's stage when set.
"""

from __future__ import annotations

from typing import Optional

from .bundle import BundleModel, BundleModelVersion
from .errors import ImporterError, ServerError
from .mlflow_api import ALREADY_EXISTS, NOT_FOUND, MlflowApi, pairs as _pairs

SOURCE_VERSION_TAG = "importer.source_version"


async def _paged(api: MlflowApi, endpoint: str, body: dict, field: str):
    token = None
    while True:
        page = await api.call(endpoint, {**body, **({"page_token": token} if token else {})}, get=True)
        for item in page.get(field, []):
            yield item
        token = page.get("next_page_token")
        if not token:
            return


def artifact_path(source: str, run_id: Optional[str]) -> Optional[str]:
    """Where in its run's artifacts a version's model lives, from the version's source URI."""
    if not run_id:
        return None
    if source.startswith(f"runs:/{run_id}/"):
        return source[len(f"runs:/{run_id}/"):]
    marker = f"/{run_id}/artifacts/"
    return source.split(marker, 1)[1] if marker in source else None


async def read_models(api: MlflowApi, run_ids: Optional[set[str]] = None) -> list[BundleModel]:
    """Every registered model, or (with `run_ids`) those with a version from one of these runs."""
    models = []
    async for found in _paged(api, "registered-models/search", {"max_results": 1000}, "registered_models"):
        # `get` has the aliases, which search results may lack
        m = (await api.call("registered-models/get", {"name": found["name"]}, get=True))["registered_model"]
        versions = [v async for v in _paged(api, "model-versions/search",
                                            {"filter": f"name='{_quote(m['name'])}'", "max_results": 10000},
                                            "model_versions")]
        if run_ids is not None and not any(v.get("run_id") in run_ids for v in versions):
            continue
        versions.sort(key=lambda v: int(v["version"]))
        models.append(BundleModel(
            name=m["name"], description=m.get("description") or None, tags=_pairs(m.get("tags")),
            aliases={a["alias"]: a["version"] for a in m.get("aliases", [])},
            versions=[BundleModelVersion(
                version=v["version"], run_id=v.get("run_id") or None, source=v.get("source", ""),
                artifact_path=artifact_path(v.get("source", ""), v.get("run_id")),
                description=v.get("description") or None, tags=_pairs(v.get("tags")),
                stage=v.get("current_stage") if v.get("current_stage") not in (None, "None") else None,
                status=v.get("status")) for v in versions]))
    return models


async def _get_model(api: MlflowApi, name: str) -> Optional[dict]:
    try:
        return (await api.call("registered-models/get", {"name": name}, get=True))["registered_model"]
    except ServerError as e:
        if e.error_code in NOT_FOUND:
            return None
        raise


async def _versions_by_source(api: MlflowApi, name: str, version: Optional[str] = None):
    """{source version: destination version} of a model's versions copied by importer; with
    `version`, the copy of that source version (a model version dict) or None."""
    found = {}
    async for v in _paged(api, "model-versions/search",
                          {"filter": f"name='{_quote(name)}'", "max_results": 10000}, "model_versions"):
        src = _pairs(v.get("tags")).get(SOURCE_VERSION_TAG)
        if src is not None and (src not in found or int(v["version"]) < int(found[src]["version"])):
            found[src] = v  # the first copy, should a race ever have made two
    if version is not None:
        return found.get(version)
    return {src: v["version"] for src, v in found.items()}


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


async def write_models(api: MlflowApi, models: list[BundleModel],
                       runs: dict[str, dict]) -> list[str]:
    """Create or complete each model on the destination. `runs` maps a source run id to the
    destination run (its `info`). Returns notes for the report; raises ServerError on failure."""
    notes = []
    for model in models:
        current = await _get_model(api, model.name)
        if current is None:
            body = {"name": model.name, "tags": [{"key": k, "value": v} for k, v in model.tags.items()]}
            if model.description:
                body["description"] = model.description
            try:
                current = await api.create_once("registered-models/create", body, "registered_model",
                                                lambda: _get_model(api, model.name))
            except ServerError as e:  # made meanwhile by another importer (a shard)
                if e.error_code not in ALREADY_EXISTS:
                    raise
                current = await _get_model(api, model.name)
        if (current.get("description") or None) != model.description:
            await api.request("PATCH", "/api/2.0/mlflow/registered-models/update",
                              json={"name": model.name, "description": model.description or ""})
        for k, v in model.tags.items():
            if _pairs(current.get("tags")).get(k) != v:
                await api.call("registered-models/set-tag", {"name": model.name, "key": k, "value": v})
        existing = await _versions_by_source(api, model.name)
        mapped: dict[str, str] = {}
        for v in model.versions:
            if v.version in existing:
                mapped[v.version] = existing[v.version]
                continue
            run = runs.get(v.run_id) if v.run_id else None
            if v.run_id and run is None:  # another shard, or an experiment not selected
                notes.append(f"model {model.name!r} version {v.version}: left out, its run "
                             f"{v.run_id} is not part of this move")
                continue
            source = (f"{run['artifact_uri']}/{v.artifact_path}" if run and v.artifact_path is not None
                      else v.source)
            body = {"name": model.name, "source": source,
                    "tags": [{"key": k, "value": val} for k, val in v.tags.items()]
                    + [{"key": SOURCE_VERSION_TAG, "value": v.version}]}
            if run:
                body["run_id"] = run["run_id"]
            if v.description:
                body["description"] = v.description
            created = await api.create_once(
                "model-versions/create", body, "model_version",
                lambda v=v: _versions_by_source(api, model.name, v.version))
            mapped[v.version] = created["version"]
            if v.stage:
                await api.call("model-versions/transition-stage",
                               {"name": model.name, "version": created["version"], "stage": v.stage,
                                "archive_existing_versions": False})
        for alias, version in model.aliases.items():
            if version in mapped:
                await api.call("registered-models/alias",
                               {"name": model.name, "alias": alias, "version": mapped[version]})
    return notes


async def copy_models(dest_uri: str, models: list[BundleModel], outcomes: list, config=None,
                      env: Optional[dict] = None) -> list[str]:
    """Write registered models to a server, their versions pointing at the runs an import wrote
    (`outcomes`: sinks.mlflow.Outcome). A failure is added to `outcomes`."""
    from .mlflow_api import DEFAULT_CONFIG
    from .sinks.mlflow import Outcome

    if not models:
        return []
    async with MlflowApi(dest_uri, config or DEFAULT_CONFIG, env) as api:
        runs = {}
        for o in outcomes:
            if o.run_id and o.import_key.startswith("mlflow-run-") and o.action != "failed":
                run = await api.get_run(o.run_id)
                if run:
                    runs[o.import_key.removeprefix("mlflow-run-")] = run["info"]
        try:
            return await write_models(api, models, runs)
        except ImporterError as e:
            outcomes.append(Outcome("registered models", "", "", action="failed", error=str(e)))
            return []
