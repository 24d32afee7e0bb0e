"""Registered models written to a server, each version pointing at the migrated run (read from
a server by sources/server.py, from files by the store sources); and versions registered from an
imported run's own artifacts (`register_versions`: manifest `models`, `import --register-model`,
see docs/models.md).

A version is matched on the destination by its tag `importer.source_version`, so a rerun creates no
second copy; a second copy all the same (a killed importer's create that landed after the rerun
looked) is deleted, the lowest numbered kept (`_drop_late_copies`). The server numbers versions
itself, one more than the last it made, and never reuses the number of a deleted one. So where
versions were deleted at the source (1, 2, 4), the numbers between are used up on the destination
by placeholder versions (the real version's source and run, tag `importer.placeholder`), each
deleted at once: version 4 stays version 4 and `models:/name/4` still means the same model. A
version that cannot keep its number (the destination's model already had others, or shards wrote
versions out of order) gets the next one, and a note says so. Aliases are set through the mapping.
Stages (deprecated in MLflow) are carried over as the version's stage when set. A version of an
MLflow 3 logged model (source `models:/m-...`) is made of that model's copy, so logged models are
written first.
"""

from __future__ import annotations

import asyncio
from typing import Optional
from urllib.parse import quote

from ..errors import ImporterError, ServerError
from ..mlflow_api import ALREADY_EXISTS, NOT_FOUND, MlflowApi, aliases, pairs
from ..model import (MODEL_PATH_TAG, MODEL_RUN_KEY_TAG, PLACEHOLDER_TAG, SOURCE_VERSION_TAG,
                     ModelToRegister, RegisteredModel, RunRecord, first_version, store_run_id)
from .mlflow import Outcome


async def _get_model(api: MlflowApi, name: str) -> Optional[dict]:
    try:
        return (await api.call("registered-models/get", {"name": name}, get=True))["registered_model"]
    except ServerError as e:
        if e.error_code in NOT_FOUND:
            return None
        raise


async def _get_or_create_model(api: MlflowApi, name: str, tags: Optional[dict[str, str]] = None,
                               description: Optional[str] = None) -> dict:
    """The registered model `name`, created (with `tags` and `description`) when missing."""
    current = await _get_model(api, name)
    if current is not None:
        return current
    body = {"name": name, "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
    if description:
        body["description"] = description
    try:
        return await api.create_once("registered-models/create", body, "registered_model",
                                     lambda: _get_model(api, name))
    except ServerError as e:  # made meanwhile by another importer (a shard)
        if e.error_code not in ALREADY_EXISTS:
            raise
        return await _get_model(api, name)


async def _set_alias(api: MlflowApi, name: str, alias: str, version: str) -> None:
    """Point `alias` of model `name` at `version`. The server inserts a new alias without a lock:
    two importers setting it at once get one UNIQUE constraint failure (HTTP 400), though the
    alias is then set; so a refusal is checked, and the call made once more if still needed."""
    body = {"name": name, "alias": alias, "version": version}
    try:
        await api.call("registered-models/alias", body)
    except ServerError:
        if aliases(await _get_model(api, name) or {}).get(alias) != version:
            await api.call("registered-models/alias", body)


async def _drop_late_copies(api: MlflowApi, name: str, versions: list[dict]) -> dict[str, dict]:
    """{source version: its copy} of `versions`, the lowest numbered of several copies kept and
    the others deleted. The server finishes a request whose client was killed: that create may
    land after a rerun looked for it, and the rerun made a second copy meanwhile."""
    kept = {}
    for src, copies in _grouped(versions, SOURCE_VERSION_TAG).items():
        kept[src] = first_version(copies)
        for late in copies:
            if late is not kept[src]:
                await _delete_version(api, name, late["version"])
    return kept


def _grouped(versions: list[dict], tag: str) -> dict[str, list[dict]]:
    """{source version: the versions importer made for it}, by their `tag`."""
    found: dict[str, list[dict]] = {}
    for v in versions:
        if (src := pairs(v.get("tags")).get(tag)) is not None:
            found.setdefault(src, []).append(v)
    return found


def _by_tag(versions: list[dict], tag: str = SOURCE_VERSION_TAG) -> dict[str, dict]:
    """{source version: version dict} of the versions importer made, by their `tag`
    (SOURCE_VERSION_TAG: copies, the first of several; PLACEHOLDER_TAG: placeholders not yet
    deleted)."""
    return {src: first_version(copies) for src, copies in _grouped(versions, tag).items()}


async def _made_for(api: MlflowApi, name: str, version: str, tag: str = SOURCE_VERSION_TAG) -> Optional[dict]:
    """The version importer made for source `version`, if any (create_once looks before retrying)."""
    return _by_tag(await api.model_versions(name), tag).get(version)


async def _delete_version(api: MlflowApi, name: str, version: str) -> None:
    try:
        await api.request("DELETE", "/api/2.0/mlflow/model-versions/delete",
                          json={"name": name, "version": version})
    except ServerError as e:  # a lost answer: it was deleted
        if e.error_code not in NOT_FOUND:
            raise


async def write_models(api: MlflowApi, models: list[RegisteredModel], runs: dict[str, dict],
                       logged: Optional[dict[str, str]] = None) -> list[str]:
    """Create or complete each model on the destination. `runs` maps a source run id to the
    destination run (its `info`), `logged` a source logged model id to the destination's.
    Returns notes for the report; raises ServerError on failure."""
    logged = logged or {}
    notes = []
    for model in models:
        current = await _get_or_create_model(api, model.name, model.tags, model.description)
        if (current.get("description") or None) != model.description:
            await api.request("PATCH", "/api/2.0/mlflow/registered-models/update",
                              json={"name": model.name, "description": model.description or ""})
        for k, v in model.tags.items():
            if pairs(current.get("tags")).get(k) != v:
                await api.call("registered-models/set-tag", {"name": model.name, "key": k, "value": v})
        live = await api.model_versions(model.name)
        existing = {src: v["version"] for src, v in (await _drop_late_copies(api, model.name, live)).items()}
        for hole in _by_tag(live, PLACEHOLDER_TAG).values():
            await _delete_version(api, model.name, hole["version"])  # left by an interrupted move
        highest = max([int(v["version"]) for v in live], default=0)
        mapped: dict[str, str] = {}
        made = False
        for v in sorted(model.versions, key=lambda v: int(v.version)):
            if v.version in existing:
                mapped[v.version] = existing[v.version]
                continue
            run = runs.get(v.run_id) if v.run_id else None
            if v.run_id and run is None:  # another shard, or an experiment not selected
                notes.append(f"model {model.name!r} version {v.version}: left out, its run "
                             f"{v.run_id} is not part of this move")
                continue
            if v.model_id and v.model_id not in logged:
                notes.append(f"model {model.name!r} version {v.version}: left out, its logged model "
                             f"{v.model_id} is not part of this move")
                continue
            source = (f"{run['artifact_uri']}/{v.artifact_path}" if run and v.artifact_path is not None
                      else v.source)
            body = {"name": model.name, "source": source}
            if run:
                body["run_id"] = run["run_id"]
            if v.model_id:  # the server resolves `models:/<id>` to the logged model's artifacts
                body["source"] = f"models:/{logged[v.model_id]}"
                body["model_id"] = logged[v.model_id]
            while highest + 1 < int(v.version):  # numbers of versions deleted at the source
                hole = await api.create_once(
                    "model-versions/create", {**body, "tags": [{"key": PLACEHOLDER_TAG, "value": v.version}]},
                    "model_version",
                    lambda v=v: _made_for(api, model.name, v.version, PLACEHOLDER_TAG))
                await _delete_version(api, model.name, hole["version"])
                highest = int(hole["version"])
            body["tags"] = ([{"key": k, "value": val} for k, val in v.tags.items()]
                            + [{"key": SOURCE_VERSION_TAG, "value": v.version}])
            if v.description:
                body["description"] = v.description
            created = await api.create_once(
                "model-versions/create", body, "model_version",
                lambda v=v: _made_for(api, model.name, v.version))
            mapped[v.version] = created["version"]
            made = True
            highest = max(highest, int(created["version"]))
        if made:  # a killed importer's create of the same version may have landed meanwhile
            kept = await _drop_late_copies(api, model.name, await api.model_versions(model.name))
            for v in model.versions:
                copy = kept.get(v.version)
                if copy is None or v.version in existing:
                    continue
                mapped[v.version] = copy["version"]
                if copy["version"] != v.version:
                    notes.append(f"model {model.name!r} version {v.version} is version {copy['version']} "
                                 "on the destination (it held other versions, or shards wrote them out of order)")
                if v.stage and copy.get("current_stage") != v.stage:
                    await api.call("model-versions/transition-stage",
                                   {"name": model.name, "version": copy["version"], "stage": v.stage,
                                    "archive_existing_versions": False})
        for alias, version in model.aliases.items():
            if version in mapped:
                await _set_alias(api, model.name, alias, mapped[version])
    return notes


async def copy_models(api: MlflowApi, models: list[RegisteredModel], outcomes: list,
                      logged: Optional[dict[str, str]] = None) -> list[str]:
    """Write registered models to a server, their versions pointing at the runs an import wrote
    (`outcomes`) and at the logged models it wrote (`logged`: source id -> destination id). A
    failure is added to `outcomes`."""
    if not models:
        return []
    runs = {}
    for o in outcomes:
        if o.run_id and store_run_id(o.import_key) and o.action != "failed":
            run = await api.get_run(o.run_id)
            if run:
                runs[store_run_id(o.import_key)] = run["info"]
    try:
        return await write_models(api, models, runs, logged)
    except ImporterError as e:
        outcomes.append(Outcome("registered models", "", "", action="failed", error=str(e)))
        return []


# -- model versions registered from an imported run's artifacts (manifest `models`,
#    `import --register-model`) ----------------------------------------------------------------

def version_url(server: str, name: str, version: str) -> str:
    """The version's page in the MLflow UI."""
    return f"{server}/#/models/{quote(name, safe='')}/versions/{version}"


async def _registered_from(api: MlflowApi, name: str, key: str, path: str, run_id: str) -> Optional[dict]:
    """The version importer registered from artifact `path` of run `run_id` (import key `key`),
    if any: found by its tags, so a rerun, or a retry after a lost answer, makes no second one."""
    # The run's versions only: a model with thousands of versions is not listed for each one.
    where = "name='{}' and run_id='{}'".format(name.replace("'", "\\'"), run_id)
    versions = [v async for v in api.paged("model-versions/search", {"filter": where, "max_results": 1000},
                                           "model_versions", get=True)]
    mine = [v for v in versions if v.get("run_id") == run_id
            and pairs(v.get("tags")).get(MODEL_RUN_KEY_TAG) == key and pairs(v.get("tags")).get(MODEL_PATH_TAG) == path]
    return first_version(mine) if mine else None


async def _register(api: MlflowApi, entry: ModelToRegister, key: str, run: dict,
                    model: dict) -> tuple[dict, str]:
    """Register one version of `entry.name` (`model`, as registered-models/get gave it before)
    from the run's artifacts (its `info`), or find the one registered before; set its tags,
    description and the model's aliases. Returns the version and "created" or "found"."""
    run_id = run["run_id"]
    action = "found"
    version = await _registered_from(api, entry.name, key, entry.path, run_id)
    if version is None:
        # As mlflow.register_model("runs:/<run>/<path>") sends it: the artifact's URI and the run,
        # which the UI links the version to. Our tags go in the same request, so a lost answer
        # is found by them before the next attempt (create_once).
        tags = {**entry.tags, MODEL_RUN_KEY_TAG: key, MODEL_PATH_TAG: entry.path}
        body = {"name": entry.name, "source": f"{run['artifact_uri']}/{entry.path}", "run_id": run_id,
                "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if entry.description:
            body["description"] = entry.description
        version = await api.create_once("model-versions/create", body, "model_version",
                                        lambda: _registered_from(api, entry.name, key, entry.path, run_id))
        action = "created"
        # Importers registering the same run at once (a daemon and a cron scan) may each have
        # made one: the first made (lowest number) stays, by a rule each computes alike; the
        # others delete their own (its number stays used up).
        first = await _registered_from(api, entry.name, key, entry.path, run_id)
        if first is not None and first["version"] != version["version"]:
            await _delete_version(api, entry.name, version["version"])
            version, action = first, "found"
    else:  # the manifest may have changed since
        if (version.get("description") or None) != entry.description:
            await api.request("PATCH", "/api/2.0/mlflow/model-versions/update",
                              json={"name": entry.name, "version": version["version"],
                                    "description": entry.description or ""})
        have = pairs(version.get("tags"))
        for k, v in entry.tags.items():
            if have.get(k) != v:
                await api.call("model-versions/set-tag",
                               {"name": entry.name, "version": version["version"], "key": k, "value": v})
    pointed = aliases(model)
    for alias in entry.aliases:
        if pointed.get(alias) != version["version"]:
            await _set_alias(api, entry.name, alias, version["version"])
    return version, action


def _to_register(records: list[RunRecord], outcomes: list) -> list[tuple[RunRecord, Outcome, ModelToRegister]]:
    """(record, its outcome, model entry) of every version the runs carry whose run did not fail."""
    written = {(o.experiment, o.import_key): o for o in outcomes}
    return [(rec, out, entry) for rec in records if rec.models
            and (out := written.get((rec.experiment, rec.import_key))) is not None
            and out.action != "failed" and (out.run_id or out.action.startswith("would-"))
            for entry in rec.models]


async def plan_versions(api: MlflowApi, records: list[RunRecord], outcomes: list) -> list[dict]:
    """What register_versions would do, for a dry run: each version found (registered before
    from its run) or to be created. Writes nothing."""
    planned = []
    for rec, out, entry in _to_register(records, outcomes):
        version = None  # a run still to be created has none
        if out.run_id:
            version = await _registered_from(api, entry.name, rec.import_key, entry.path, out.run_id)
        planned.append({"name": entry.name, "version": version["version"] if version else None,
                        "action": "found" if version else "would-create", "run_id": out.run_id,
                        "import_key": rec.import_key, "path": entry.path, "aliases": entry.aliases,
                        "url": version_url(api.url, entry.name, version["version"]) if version else None})
    return planned


async def register_versions(api: MlflowApi, records: list[RunRecord], outcomes: list) -> list[dict]:
    """Register the model versions the runs carry (`RunRecord.models`), each from its run as
    written (`outcomes`). Returns one entry per version, created or found, with its UI address;
    a failure is added to `outcomes` (the run itself stays written)."""
    todo = _to_register(records, outcomes)
    models: dict[str, dict] = {}
    failed: list[Outcome] = []

    def fail(rec: RunRecord, entry: ModelToRegister, e: Exception) -> None:
        failed.append(Outcome(f"{rec.origin}: model {entry.name!r}", rec.experiment, rec.import_key,
                              action="failed", error=str(e)))

    for rec, _, entry in todo:  # each model once, before its versions
        if entry.name not in models:
            try:
                models[entry.name] = await _get_or_create_model(api, entry.name)
            except ImporterError as e:
                fail(rec, entry, e)
    # Versions of different runs in parallel: an alias is claimed by one run only (validated).
    slots = asyncio.Semaphore(api.config.max_in_flight)

    async def one(rec: RunRecord, out, entry: ModelToRegister) -> Optional[dict]:
        if entry.name not in models:
            return None
        async with slots:
            try:
                run = await api.get_run(out.run_id)
                version, action = await _register(api, entry, rec.import_key, run["info"], models[entry.name])
            except ImporterError as e:
                fail(rec, entry, e)
                return None
        return {"name": entry.name, "version": version["version"], "action": action, "run_id": out.run_id,
                "import_key": rec.import_key, "path": entry.path, "aliases": entry.aliases,
                "url": version_url(api.url, entry.name, version["version"])}

    done = await asyncio.gather(*(one(*item) for item in todo))
    outcomes += failed
    return [v for v in done if v is not None]
